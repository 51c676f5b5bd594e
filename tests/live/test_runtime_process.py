"""The runtime process meets the machine's limits and tells the truth about itself.

One runtime for the module, started by `labkit up` under `ulimit -n 1024` (soft and hard, as
bash sets it) and a tiny log size, so its start alone rotates the log. The last test stops it.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from labkit import runtime

LOG_MAX_BYTES = 1024
IDLE = 1100  # idle connections: more than a 1024-descriptor process can hold


@dataclass
class Started:
    home: Path
    record: runtime.RuntimeRecord
    said: str  # what `labkit up` printed


def labkit(
    home: Path, *args: str, preexec: Callable[[], None] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the labkit command for the folder ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args],
        env={**os.environ, "LABKIT_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=preexec,
    )


def _files_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture(scope="module")
def low(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """This module's runtime: 1,024 open files at most, and a log of 1 KB before it rotates."""
    home = tmp_path_factory.mktemp("labkit-low")
    port = str(runtime.free_port())
    done = labkit(
        home,
        "up",
        "--port",
        port,
        preexec=_files_1024,
        LABKIT_LOG_MAX_BYTES=str(LOG_MAX_BYTES),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = runtime.read_record(home)
    assert record is not None
    try:
        yield Started(home, record, done.stdout)
    finally:
        if Path(f"/proc/{record.pid}").exists():
            os.kill(record.pid, signal.SIGCONT)  # a failed test may leave it stopped
        runtime.down(state_dir=home, say=False)


def test_up_says_when_the_hard_limit_is_low(low: Started) -> None:
    assert "open-files limit here is 1024 (hard limit 1024)" in low.said
    limits = Path(f"/proc/{low.record.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and " 1024 " in line for line in limits.splitlines()
    )


def _chat(url: str) -> requests.Response:
    body = {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": False,
        "options": {"num_predict": 3, "temperature": 0, "seed": 1},
    }
    return requests.post(url + "/api/chat", json=body, timeout=120)


def test_chat_answers_past_1100_idle_connections(low: Started) -> None:
    """Idle connections cannot take the descriptors the front needs to reach llama.cpp."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE + 200:
        pytest.skip(f"this test process may open only {hard} files; it needs {IDLE + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE + 200), hard))
    url, began = low.record.url, time.monotonic()
    idle = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", low.record.port or 0), timeout=30))
        chat, embed = _chat(url), None
        embed = requests.post(
            url + "/api/embed", json={"model": runtime.EMBED_MODEL, "input": ["hi"]}, timeout=120
        )
        closed = sum(_closed_by_server(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert chat.status_code == 200, chat.text
    assert chat.json()["message"]["role"] == "assistant" and chat.json()["done"] is True
    assert embed.status_code == 200, embed.text
    assert len(embed.json()["embeddings"][0]) == 384
    assert closed >= IDLE - 1024, "the longest-idle connections make room for new ones"
    # One line a second at most about the cap, however many connections it closed.
    seconds = time.monotonic() - began
    lines = [line for line in _log(low.home) if "connections (the cap)" in line]
    assert 1 <= len(lines) <= seconds + 2, lines
    assert not [line for line in _log(low.home) if "Too many open files" in line]


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _log(home: Path) -> list[str]:
    lines = []
    for path in sorted(home.glob("runtime.log*")):
        lines += path.read_text(errors="replace").splitlines()
    return lines


def test_the_log_rotates_by_size(low: Started) -> None:
    logs = sorted(p.name for p in low.home.glob("runtime.log*"))
    assert logs[:2] == ["runtime.log", "runtime.log.1"], logs
    assert set(logs) <= {"runtime.log", "runtime.log.1", "runtime.log.2", "runtime.log.3"}
    # A file rotates once it reaches the limit: it passes it by one write at most (64 KB).
    for name in logs:
        assert (low.home / name).stat().st_size <= LOG_MAX_BYTES + 65536
    assert any("labkit runtime ready at" in line for line in _log(low.home))


def test_a_stopped_runtime_is_reported_as_such(low: Started) -> None:
    """SIGSTOP: status and up agree that it lives and does not answer; down ends it."""
    pid = low.record.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        status = labkit(low.home, "status")
        up = labkit(low.home, "up")
    finally:
        os.kill(pid, signal.SIGCONT)
    sentence = f"(pid {pid}) is stopped (by SIGSTOP or Ctrl+Z)"
    assert status.returncode == 1 and sentence in status.stdout, status.stdout
    assert up.returncode == 1 and sentence in up.stderr and "Traceback" not in up.stderr
    assert f"kill -CONT {pid}" in up.stderr
    assert "No runtime is running" not in status.stdout
    assert labkit(low.home, "status").returncode == 0  # resumed: it answers again
    os.kill(pid, signal.SIGSTOP)  # down ends a stopped runtime too
    assert runtime.down(state_dir=low.home, say=False) is True
    assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _without_root_powers() -> None:
    """Root writes anywhere: drop the capabilities that let it ignore a folder's mode."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_read_only_folder_is_one_sentence() -> None:
    folder = Path(tempfile.mkdtemp(prefix="labkit-ro-"))
    try:
        folder.chmod(0o555)
        done = labkit(folder, "up", preexec=_without_root_powers)
        assert done.returncode == 1
        assert done.stderr.startswith(f"labkit: Cannot write to the runtime's folder {folder}")
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert list(folder.iterdir()) == []
        status = labkit(folder, "status", preexec=_without_root_powers)
        assert "Traceback" not in status.stderr
    finally:
        folder.chmod(0o755)
        folder.rmdir()


def _no_file_bytes() -> None:
    # A file-size limit of 0 refuses every byte written, as a full disk does (with EFBIG
    # instead of ENOSPC); Python ignores the SIGXFSZ that comes with it.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_full_folder_is_one_sentence_and_leaves_nothing(tmp_path: Path) -> None:
    done = labkit(tmp_path, "up", "--port", str(runtime.free_port()), preexec=_no_file_bytes)
    assert done.returncode == 1
    assert done.stderr.startswith(f"labkit: Cannot write to the runtime's folder {tmp_path}")
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.lock"]
    # The runtime's own write of its record: the same sentence, and no empty runtime.tmp.
    code = (
        "from labkit.runtime import launcher\n"
        "record = launcher.RuntimeRecord(pid=1, url='http://127.0.0.1:9', llama_url='', "
        "embed_url='')\n"
        f"launcher.write_record(record, launcher.Path({str(tmp_path)!r}))\n"
    )
    wrote = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_no_file_bytes,
    )
    assert wrote.returncode == 1 and "RuntimeStartError: Cannot write to the" in wrote.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.lock"]
