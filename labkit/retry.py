"""When to try a failed call again, and how long to wait first.

A policy is three small pieces you can swap: *which* failures are worth another try
(``retry_if``), *how long* to wait before try n+1 (``wait``), and *how* to wait (``sleep``,
which tests replace so they never really wait)::

    policy = RetryPolicy(attempts=5, wait=jitter(exponential(first=1.0)))
    policy = RetryPolicy(retry_if=any_of(is_transient, on_status(500)))  # also retry 500s
    policy = NO_RETRY

Only failures that a second try can fix are retried by default: the runtime was not reachable
(still starting), it said it is busy (429 with ``Retry-After``, 503), or it sent nothing before
the timeout. A 400 or 404 will fail the same way every time. A 500 is not retried either: from
a local runtime it almost always means this request broke something (a prompt longer than the
context, a schema the grammar engine rejects), and repeating it only triples the wait for the
same error. Add ``on_status(500)`` if your runtime fails at random.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from labkit.errors import InvalidInput, LabkitTimeout, RuntimeUnavailable, ServerBusy, ServerError

__all__ = [
    "NO_RETRY",
    "RETRY_STATUSES",
    "RetryPolicy",
    "any_of",
    "exponential",
    "fixed",
    "is_transient",
    "jitter",
    "on_status",
    "retry_after",
]

T = TypeVar("T")
Wait = Callable[[int], float]  # attempt number that just failed (1, 2, ...) -> seconds to wait
Predicate = Callable[[BaseException], bool]

RETRY_STATUSES = frozenset({429, 503})


# --- wait: how long before the next attempt -------------------------------------------------


def exponential(first: float = 0.5, factor: float = 2.0, cap: float = 8.0) -> Wait:
    """Wait ``first``, then ``first * factor``, ... never more than ``cap`` seconds."""

    def wait(attempt: int) -> float:
        return float(min(cap, first * factor ** (attempt - 1)))

    return wait


def jitter(wait: Wait, spread: float = 0.25, rng: Callable[[], float] = random.random) -> Wait:
    """Stretch or shrink each wait by up to ``spread`` (a fraction), at random.

    Without it, every client that failed together retries together and hits the runtime
    at the same instant again.
    """

    def jittered(attempt: int) -> float:
        return wait(attempt) * (1.0 + spread * (2.0 * rng() - 1.0))

    return jittered


def fixed(seconds: float) -> Wait:
    """Wait the same time before every retry."""
    return lambda attempt: seconds


# --- retry_if: which failures deserve another try ----------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """True for failures that may go away: no connection, a timeout, HTTP 429 or 503."""
    if isinstance(exc, (RuntimeUnavailable, LabkitTimeout)):
        return True
    return isinstance(exc, ServerError) and exc.status in RETRY_STATUSES


def on_status(*statuses: int) -> Predicate:
    """True for a ServerError with one of these HTTP statuses."""
    return lambda exc: isinstance(exc, ServerError) and exc.status in statuses


def any_of(*predicates: Predicate) -> Predicate:
    """True if any of the predicates is."""
    return lambda exc: any(predicate(exc) for predicate in predicates)


def retry_after(exc: BaseException) -> float | None:
    """The runtime's ``Retry-After`` hint carried by the error, if any."""
    return exc.retry_after if isinstance(exc, ServerBusy) else None


# --- the policy -------------------------------------------------------------------------------

OnRetry = Callable[[int, BaseException, float], None]  # (failed attempt, error, delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries; between them wait per ``wait`` or the server's Retry-After."""

    attempts: int = 3
    wait: Wait = field(default_factory=lambda: jitter(exponential()))
    retry_if: Predicate = is_transient
    max_retry_after: float = 60.0  # a server asking for a longer pause gets the error instead
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidInput(f"attempts must be at least 1, not {self.attempts}.")

    def delay(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait after failed ``attempt``, or None to give up now."""
        if attempt >= self.attempts or not self.retry_if(exc):
            return None
        hint = retry_after(exc)
        if hint is not None:
            # The server knows when it will have room again; waiting less just earns another 429.
            return hint if hint <= self.max_retry_after else None
        return max(0.0, self.wait(attempt))

    def call(
        self,
        fn: Callable[[], T],
        *,
        on_retry: OnRetry | None = None,
        remaining: Callable[[], float | None] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds or the policy gives up (then its last error is raised).

        ``remaining`` gives the seconds left before the caller's deadline (None: no deadline);
        a pause that would end past it is not taken: the last error is raised at once.
        """
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                pause = self.delay(attempt, exc)
                left = remaining() if remaining is not None else None
                if pause is None or (left is not None and pause >= left):
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc, pause)
                self.sleep(pause)
                attempt += 1


NO_RETRY = RetryPolicy(attempts=1)
