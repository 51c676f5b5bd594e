"""labkit: the helpers that the Local LLM Lab notebooks import."""

from labkit.clients import Client, Reply, Stream, Timeout
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

__all__ = [
    "Client",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "NotImplementedYet",
    "Reply",
    "Runtime",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerError",
    "Stream",
    "Timeout",
    "find_runtime",
]
