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


class LabkitTimeout(LabkitError):
    """The runtime did not answer within the timeout."""


class ServerError(LabkitError):
    """The runtime answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ModelNotFound(ServerError):
    """The runtime does not have the requested model."""


class InvalidModelOutput(LabkitError):
    """The model replied, but not in the expected shape (e.g. invalid JSON)."""

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class NotImplementedYet(LabkitError):
    """A learner exercise that has not been written yet."""
