"""One exception tree for everything labkit raises.

Catch ``LabkitError`` to handle any of them; catch a subclass to handle one case.
Every message says what went wrong *and* what to do next::

    LabkitError
    ├── CourseUpdateError         a course update cannot be made (``labkit update``)
    ├── FaultSpecError            (also a ValueError) a fault rule that cannot be read (``labkit.faults``)
    ├── GradingError              grading could not start (``labkit grade``)
    ├── InvalidInput              (also a ValueError) an argument cannot be used as given
    │   └── ContextOverflow       the prompt cannot fit the model's context window
    ├── InvalidModelOutput        the model answered, but not in the shape asked for
    ├── LabkitTimeout             no answer in time (connect, read or the call's deadline)
    ├── MasterFormatError         a master notebook breaks the marker format (``labkit assign``)
    ├── NotImplementedYet         an exercise that is still to be written
    ├── OverwriteRefused          a generated file was edited by hand (``labkit assign``)
    ├── RagError                  documents and indexes (``labkit.rag``)
    │   ├── DocumentError         a document cannot be read or used
    │   ├── EmbeddingMismatch     an index built with another embedding model or size
    │   └── IndexFileError        a saved index is missing, damaged or cannot be written
    ├── RuntimeStartError         the embedded runtime could not be started
    ├── RuntimeUnavailable        no model server answers at the address
    ├── ServerError               the runtime answered with an error (``.status``, ``.detail``)
    │   ├── BrokenStream          a stream stopped part-way or sent damaged lines
    │   ├── ModelNotFound         the runtime does not have that model
    │   ├── ResponseTooLarge      the answer is bigger than the client accepts
    │   └── ServerBusy            HTTP 429/503; ``.retry_after`` is the runtime's own hint
    └── ValidationFailed          a master's solution loses points to its tests (``labkit assign``)

The errors of the fault proxy and the grader can also be imported from the modules that raise
them (``labkit.faults``, ``labkit.grader``).
"""

from __future__ import annotations

__all__ = [
    "BrokenStream",
    "ContextOverflow",
    "CourseUpdateError",
    "DocumentError",
    "EmbeddingMismatch",
    "FaultSpecError",
    "GradingError",
    "IndexFileError",
    "InvalidInput",
    "InvalidModelOutput",
    "LabkitError",
    "LabkitTimeout",
    "MasterFormatError",
    "ModelNotFound",
    "NotImplementedYet",
    "OverwriteRefused",
    "RagError",
    "ResponseTooLarge",
    "RuntimeStartError",
    "RuntimeUnavailable",
    "ServerBusy",
    "ServerError",
    "ValidationFailed",
]


class LabkitError(Exception):
    """Base class of every error labkit raises."""


class RuntimeUnavailable(LabkitError):
    """No model server answered at the given address."""


class RuntimeStartError(LabkitError):
    """The embedded runtime could not be started."""


class InvalidInput(LabkitError, ValueError):
    """An argument cannot be used as given (empty text, a malformed schema, ...)."""


class ContextOverflow(InvalidInput):
    """Even the smallest useful prompt does not fit the context window."""


class LabkitTimeout(LabkitError):
    """The runtime did not answer within the timeout, or the call ran past its deadline."""


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


class BrokenStream(ServerError):
    """A stream stopped part-way (connection dropped, cut short) or sent a damaged line."""


class ResponseTooLarge(ServerError):
    """The runtime's answer is larger than the client's ``max_response_bytes``."""


class InvalidModelOutput(LabkitError):
    """The model replied, but not in the expected shape (e.g. invalid JSON)."""

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class NotImplementedYet(LabkitError):
    """A learner exercise that has not been written yet."""


# Documents and indexes (labkit.rag)


class RagError(LabkitError):
    """Base class of the errors raised by the RAG helpers (``labkit.rag``)."""


class DocumentError(RagError):
    """A document cannot be read or used (missing, empty, binary, not UTF-8, too large)."""


class IndexFileError(RagError):
    """A saved index is missing, incomplete, corrupt or cannot be written where asked."""


class EmbeddingMismatch(RagError):
    """An index is used with another embedding model or vector size than it was built with."""


# Fault rules (labkit.faults)


class FaultSpecError(LabkitError, ValueError):
    """A fault, rule or schedule that cannot be understood (the message says why)."""


# Assigning and grading exercises (labkit assign, labkit grade)


class MasterFormatError(LabkitError):
    """A master notebook does not follow the marker format."""


class OverwriteRefused(LabkitError):
    """A generated file was edited by hand since it was generated."""


class ValidationFailed(LabkitError):
    """A master's solution does not get full marks from its own tests."""


class GradingError(LabkitError):
    """Grading could not start (bad arguments, no sandbox, nothing to grade)."""


class CourseUpdateError(LabkitError):
    """A new course version cannot be brought into a learner's folder (``labkit update``)."""
