"""labkit: the helpers that the Local LLM Lab notebooks import.

Each module is one idea; open it to read what a helper does:
clients (talking to a runtime), conversation (context windows), widgets (quizzes, the
assistant), errors, discovery and runtime (finding or starting a model server).
"""

from labkit.calllog import CallLog, read_log, summarize
from labkit.clients import Client, Health, Reply, Stream, Timeout
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
    InvalidInput,
    InvalidModelOutput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
    NotImplementedYet,
    RuntimeStartError,
    RuntimeUnavailable,
    ServerBusy,
    ServerError,
)
from labkit.retry import NO_RETRY, RetryPolicy
from labkit.structured import validate
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
    "NO_RETRY",
    "Assistant",
    "CallLog",
    "Client",
    "ContextOverflow",
    "Conversation",
    "Feedback",
    "FreeText",
    "Health",
    "InvalidInput",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "ModelPicker",
    "NotImplementedYet",
    "Quiz",
    "Reply",
    "RetryPolicy",
    "Runtime",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerBusy",
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
    "read_log",
    "split_to_budget",
    "summarise_with",
    "summarize",
    "validate",
]
