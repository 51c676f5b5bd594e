"""All course widgets in one import, for notebooks written before they were split by concept."""

from __future__ import annotations

from labkit.course.coach import MODULES, Assistant, Module, assistant, guide
from labkit.course.display import Feedback
from labkit.course.picker import UNAVAILABLE, ModelPicker, chat_models, connect, model_picker
from labkit.course.quizzes import LETTERS, FreeText, Quiz, free_text, quiz

__all__ = [
    "LETTERS",
    "MODULES",
    "UNAVAILABLE",
    "Assistant",
    "Feedback",
    "FreeText",
    "ModelPicker",
    "Module",
    "Quiz",
    "assistant",
    "chat_models",
    "connect",
    "free_text",
    "guide",
    "model_picker",
    "quiz",
]
