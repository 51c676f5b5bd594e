"""The runtime's guards against the machine's limits, without a runtime: caps, rates, rotation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from labkit.runtime import launcher, limits
from labkit.runtime.server import ConnectionCap


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_error_logs_one_line_a_second() -> None:
    lines: list[str] = []
    clock = FakeClock()
    say = limits.RateLimited(lines.append, interval=1.0, clock=clock)
    for step in range(3000):  # 3,000 failed accepts in 3 s
        clock.now = step / 1000
        say("accept|EMFILE", "socket.accept() out of system resource")
        say("other", "another error")
    assert len([line for line in lines if line.startswith("socket.accept()")]) == 3
    assert len(lines) == 6  # each kind of error has its own second
    assert lines[2].endswith("(999 more like it since the last one)"), lines


class Transport:
    """Enough of an asyncio transport for the cap: it can be closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    said: list[str] = []
    cap = ConnectionCap(3, limits.RateLimited(said.append))
    a, b, c, d, e = (Transport() for _ in range(5))
    for t in (a, b, c):
        assert cap.opened(t)  # type: ignore[arg-type]
    cap.started(a)  # type: ignore[arg-type]  # a request runs on a: it is not idle
    assert cap.opened(d)  # type: ignore[arg-type]
    assert (a.closed, b.closed, c.closed) == (False, True, False)
    cap.closed(b)  # type: ignore[arg-type]  # the loop reports the close
    cap.ended(a)  # type: ignore[arg-type]  # a is idle again, and now the newest idle one
    assert cap.opened(e)  # type: ignore[arg-type]
    assert c.closed and not a.closed
    for t in (a, d, e):
        cap.closed(t)  # type: ignore[arg-type]
    busy = [Transport() for _ in range(3)]
    for t in busy:
        cap.opened(t)  # type: ignore[arg-type]
        cap.started(t)  # type: ignore[arg-type]
    assert not cap.opened(Transport())  # type: ignore[arg-type]  # all busy: refused
    assert not any(t.closed for t in busy)
    assert said and "all busy" in said[-1]


def test_the_cap_leaves_room_for_llamas_connections() -> None:
    assert limits.connection_cap(1024, 60) == 1024 - 60 - limits.RESERVE
    assert limits.connection_cap(100, 60) == 16  # never none at all
    assert limits.low_limit_warning(1024, 1024) is not None
    assert limits.low_limit_warning(65536, 65536) is None


ROTATE = """
import os, sys
from pathlib import Path
from labkit.runtime import limits
finish = limits.rotate_output(Path(sys.argv[1]), max_bytes=1000, backups=2)
for n in range(300):  # 300 KB: more than a pipe holds, so the log is read in several parts
    print(f"python line {n:03d} " + "x" * 1000, flush=True)
    os.write(2, b"native line %03d\\n" % n)  # as llama.cpp writes: straight to the descriptor
finish()
"""


def test_the_log_rotates_and_keeps_a_few_old_files(tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    subprocess.run([sys.executable, "-c", ROTATE, str(log)], check=True, timeout=60)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["runtime.log", "runtime.log.1", "runtime.log.2"]
    assert all((tmp_path / name).stat().st_size < 1000 + 65536 for name in names)
    text = "".join((tmp_path / name).read_text() for name in names)
    assert "python line 299" in text and "native line 299" in text  # the last lines arrived


def test_a_live_but_silent_runtime_is_told_apart_from_a_stopped_one(tmp_path: Path) -> None:
    """What `labkit status` and `labkit up` both say about a runtime whose pid lives."""
    with socket.socket() as silent:  # listens, never answers: a hung runtime's port
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        log = str(tmp_path / "runtime.log")
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            record = launcher.RuntimeRecord(sleeper.pid, url, "", "", log=log, instance="i")
            hung = launcher.unanswered(record, timeout=0.5)
            os.kill(sleeper.pid, signal.SIGSTOP)
            time.sleep(0.2)
            stopped = launcher.unanswered(record, timeout=0.5)
        finally:
            sleeper.kill()
            sleeper.wait()
    assert hung is not None and "does not answer within 0.5 s" in hung and log in hung
    assert stopped is not None and "is stopped (by SIGSTOP or Ctrl+Z)" in stopped
    assert f"kill -CONT {sleeper.pid}" in stopped
