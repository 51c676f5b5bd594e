"""labkit: the helpers that the Local LLM Lab notebooks import."""

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
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "ModelNotFound",
    "NotImplementedYet",
    "Runtime",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerError",
    "find_runtime",
]
