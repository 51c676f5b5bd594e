"""Grading users and slots: who a kernel runs as, and killing everything it left behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labkit.grader.settings import SCRATCH_BASE, GradingError

__all__ = [
    "MAX_SLOTS",
    "USER_PREFIX",
    "Slots",
    "grading_user",
    "kill_user_processes",
    "tester_user",
]


USER_PREFIX = "labkit-grader-"


MAX_SLOTS = 32  # parallel grading workers per machine, across all grading runs


def grading_user(number: int) -> tuple[int, int, str]:
    """The (uid, gid, name) of grading user ``number``, created if missing."""
    return _system_user(f"{USER_PREFIX}{number}")


def tester_user(number: int) -> tuple[int, int, str]:
    """The (uid, gid, name) that runs the tests of worker slot ``number`` (no kernel's user)."""
    return _system_user(f"{USER_PREFIX}tester-{number}")


def _system_user(name: str) -> tuple[int, int, str]:
    """The (uid, gid) of system user ``name`` with a group of its own, created if missing."""
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid, name
        except KeyError:
            if attempt:
                break
        cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", "/usr/sbin/nologin", "--user-group", name]
        try:
            subprocess.run(cmd, check=False, capture_output=True, timeout=30)
        except OSError as exc:
            raise GradingError(
                f"Cannot create the grading user {name} ({exc}). Create it yourself "
                f"(`useradd --system --user-group {name}`) or grade with --no-sandbox."
            ) from exc
    raise GradingError(f"Could not create the grading user {name}; is `useradd` available?")


class Slots:
    """Machine-wide locks so two grading runs never share a grading user."""

    def __init__(self, count: int) -> None:
        SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
        os.chmod(SCRATCH_BASE, 0o711)  # others may enter (their scratch), not list
        self.held: list[tuple[int, Any]] = []
        for number in range(MAX_SLOTS):
            if len(self.held) == count:
                break
            handle = open(SCRATCH_BASE / f"slot-{number}.lock", "a")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.held.append((number, handle))
        if len(self.held) < count:
            self.release()
            raise GradingError(f"All {MAX_SLOTS} grading slots are busy; try again later.")

    @property
    def numbers(self) -> list[int]:
        """The slot numbers held."""
        return [n for n, _ in self.held]

    def release(self) -> None:
        """Let other grading runs use these slots."""
        for _, handle in self.held:
            handle.close()
        self.held = []


def kill_user_processes(uids: Iterable[int]) -> int:
    """Kill every process whose real or effective user is in ``uids``; how many were found."""
    wanted = {str(u) for u in uids if u != 0}  # never root's processes, whatever the caller says
    found = 0
    for _ in range(50):
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            ids = fields.get("Uid", "").split()[:2]
            # A zombie waits for its parent, unless its main thread alone exited (raw
            # SYS_exit): then its other threads still run and a kill ends them.
            dead = fields.get("State", "").strip().startswith("Z")
            if wanted & set(ids) and not (dead and fields.get("Threads", "").strip() == "1"):
                pids.append(int(entry.name))
        if not pids:
            break
        found += len(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        time.sleep(0.02)
    return found
