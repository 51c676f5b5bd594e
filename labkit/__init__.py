"""labkit: the helpers that the Local LLM Lab notebooks import.

Each module is one idea; open it to read what a helper does. The README's "Read the code"
table says which lesson opens which file: client.py (talking to a runtime) with dialects.py,
reply.py, stream.py, connection.py and transport.py; errors, probe, discovery, structured
output, conversation, retry, degrade, call log, health, bench and plots. The client stack
imports one way, in reading order: errors, reply and the other data → transport and
dialects → probe → discovery → connection → stream → client → health. The course widgets live in
``labkit.course``, the runtime in ``labkit.runtime``; importing labkit loads no widgets,
no web server and no grader.
"""

from labkit.calllog import CallLog, read_log, summarize
from labkit.client import Client
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
    BrokenStream,
    DocumentError,
    EmbeddingMismatch,
    IndexFileError,
    InvalidInput,
    InvalidModelOutput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
    NotImplementedYet,
    RagError,
    ResponseTooLarge,
    RuntimeStartError,
    RuntimeUnavailable,
    ServerBusy,
    ServerError,
)
from labkit.reply import Health, Reply, Timeout
from labkit.retry import NO_RETRY, RetryPolicy
from labkit.stream import Stream
from labkit.structured import validate

__all__ = [
    "NO_RETRY",
    "BrokenStream",
    "CallLog",
    "Client",
    "ContextOverflow",
    "Conversation",
    "DocumentError",
    "EmbeddingMismatch",
    "Health",
    "IndexFileError",
    "InvalidInput",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "NotImplementedYet",
    "RagError",
    "Reply",
    "ResponseTooLarge",
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
