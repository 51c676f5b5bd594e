"""What a grading run shares with its workers: settings, a submission, the grader's error."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import GradingError
from labkit.grader.exercise import Exercise
from labkit.grader.options import GradeOptions

__all__ = ["SCRATCH_BASE", "GradingError", "Settings", "Submission"]


# One place per machine, whatever $TMPDIR says: the slot locks in it keep two grading runs
# from sharing a grading user, and a kernel's sockets live under it, whose paths must stay
# within the 107 bytes a Unix socket's path may have (a deep $TMPDIR overflowed them).
SCRATCH_BASE = Path("/tmp" if os.name == "posix" else tempfile.gettempdir()) / "labkit-grading"


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to grade notebooks of one exercise (picklable), made once a run."""

    exercise: Exercise
    options: GradeOptions
    runtime_url: str  # the runtime as the kernels reach it
    forward_to: tuple[str, int] = ("127.0.0.1", 0)  # where the kernels' runtime port leads
    hide: list[str] = field(default_factory=list)  # paths covered in the kernel's view
    hide_checkouts: list[str] = field(default_factory=list)  # course folders: keep labkit only
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
