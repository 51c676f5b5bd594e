"""The machine's limits as the runtime meets them: open files, repeated errors, the log's size.

* **Open files.** The front, both llama.cpp servers and every connection share one process and
  one open-files limit. ``raise_open_files`` lifts the soft limit to the hard one; the front
  then accepts at most ``connection_cap`` clients, so the descriptors llama.cpp's connections
  need stay free (``server.py`` closes the longest-idle client to make room for a new one).
* **Repeated errors.** ``RateLimited`` says one line per kind of error and second at most, and
  counts the rest: a flood of failed accepts cannot fill the disk with tracebacks.
* **The log.** ``rotate_output`` sends this process's stdout and stderr (llama.cpp's too) to a
  log that rotates at ``LOG_MAX_BYTES`` and keeps ``LOG_BACKUPS`` older files.

Standard library only: ``labkit up`` uses the first part before any runtime exists.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "LLAMA_CONNECTIONS",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "LOW_NOFILE",
    "RESERVE",
    "RateLimited",
    "connection_cap",
    "low_limit_warning",
    "open_descriptors",
    "raise_open_files",
    "rotate_output",
]

LOW_NOFILE = 4096  # a hard limit below this is worth a warning at `labkit up`
# The front opens one connection to llama.cpp per request, at most aiohttp's connector limit at
# once (app.py keeps the default); each costs two descriptors in this one process (both ends).
LLAMA_CONNECTIONS = 100
RESERVE = 2 * LLAMA_CONNECTIONS + 64  # and room for llama.cpp's threads, files and pipes
LOG_MAX_BYTES = int(os.environ.get("LABKIT_LOG_MAX_BYTES", 10 * 1024 * 1024))
LOG_BACKUPS = 3


def raise_open_files() -> tuple[int, int]:
    """Lift this process's soft open-files limit to the hard limit; returns (soft, hard)."""
    try:
        import resource  # Unix only
    except ImportError:
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # "unlimited" cannot be a soft limit; the kernel's own ceiling (nr_open) can.
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    # macOS refuses more than OPEN_MAX (10240) under an "unlimited" hard limit: try that next.
    for value in (target, min(target, 10240)):
        if value > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
                break
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def low_limit_warning(soft: int, hard: int) -> str | None:
    """What to say when the hard open-files limit leaves the runtime few connections."""
    if soft <= 0 or soft >= LOW_NOFILE:
        return None
    return (
        f"The open-files limit here is {soft} (hard limit {hard}), so the runtime serves at most "
        f"about {connection_cap(soft, 64)} connections at once. For a class, raise it: "
        "`ulimit -n 65536` as root before `labkit up`, or LimitNOFILE= in its systemd unit."
    )


def open_descriptors() -> int:
    """How many files this process has open now (0 where that cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


def connection_cap(soft: int, in_use: int) -> int:
    """How many client connections the front may hold with ``soft`` descriptors in all."""
    return max(16, soft - in_use - RESERVE)


class RateLimited:
    """Pass on one line per key per ``interval`` seconds at most; say how many were held back."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write, self.interval, self.clock = write, interval, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, line: str) -> bool:
        """Write ``line`` unless a line with ``key`` went out less than ``interval`` ago."""
        allowed, held = self.allow(key)
        if allowed:
            self.write(line + self.held_note(held))
        return allowed

    def allow(self, key: str) -> tuple[bool, int]:
        """(may a line with ``key`` go out now, how many were held back since the last one)."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._held.pop(key, 0)

    @staticmethod
    def held_note(held: int) -> str:
        """What to add to a line after ``held`` like it were held back."""
        return f" ({held} more like it since the last one)" if held else ""


def rotate_output(
    log: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> Callable[[], None]:
    """Send this process's stdout and stderr (native code's too) to ``log``, rotated by size.

    Returns the function that ends it, once everything is written (call it last).
    """
    read, write = os.pipe()
    writer = _Rotating(log, max_bytes, backups)
    thread = threading.Thread(target=writer.drain, args=(read,), name="log", daemon=True)
    thread.start()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)

    def finish() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the pipe's last writers go: the log gets its end of file
        os.dup2(null, 2)
        os.close(null)
        thread.join(5)

    return finish


class _Rotating:
    """Appends to a file; past ``max_bytes`` it becomes ``.1`` (``.1`` becomes ``.2``, ...)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.file = open(path, "ab")  # noqa: SIM115 (kept open for the process's life)

    def drain(self, read: int) -> None:
        """Copy the pipe into the log until every writer has closed it."""
        # Never stop reading: a full pipe would block every thread that logs, llama.cpp's too.
        while data := os.read(read, 65536):
            try:
                self.file.write(data)
                self.file.flush()
                if self.file.tell() >= self.max_bytes:
                    self._rotate()
            except (OSError, ValueError):  # a full disk loses lines, not the runtime
                self._reopen()
        os.close(read)
        self.file.close()

    def _rotate(self) -> None:
        self.file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.file = open(self.path, "ab")  # noqa: SIM115

    def _reopen(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.file.closed:
                self.file = open(self.path, "ab")  # noqa: SIM115
