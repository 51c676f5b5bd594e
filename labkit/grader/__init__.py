"""Instructor tools: make exercises from masters (`labkit assign`) and grade submissions (`labkit grade`).

What a script may use, without the command line::

    from labkit.grader import GradeOptions, assign, grade, load_key

    assign.assign([Path("masters/01-api-script.ipynb")], Path("."))
    report = grade(
        Path("class-01"),
        load_key(Path("grading/hidden/01-api-script.json")),
        Path("class-01-grades"),
        GradeOptions(workers=4, timeout=120),
        runtime_url="http://127.0.0.1:11434",
    )

``assign`` is the module behind ``labkit assign`` (``assign.assign``, ``assign.drift``…).
Each name loads its part of the grader on first use: the kernels' modules take seconds to
import, and the code that runs inside a learner's kernel (``bridge``) lives here too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labkit.errors import GradingError, MasterFormatError, OverwriteRefused, ValidationFailed

if TYPE_CHECKING:
    from labkit.grader import assign
    from labkit.grader.exercise import Exercise, load_key
    from labkit.grader.options import GradeOptions
    from labkit.grader.parse import parse_master
    from labkit.grader.report import feedback, pass_rates
    from labkit.grader.run import GradeReport, find_key, find_submissions, grade
    from labkit.grader.sandbox import ISOLATION

# Where each name that loads on first use lives.
_LAZY = {
    "Exercise": "labkit.grader.exercise",
    "GradeOptions": "labkit.grader.options",
    "GradeReport": "labkit.grader.run",
    "ISOLATION": "labkit.grader.sandbox",
    "feedback": "labkit.grader.report",
    "find_key": "labkit.grader.run",
    "find_submissions": "labkit.grader.run",
    "grade": "labkit.grader.run",
    "load_key": "labkit.grader.exercise",
    "parse_master": "labkit.grader.parse",
    "pass_rates": "labkit.grader.report",
}


def __getattr__(name: str) -> Any:
    if name == "assign":
        return importlib.import_module("labkit.grader.assign")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit.grader' has no attribute {name!r}")


__all__ = [
    "ISOLATION",
    "Exercise",
    "GradeOptions",
    "GradeReport",
    "GradingError",
    "MasterFormatError",
    "OverwriteRefused",
    "ValidationFailed",
    "assign",
    "feedback",
    "find_key",
    "find_submissions",
    "grade",
    "load_key",
    "parse_master",
    "pass_rates",
]
