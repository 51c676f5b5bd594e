"""Fault rules: what goes wrong (``Fault``), when (``Rule``), and what happened (``Exchange``).

A rule is a ``Fault`` plus a schedule (``times``, ``every``, ``after``, ``duration``,
``chance``). Faults add up: ``Fault.latency(0.5) + Fault.status(503)``. ``parse_rule`` reads
the same rules from text, as ``labkit faults --rule`` takes them. The proxy that applies them
is in ``labkit/faults/proxy.py``.
"""

from __future__ import annotations

import fnmatch
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from labkit.errors import FaultSpecError

__all__ = ["Action", "Exchange", "Fault", "FaultSpecError", "Rule", "parse_rule"]

Action = Literal["pass", "status", "hang", "reset", "truncate", "malformed", "not_found"]


# --- what goes wrong ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one request. Build one with the class methods; add two to combine."""

    action: Action = "pass"
    delay: float = 0.0  # seconds before the request is forwarded (or the fault answers)
    jitter: float = 0.0  # up to this many extra seconds, at random, on top of ``delay``
    first_byte: float = 0.0  # seconds between the response headers and the first body byte
    chunk_delay: float = 0.0  # seconds between forwarded chunks of a stream
    code: int = 0  # the HTTP status of a "status" or "not_found" fault
    retry_after: float | None = None  # the Retry-After header sent with a status fault
    after_chunks: int | None = None  # hang/reset/truncate/malformed after this many chunks

    @classmethod
    def latency(cls, seconds: float, jitter: float = 0.0) -> Fault:
        """Wait ``seconds`` (plus up to ``jitter`` at random) before forwarding the request."""
        return cls(delay=_non_negative(seconds, "seconds"), jitter=_non_negative(jitter, "jitter"))

    @classmethod
    def slow_first_byte(cls, seconds: float) -> Fault:
        """Send the response headers at once but hold the body back for ``seconds``."""
        return cls(first_byte=_non_negative(seconds, "seconds"))

    @classmethod
    def slow_stream(cls, seconds_per_chunk: float) -> Fault:
        """Wait ``seconds_per_chunk`` between the chunks (tokens) of a streamed answer."""
        return cls(chunk_delay=_non_negative(seconds_per_chunk, "seconds_per_chunk"))

    @classmethod
    def hang(cls, after_chunks: int | None = None) -> Fault:
        """Answer nothing, connection open (after ``after_chunks`` chunks or half a body)."""
        return cls(action="hang", after_chunks=_chunks(after_chunks))

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Fault:
        """Answer with HTTP ``code`` (500, 503, 429, ...) and an error body in the path's dialect."""
        if not 400 <= code <= 599:
            raise FaultSpecError(f"A status fault needs an error code (400-599), not {code}.")
        if retry_after is not None:
            _non_negative(retry_after, "retry_after")
        return cls(action="status", code=code, retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> Fault:
        """HTTP 429 with a ``Retry-After`` header."""
        return cls.status(429, retry_after=retry_after)

    @classmethod
    def reset(cls, after_chunks: int | None = None) -> Fault:
        """Reset the connection before answering, or after ``after_chunks`` chunks / half a body."""
        return cls(action="reset", after_chunks=_chunks(after_chunks))

    @classmethod
    def truncate(cls, after_chunks: int = 1) -> Fault:
        """End a stream cleanly after ``after_chunks`` chunks without its final line (a body: half)."""
        return cls(action="truncate", after_chunks=_chunks(after_chunks))

    @classmethod
    def malformed(cls, after_chunks: int = 0) -> Fault:
        """Break the JSON of the body (or of the stream line after ``after_chunks`` chunks)."""
        return cls(action="malformed", after_chunks=_chunks(after_chunks))

    @classmethod
    def model_not_found(cls) -> Fault:
        """HTTP 404 saying the requested model does not exist, in the path's dialect."""
        return cls(action="not_found", code=404)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """A fault from its short form: ``503``, ``latency=0.5``, ``reset@3``, ``latency=1+503``."""
        fault = cls()
        for part in text.split("+"):
            fault = fault + _parse_one(part.strip())
        return fault

    def __add__(self, other: Fault) -> Fault:
        """Both faults at once: the delays of each and at most one action."""
        if self.action != "pass" and other.action != "pass":
            raise FaultSpecError(f"Cannot combine two actions ({self} and {other}); pick one.")
        main = other if other.action != "pass" else self
        return replace(
            main,
            delay=self.delay + other.delay,
            jitter=self.jitter + other.jitter,
            first_byte=self.first_byte + other.first_byte,
            chunk_delay=self.chunk_delay + other.chunk_delay,
        )

    def __str__(self) -> str:
        parts = []
        if self.delay or self.jitter:
            parts.append(f"latency {self.delay:g}s" + (f"±{self.jitter:g}" if self.jitter else ""))
        if self.first_byte:
            parts.append(f"first byte +{self.first_byte:g}s")
        if self.chunk_delay:
            parts.append(f"{self.chunk_delay:g}s between chunks")
        if self.action == "status":
            hint = f" retry-after {self.retry_after:g}" if self.retry_after is not None else ""
            parts.append(f"{self.code}{hint}")
        elif self.action == "not_found":
            parts.append("model not found")
        elif self.action != "pass":
            where = f" after {self.after_chunks} chunks" if self.after_chunks is not None else ""
            parts.append(self.action + where)
        return " + ".join(parts) or "pass"


def _non_negative(value: float, name: str) -> float:
    if value < 0:
        raise FaultSpecError(f"{name} must be 0 or more, not {value}.")
    return float(value)


def _chunks(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise FaultSpecError(f"after_chunks must be 0 or more, not {value}.")
    return value


def _parse_one(part: str) -> Fault:
    name, _, arg = part.partition("=")
    if "@" in name:  # reset@3 is short for "reset after 3 chunks"
        name, _, arg = name.partition("@")
    name = name.strip().lower().replace("-", "_")
    try:
        if name.isdigit():
            return Fault.status(int(name))
        number = float(arg) if arg else None
        if name in ("latency", "delay"):
            return Fault.latency(number or 0.0)
        if name in ("first_byte", "slow_first_byte"):
            return Fault.slow_first_byte(number or 0.0)
        if name in ("slow_stream", "chunk_delay"):
            return Fault.slow_stream(number or 0.0)
        count = int(number) if number is not None else None
        if name == "hang":
            return Fault.hang(count)
        if name == "reset":
            return Fault.reset(count)
        if name == "truncate":
            return Fault.truncate(1 if count is None else count)
        if name == "malformed":
            return Fault.malformed(count or 0)
        if name in ("not_found", "notfound", "model_not_found"):
            return Fault.model_not_found()
    except ValueError as exc:
        raise FaultSpecError(f"Bad fault {part!r}: {exc}") from exc
    raise FaultSpecError(
        f"Unknown fault {part!r}. Use a status code (503), latency=S, first_byte=S, "
        "slow_stream=S, hang[@N], reset[@N], truncate@N, malformed[@N] or not_found."
    )


# --- when it goes wrong ------------------------------------------------------------------------


@dataclass(eq=False)
class Rule:
    """A fault, the requests it applies to, and its schedule; counts its own hits."""

    fault: Fault
    path: str = "*"  # a glob ("/v1/*") or a path prefix ("/api/chat")
    method: str | None = None  # e.g. "POST"; None matches every method
    times: int | None = None  # inject at most this many times, then let requests pass
    every: int | None = None  # only every n-th matching request (n, 2n, ...)
    after: int = 0  # let this many matching requests pass first
    duration: float | None = None  # only during the first ``duration`` seconds
    chance: float | None = None  # inject with this probability (0-1)
    hits: int = 0  # matching requests seen
    applied: int = 0  # faults injected
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        for name in ("times", "every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FaultSpecError(f"{name} must be 1 or more, not {value}.")
        if self.after < 0:
            raise FaultSpecError(f"after must be 0 or more, not {self.after}.")
        if self.chance is not None and not 0.0 <= self.chance <= 1.0:
            raise FaultSpecError(f"chance must be between 0 and 1, not {self.chance}.")
        if not self.path.startswith(("/", "*")):
            raise FaultSpecError(f"A rule's path must start with / (or be *), not {self.path!r}.")

    def matches(self, method: str, path: str) -> bool:
        """True if this rule is about requests like this one (schedule aside)."""
        if self.method and self.method.upper() != method.upper():
            return False
        if any(c in self.path for c in "*?["):
            return fnmatch.fnmatchcase(path, self.path)
        if self.path == "/":  # the root alone (Ollama's "is it running?"), not every path
            return path == "/"
        prefix = self.path.rstrip("/")
        return path == self.path or path.startswith(prefix + "/")

    def due(self, rng: random.Random) -> bool:
        """Count one matching request and say whether the schedule wants the fault on it."""
        self.hits += 1
        n = self.hits - self.after
        if n < 1 or (self.times is not None and self.applied >= self.times):
            return False
        if self.every is not None and n % self.every:
            return False
        if self.duration is not None and time.monotonic() - self.created > self.duration:
            return False
        return self.chance is None or rng.random() < self.chance

    def __str__(self) -> str:
        values = {k: getattr(self, k) for k in ("times", "every", "after", "duration", "chance")}
        schedule = [f"{k}={v:g}" for k, v in values.items() if v]
        method = f"{self.method} " if self.method else ""
        return f"{self.fault} on {method}{self.path}" + (
            f" ({', '.join(schedule)})" if schedule else ""
        )


def parse_rule(text: str) -> Rule:
    """A rule from one line: ``"503 /api/chat times=2"``, ``"reset@3 /v1/* every=5"``."""
    words = text.split()
    if not words:
        raise FaultSpecError('An empty rule; write e.g. "503 /api/chat times=2".')
    fault, path, options = Fault.parse(words[0]), "*", {}
    for word in words[1:]:
        if word.startswith(("/", "*")):
            path = word
            continue
        key, eq, value = word.partition("=")
        if not eq:
            raise FaultSpecError(
                f"Cannot read {word!r} in rule {text!r}: expected a /path or key=value."
            )
        options[key.lower().replace("-", "_")] = value
    kwargs: dict[str, Any] = {}
    try:
        for key, value in options.items():
            if key in ("times", "every", "after"):
                kwargs[key] = int(value)
            elif key in ("for", "duration"):
                kwargs["duration"] = float(value.removesuffix("s"))
            elif key == "chance":
                kwargs["chance"] = float(value.removesuffix("%")) / (100 if "%" in value else 1)
            elif key == "method":
                kwargs["method"] = value.upper()
            elif key == "jitter":
                fault = replace(fault, jitter=_non_negative(float(value), "jitter"))
            elif key == "retry_after":
                fault = replace(fault, retry_after=_non_negative(float(value), "retry_after"))
            else:
                raise FaultSpecError(
                    f"unknown option {key!r} (use times, every, after, for, chance, method, "
                    "jitter, retry_after)"
                )
        return Rule(fault, path, **kwargs)
    except ValueError as exc:
        raise FaultSpecError(f"Bad rule {text!r}: {exc}") from exc


# --- what happened -----------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request through the proxy and what came of it (times in seconds)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any  # parsed JSON when the body is JSON, else text, else None
    started: float  # wall-clock time (time.time()) when the request arrived
    fault: str | None = None  # the fault injected, None if the request passed untouched
    status: int | None = None  # None when no status line was sent (reset, hang)
    first_byte: float | None = None  # from arrival to the first body byte sent back
    total: float | None = None  # from arrival to the end; None while still in flight
    chunks: int = 0  # body chunks sent back (stream lines, or 1 for a whole body)
    error: str | None = None  # what cut the exchange short, if anything

    def __str__(self) -> str:
        status = self.status if self.status is not None else "---"
        took = f"{self.total:.3f}s" if self.total is not None else "in flight"
        fault = f" [{self.fault}]" if self.fault else ""
        error = f" ({self.error})" if self.error else ""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"{stamp} {self.method} {self.path} -> {status} {took}{fault}{error}"
