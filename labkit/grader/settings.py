"""What a grading run shares with its workers: settings, a submission, the grader's error."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import GradingError
from labkit.grader.assign import Exercise

__all__ = ["SCRATCH_BASE", "GradingError", "Settings", "Submission"]


SCRATCH_BASE = Path(tempfile.gettempdir()) / "labkit-grading"


@dataclass
class Settings:
    """Everything a worker needs to grade notebooks of one exercise (picklable)."""

    exercise: Exercise
    runtime_url: str
    timeout: float = 60.0
    sandbox: bool = True
    memory_mb: int = 4096  # for each kernel and everything it starts, together
    disk_mb: int = 512  # each kernel's scratch disk (a tmpfs), temp folders included
    notebook_timeout: float = 600.0  # wall-time seconds per notebook, re-runs included
    max_notebook_mb: float = 20.0  # larger notebook files are not graded
    hide: list[str] = field(default_factory=list)  # paths covered in the kernel's view
    hide_checkouts: list[str] = field(default_factory=list)  # course folders: keep labkit only
    network: str = "runtime"  # "runtime": own loopback, runtime port forwarded; "host"
    forward_to: tuple[str, int] = ("127.0.0.1", 0)  # where the kernels' runtime port leads
    reach: list[list[Any]] = field(default_factory=list)  # covers that make Python reachable
    public_tests: bytes = b""
    extra_files: list[tuple[str, str]] = field(default_factory=list)  # (source, scratch path)
    run_dir: str = ""


@dataclass
class Submission:
    """One entry of the submissions folder: a learner's notebook, or why it is not graded."""

    learner: str
    path: Path
    sha256: str = ""
    skipped: str = ""  # a status such as "two-notebooks" when the entry cannot be graded
    reason: str = ""  # that status in words, for the gradebook and the command's output
