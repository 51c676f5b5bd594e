"""labkit: the helpers that the Local LLM Lab notebooks import.

Each module is one idea; open it to read what a helper does:
clients (talking to a runtime), conversation (context windows), errors, discovery (finding a
model server). The course widgets live in `labkit.course`, the runtime in `labkit.runtime`.
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

__all__ = [
    "NO_RETRY",
    "CallLog",
    "Client",
    "ContextOverflow",
    "Conversation",
    "Health",
    "InvalidInput",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "NotImplementedYet",
    "Reply",
    "RetryPolicy",
    "Runtime",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerBusy",
    "ServerError",
    "Stream",
    "Timeout",
    "budget",
    "estimate_tokens",
    "find_runtime",
    "read_log",
    "split_to_budget",
    "summarise_with",
    "summarize",
    "validate",
]
