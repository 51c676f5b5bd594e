"""The embedded runtime's launcher: up, idempotent up, down, status, busy ports, bad models.

Each test runs its own runtime in a private LABKIT_HOME, beside the session's runtime.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from labkit import discovery, runtime
from labkit.errors import RuntimeStartError, RuntimeUnavailable
from labkit.runtime import launcher


@pytest.fixture
def listener() -> Iterator[int]:
    """A port that something else is already listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_up_is_idempotent_and_down_leaves_nothing(
    isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = runtime.up(runtime.free_port(), state_dir=isolated_home)
    assert requests.get(record.url + "/", timeout=5).text == "Ollama is running"
    assert requests.get(record.llama_url + "/health", timeout=5).ok
    assert set(record.models) == {runtime.CHAT_MODEL, runtime.EMBED_MODEL}
    assert "ready at " + record.url in capsys.readouterr().out

    again = runtime.up(state_dir=isolated_home)
    assert again.pid == record.pid
    assert "already running" in capsys.readouterr().out

    assert runtime.down(state_dir=isolated_home) is True
    assert not Path(f"/proc/{record.pid}").exists()
    assert not runtime.record_path(isolated_home).exists()
    assert _children_of(record.pid) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(record.url + "/", timeout=2)
    assert runtime.down(state_dir=isolated_home) is False


def test_busy_default_port_picks_a_free_one(
    isolated_home: Path,
    listener: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(launcher, "DEFAULT_PORT", listener)
    record = runtime.up(state_dir=isolated_home)
    assert not record.url.endswith(f":{listener}")
    assert f"Port {listener} is busy; using free port" in capsys.readouterr().out


def test_explicit_busy_port_is_a_clear_error(isolated_home: Path, listener: int) -> None:
    with pytest.raises(RuntimeStartError, match=f"Port {listener} is already in use"):
        runtime.up(listener, state_dir=isolated_home)
    assert runtime.read_record(isolated_home) is None


def test_missing_model_file_is_a_clear_error(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABKIT_EMBED_GGUF", str(isolated_home / "nope.gguf"))
    with pytest.raises(RuntimeStartError, match=r"embedding model is missing.*\./lab setup"):
        runtime.up(state_dir=isolated_home)


def test_server_dying_during_start_names_the_log(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt = isolated_home / "corrupt.gguf"
    corrupt.write_bytes(b"this is not a model file" * 100)
    monkeypatch.setenv("LABKIT_EMBED_GGUF", str(corrupt))
    with pytest.raises(RuntimeStartError) as info:
        runtime.up(runtime.free_port(), state_dir=isolated_home)
    message = str(info.value)
    assert "stopped during start" in message
    assert str(runtime.log_path(isolated_home)) in message
    assert runtime.read_record(isolated_home) is None


def test_cli_reports_errors_with_exit_code_1(isolated_home: Path, listener: int) -> None:
    env = {**os.environ, "LABKIT_HOME": str(isolated_home)}
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "up", "--port", str(listener)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"Port {listener} is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_down_never_kills_a_process_it_did_not_start(isolated_home: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        fake = runtime.RuntimeRecord(
            pid=stranger.pid, url="http://127.0.0.1:9", llama_url="", embed_url=""
        )
        runtime.write_record(fake, isolated_home)
        assert runtime.down(state_dir=isolated_home) is False
        assert stranger.poll() is None, "down() must not touch a process labkit did not start"
        assert not runtime.record_path(isolated_home).exists(), "a stale record is removed"
    finally:
        stranger.kill()
        stranger.wait()


def test_status_and_discovery_see_the_embedded_runtime(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = runtime.up(runtime.free_port(), state_dir=isolated_home, say=False)
    monkeypatch.delenv("LABKIT_BASE_URL", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    found = [rt for rt in discovery.running_runtimes() if rt.url == record.url]
    assert len(found) == 1 and found[0].name.startswith("embedded")
    assert runtime.CHAT_MODEL in found[0].models

    monkeypatch.setenv("LABKIT_BASE_URL", record.url + "/v1")
    chosen = discovery.find_runtime(start=False)
    assert (chosen.url, chosen.dialect, chosen.reason) == (
        record.url,
        "ollama",
        "set by $LABKIT_BASE_URL",
    )
    assert chosen.chat_model == runtime.CHAT_MODEL and chosen.embed_model == runtime.EMBED_MODEL


def test_explicit_setting_to_a_dead_address_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{runtime.free_port()}")
    monkeypatch.delenv("LABKIT_BASE_URL", raising=False)
    with pytest.raises(RuntimeUnavailable, match="OLLAMA_HOST"):
        discovery.find_runtime(start=False)
