"""The retry policy: which failures are retried, the backoff delays, Retry-After; never waits."""

from __future__ import annotations

import pytest

from labkit.errors import LabkitTimeout, ModelNotFound, RuntimeUnavailable, ServerError
from labkit.retry import (
    NO_RETRY,
    RetryPolicy,
    ServerBusy,
    any_of,
    exponential,
    fixed,
    is_transient,
    jitter,
    on_status,
)


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(sleeps: list[float], **kwargs: object) -> RetryPolicy:
    kwargs.setdefault("wait", exponential(first=0.5, factor=2.0, cap=8.0))
    return RetryPolicy(sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


def down() -> RuntimeUnavailable:
    return RuntimeUnavailable("no runtime")


def test_exponential_backoff_delays_are_the_ones_slept() -> None:
    sleeps: list[float] = []
    fn = Flaky(down(), down(), down(), down())
    assert policy(sleeps, attempts=5).call(fn) == "done"
    assert sleeps == [0.5, 1.0, 2.0, 4.0] and fn.calls == 5


def test_backoff_is_capped() -> None:
    wait = exponential(first=1.0, factor=3.0, cap=5.0)
    assert [wait(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 5.0, 5.0]


def test_jitter_stays_within_its_spread() -> None:
    base = fixed(2.0)
    assert jitter(base, spread=0.25, rng=lambda: 0.0)(1) == pytest.approx(1.5)
    assert jitter(base, spread=0.25, rng=lambda: 0.5)(1) == pytest.approx(2.0)
    assert jitter(base, spread=0.25, rng=lambda: 1.0)(1) == pytest.approx(2.5)
    delays = {jitter(base)(1) for _ in range(50)}  # the default uses real randomness
    assert len(delays) > 1 and all(1.5 <= d <= 2.5 for d in delays)


def test_gives_up_after_the_last_attempt_with_the_last_error() -> None:
    sleeps: list[float] = []
    last = LabkitTimeout("third")
    fn = Flaky(down(), LabkitTimeout("second"), last, down())
    with pytest.raises(LabkitTimeout) as err:
        policy(sleeps).call(fn)
    assert err.value is last and fn.calls == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    "error",
    [
        ServerError("bad request", status=400),
        ModelNotFound("no such model", status=404),
        ServerError("boom", status=500),
        ValueError("a bug in the caller"),
    ],
)
def test_permanent_failures_are_not_retried(error: Exception) -> None:
    sleeps: list[float] = []
    fn = Flaky(error)
    with pytest.raises(type(error)):
        policy(sleeps).call(fn)
    assert fn.calls == 1 and sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        down(),
        LabkitTimeout("read timeout"),
        ServerBusy("busy", status=503),
        ServerError("too many", status=429),
    ],
)
def test_transient_failures_are_retried(error: Exception) -> None:
    assert is_transient(error)
    sleeps: list[float] = []
    assert policy(sleeps).call(Flaky(error)) == "done" and sleeps == [0.5]


def test_retry_after_replaces_the_backoff() -> None:
    sleeps: list[float] = []
    fn = Flaky(ServerBusy("slow down", status=429, retry_after=7.0), down())
    assert policy(sleeps).call(fn) == "done"
    assert sleeps == [7.0, 1.0]  # the hint, then the backoff for the second failure


def test_retry_after_beyond_the_limit_gives_up() -> None:
    sleeps: list[float] = []
    fn = Flaky(ServerBusy("come back tomorrow", status=503, retry_after=86400.0))
    with pytest.raises(ServerBusy):
        policy(sleeps, max_retry_after=60.0).call(fn)
    assert sleeps == [] and fn.calls == 1


def test_predicates_compose() -> None:
    sleeps: list[float] = []
    with_500 = policy(sleeps, retry_if=any_of(is_transient, on_status(500)))
    assert with_500.call(Flaky(ServerError("flaky", status=500))) == "done"
    assert sleeps == [0.5]
    assert not on_status(500)(ServerError("x", status=502))
    assert not on_status(500)(down())


def test_on_retry_sees_each_failure_and_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    fn = Flaky(down(), LabkitTimeout("slow"))
    policy([]).call(fn, on_retry=lambda n, exc, d: seen.append((n, type(exc).__name__, d)))
    assert seen == [(1, "RuntimeUnavailable", 0.5), (2, "LabkitTimeout", 1.0)]


def test_no_retry_tries_once() -> None:
    fn = Flaky(down())
    with pytest.raises(RuntimeUnavailable):
        NO_RETRY.call(fn)
    assert fn.calls == 1


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
