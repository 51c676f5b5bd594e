"""labkit: the helpers that the Local LLM Lab notebooks import.

Each module is one idea; open it to read what a helper does:
clients (talking to a runtime), conversation (context windows), widgets (quizzes, the
assistant), errors, discovery and runtime (finding or starting a model server).
"""

from labkit.clients import Client, Reply, Stream, Timeout
from labkit.conversation import (
    ContextOverflow,
    Conversation,
    budget,
    estimate_tokens,
    split_to_budget,
    summarise_with,
)
from labkit.discovery import Runtime, find_runtime
from labkit.errors import (
    InvalidModelOutput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
    NotImplementedYet,
    RuntimeStartError,
    RuntimeUnavailable,
    ServerError,
)
from labkit.widgets import (
    Assistant,
    Feedback,
    FreeText,
    ModelPicker,
    Quiz,
    assistant,
    free_text,
    model_picker,
    quiz,
)

__all__ = [
    "Assistant",
    "Client",
    "ContextOverflow",
    "Conversation",
    "Feedback",
    "FreeText",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "ModelPicker",
    "NotImplementedYet",
    "Quiz",
    "Reply",
    "Runtime",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerError",
    "Stream",
    "Timeout",
    "assistant",
    "budget",
    "estimate_tokens",
    "find_runtime",
    "free_text",
    "model_picker",
    "quiz",
    "split_to_budget",
    "summarise_with",
]
