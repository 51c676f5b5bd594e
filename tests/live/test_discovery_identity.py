"""Discovery never adopts a stranger: two kit runtimes of two folders, each finds its own.

Runtime B stands where another checkout's runtime would (on Ollama's port, 11434, in real
life; here on a free port that discovery is pointed at, as tests/live/test_discovery.py does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from labkit import discovery, runtime
from labkit.errors import RuntimeUnavailable
from labkit.probe import KnownRuntime
from labkit.runtime.identity import HEADER, Identity

# Runs the labkit command with discovery's known ports replaced by the one given first.
CLI = (
    "import sys\n"
    "from labkit import cli, discovery\n"
    "from labkit.probe import KnownRuntime\n"
    "discovery.KNOWN_RUNTIMES = (KnownRuntime('Ollama', int(sys.argv[1]), 'ollama'),)\n"
    "sys.exit(cli.main(sys.argv[2:]))\n"
)


@pytest.fixture(scope="module")
def two(
    embedded: runtime.RuntimeRecord, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, runtime.RuntimeRecord]]:
    """Runtime A, started by `labkit up` for a folder of its own, and B, another folder's.

    B is the session's runtime (this checkout's folder) when it names itself, as every runtime
    started by this version does; an older one still running is replaced by a new B.
    """
    needed = "AB" if not embedded.instance else "A"
    homes = {name: tmp_path_factory.mktemp(f"labkit-{name}") for name in needed}
    starting = {
        name: subprocess.Popen(
            [sys.executable, "-m", "labkit", "up", "--port", str(runtime.free_port())],
            env={**os.environ, "LABKIT_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, home in homes.items()
    }
    records = {"B": embedded}
    try:
        for name, process in starting.items():
            out, _ = process.communicate(timeout=180)
            assert process.returncode == 0, out
            record = runtime.read_record(homes[name])
            assert record is not None and record.instance
            records[name] = record
        yield records
    finally:
        for home in homes.values():
            runtime.down(state_dir=home, say=False)


def _folder(record: runtime.RuntimeRecord) -> Path:
    return Path(record.log).parent


def _cli(home: Path, port: int | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_BASE_URL", "OLLAMA_HOST")}
    return subprocess.run(
        [sys.executable, "-c", CLI, str(port), *args],
        env={**env, "LABKIT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABKIT_BASE_URL", "OLLAMA_HOST", "LABKIT_EMBED_URL"):
        monkeypatch.delenv(name, raising=False)


def test_every_answer_names_the_runtime(two: dict[str, runtime.RuntimeRecord]) -> None:
    a, b = two["A"], two["B"]
    seen = {}
    for name, record in two.items():
        for path in ("/", "/api/version", "/api/tags", "/no-such-path"):
            answer = requests.get(record.url + path, timeout=30)
            seen[name, path] = Identity.parse(answer.headers.get(HEADER))
    assert {seen["A", path] for path in ("/", "/api/version", "/api/tags", "/no-such-path")} == {
        seen["A", "/"]
    }
    ident_a, ident_b = seen["A", "/"], seen["B", "/"]
    assert ident_a is not None and ident_b is not None
    assert (ident_a.instance, ident_b.instance) == (a.instance, b.instance)
    assert ident_a.uid == ident_b.uid == os.getuid() and not ident_a.shared
    assert ident_a.folder != ident_b.folder  # a fingerprint of each folder...
    assert str(runtime.home()) not in (HEADER + ident_a.header())  # ...and not its path


def test_discovery_picks_its_own_and_names_the_other(
    two: dict[str, runtime.RuntimeRecord],
    no_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    a, b = two["A"], two["B"]
    # B stands on the first port discovery knows, where Ollama would be.
    monkeypatch.setattr(
        discovery, "KNOWN_RUNTIMES", (KnownRuntime("Ollama", b.port or 0, "ollama"),)
    )
    monkeypatch.setenv("LABKIT_HOME", str(_folder(a)))
    chosen = discovery.find_runtime(start=False)
    assert chosen.url == a.url and not chosen.foreign
    listed = {rt.url: rt for rt in discovery.running_runtimes()}
    assert set(listed) == {a.url, b.url}
    assert listed[b.url].foreign and listed[b.url].name == "another folder's kit runtime"
    assert str(_folder(b)) in listed[b.url].reason  # named by its folder
    # A folder with no runtime of its own is told about B, and B is not used.
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    with pytest.raises(RuntimeUnavailable, match="Another folder's kit runtime answers at"):
        discovery.find_runtime(start=False)


def test_which_and_status_name_the_other_and_start_nothing(
    two: dict[str, runtime.RuntimeRecord], tmp_path: Path
) -> None:
    a, b = two["A"], two["B"]
    which = _cli(_folder(a), b.port, "which")
    assert which.returncode == 0 and which.stdout.startswith("embedded") and a.url in which.stdout
    status = _cli(_folder(a), b.port, "status")
    assert status.returncode == 0
    assert f"- another folder's kit runtime: {b.url}" in status.stdout
    assert "not used here" in status.stdout and a.url in status.stdout

    # Another folder with nothing running: `which` looks and starts nothing (`up` does).
    alone = _cli(tmp_path, b.port, "which")
    assert alone.returncode == 1 and "Traceback" not in alone.stderr
    assert f"Another folder's kit runtime answers at {b.url}" in alone.stderr
    assert "labkit up" in alone.stderr
    assert runtime.read_record(tmp_path) is None and not (tmp_path / "runtime.log").exists()
    again = _cli(tmp_path, b.port, "which", "--no-start")  # older scripts still run
    assert again.returncode == 1 and runtime.read_record(tmp_path) is None
