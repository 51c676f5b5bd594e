"""Course tools for the notebooks: quizzes, the design assistant and `check()` for exercises.

The widgets are imported on first use, so a grading kernel that only needs `check()` never
loads ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import Any

from labkit.course.checks import CheckResult, CheckSummary, check, check_all, use_tests

# Where each widget lives; imported on first use.
_WIDGETS = {
    "Assistant": "coach",
    "Feedback": "display",
    "FreeText": "quizzes",
    "ModelPicker": "picker",
    "Quiz": "quizzes",
    "assistant": "coach",
    "free_text": "quizzes",
    "guide": "coach",
    "model_picker": "picker",
    "number": "quizzes",
    "quiz": "quizzes",
}


def __getattr__(name: str) -> Any:
    if name in _WIDGETS:
        return getattr(importlib.import_module(f"labkit.course.{_WIDGETS[name]}"), name)
    raise AttributeError(f"module 'labkit.course' has no attribute {name!r}")


__all__ = [
    "Assistant",
    "CheckResult",
    "CheckSummary",
    "Feedback",
    "FreeText",
    "ModelPicker",
    "Quiz",
    "assistant",
    "check",
    "check_all",
    "free_text",
    "guide",
    "model_picker",
    "number",
    "quiz",
    "use_tests",
]
