"""One exception tree for everything labkit raises.

Catch ``LabkitError`` to handle any of them; catch a subclass to handle one case.
Every message says what went wrong *and* what to do next.
"""

from __future__ import annotations


class LabkitError(Exception):
    """Base class of every error labkit raises."""


class RuntimeUnavailable(LabkitError):
    """No model server answered at the given address."""


class RuntimeStartError(LabkitError):
    """The embedded runtime could not be started."""


class InvalidInput(LabkitError, ValueError):
    """An argument cannot be used as given (empty text, a malformed schema, ...)."""


class LabkitTimeout(LabkitError):
    """The runtime did not answer within the timeout."""


class ServerError(LabkitError):
    """The runtime answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ServerBusy(ServerError):
    """The runtime is overloaded (HTTP 429 or 503); ``retry_after`` is its own hint in seconds."""

    def __init__(
        self, message: str, *, status: int, detail: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after = retry_after


class ModelNotFound(ServerError):
    """The runtime does not have the requested model."""


class InvalidModelOutput(LabkitError):
    """The model replied, but not in the expected shape (e.g. invalid JSON)."""

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class NotImplementedYet(LabkitError):
    """A learner exercise that has not been written yet."""


# --- RAG ---------------------------------------------------------------------------------------


class RagError(LabkitError):
    """Base class of the errors raised by the RAG helpers (``labkit.rag``)."""


class DocumentError(RagError):
    """A document cannot be read or used (missing, empty, binary, not UTF-8, too large)."""


class IndexFileError(RagError):
    """A saved index is missing, incomplete, corrupt or cannot be written where asked."""


class EmbeddingMismatch(RagError):
    """An index is used with another embedding model or vector size than it was built with."""
