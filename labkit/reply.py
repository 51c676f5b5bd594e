"""What a call gives back (``Reply``, ``Health``) and how long it may take (``Timeout``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labkit.structured import Schema, validate

__all__ = ["DEFAULT_TOTAL", "Health", "Reply", "Timeout"]

# The deadline of one call, retries included. A 135M model on 2 CPU cores writes ~30 tokens/s,
# so 10 minutes covers several thousand tokens; a stalled server is given up on by then.
DEFAULT_TOTAL = 600.0


@dataclass(frozen=True)
class Timeout:
    """How long to wait, in seconds.

    ``connect`` for the connection, ``read`` for each gap between bytes, and ``total`` for the
    whole call: every attempt, every pause between retries and the whole stream. ``total=None``
    means no deadline.
    """

    connect: float = 30.0
    read: float = 120.0
    total: float | None = DEFAULT_TOTAL

    @classmethod
    def of(cls, value: Timeout | float | None, default: Timeout) -> Timeout:
        """A Timeout from a Timeout, a number of seconds (connect and read) or None (the default)."""
        if value is None:
            return default
        if isinstance(value, Timeout):
            return value
        return cls(connect=float(value), read=float(value), total=default.total)


@dataclass
class Reply:
    """A model's answer with everything the runtime told about how it was made."""

    text: str
    model: str
    dialect: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    latency: float = 0.0  # seconds from sending the request to the end of the answer
    first_token: float | None = None  # seconds to the first piece (streams only)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, Any] = field(default_factory=dict, repr=False)  # the runtime's own
    finish_reason: str | None = None  # "stop", "length", ... as the runtime says it
    attempts: int = 1
    validation: str | None = None  # "ok" or what is wrong, when a format was asked for
    schema: Schema | None = field(default=None, repr=False)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed, from the runtime's own counters when it reports them."""
        t = self.timings
        if t.get("eval_count") and t.get("eval_duration"):  # Ollama: nanoseconds
            return float(t["eval_count"]) / (float(t["eval_duration"]) / 1e9)
        if t.get("predicted_per_second"):  # llama.cpp
            return float(t["predicted_per_second"])
        if t.get("predicted_n") and t.get("predicted_ms"):
            return float(t["predicted_n"]) / (float(t["predicted_ms"]) / 1000.0)
        # No counters: estimate from the clock (after the first piece, if we know when).
        decode = self.latency - (self.first_token or 0.0)
        if self.completion_tokens and decode > 0:
            return self.completion_tokens / decode
        return None

    def json(self, schema: Schema | None = None) -> Any:
        """The text parsed as JSON, checked against ``schema`` (or the one the call asked for)."""
        return validate(self, schema if schema is not None else self.schema)


@dataclass(frozen=True)
class Health:
    """Is the runtime up, and does it have the model?"""

    up: bool
    model_available: bool | None  # None when no model was asked about
    detail: str

    def __bool__(self) -> bool:
        return self.up and self.model_available is not False
