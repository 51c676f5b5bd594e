"""One measured call: when each piece arrived, how many tokens, how fast.

``measure`` times any call with no arguments: one that returns text (or a ``Reply``) all at
once, or one that returns a stream of pieces::

    trace = measure(lambda: client.stream("Hi", max_tokens=32))
    trace.first_token, trace.total, trace.tokens_per_second

``labkit/bench.py`` runs many such calls side by side and summarises them. All times are in
seconds on ``time.perf_counter``'s clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from labkit.errors import LabkitError

__all__ = [
    "COUNTED",
    "RUNTIME",
    "UNKNOWN",
    "USAGE",
    "Call",
    "Clock",
    "Timed",
    "Trace",
    "Traces",
    "measure",
    "runtime_speed",
    "timed",
]

Call = Callable[[], object]
Clock = Callable[[], float]

# Where a trace's token count and speed came from.
RUNTIME = "runtime"  # the runtime's own counters: tokens and decode time (eval_count/eval_duration)
USAGE = "usage"  # tokens from the runtime's usage counter, time from our clock
COUNTED = "counted"  # streamed pieces counted (one piece is about one token), time from our clock
UNKNOWN = "none"  # plain text, not streamed: nothing to count


@dataclass
class Trace:
    """One call as the caller saw it; times are seconds after ``start``."""

    start: float  # perf_counter() just before the call was made
    total: float  # until the last piece (or the whole reply) arrived
    first_token: float | None  # until the first non-empty piece; = total when not streamed
    pieces: list[tuple[float, str]]  # (arrival time, text) of every piece, in order
    tokens: int | None  # generated tokens
    tokens_per_second: float | None  # decode speed: generated tokens per second
    source: str  # where tokens and speed came from: RUNTIME, USAGE, COUNTED or UNKNOWN
    streamed: bool
    prompt_tokens: int | None = None
    label: str = ""  # the configuration it belongs to
    trial: int = 0  # calls with the same label and trial ran at the same time
    concurrency: int = 1  # how many calls ran at once in that trial

    @property
    def text(self) -> str:
        """The whole answer."""
        return "".join(piece for _, piece in self.pieces)

    @property
    def end(self) -> float:
        """When the call finished, on the clock's own scale (``start + total``)."""
        return self.start + self.total


Traces = Mapping[str, Sequence[Trace]]  # calls by configuration (a Comparison is one)


# ---------------------------------------------------------------------------------------------
# Measuring one call
# ---------------------------------------------------------------------------------------------


class Timed(Iterator[str]):
    """Pass a stream's pieces on unchanged, noting when each one arrives.

    Nothing is buffered: each piece is handed on the moment the stream yields it, so text
    can be shown while it is measured. After the stream ends, ``.trace`` holds the figures.
    """

    def __init__(
        self, stream: Iterable[str], *, start: float | None = None, clock: Clock = time.perf_counter
    ) -> None:
        self.stream = stream
        self._pieces = iter(stream)
        self._clock = clock
        self.start = clock() if start is None else start
        self.pieces: list[tuple[float, str]] = []
        self.trace: Trace | None = None

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            if self.trace is None:
                self.trace = _streamed_trace(self.start, self._clock(), self.pieces, self.stream)
            raise
        self.pieces.append((self._clock() - self.start, piece))
        return piece


def timed(stream: Iterable[str], *, start: float | None = None) -> Timed:
    """Wrap a stream so it is measured while you use it; read ``.trace`` after the loop."""
    return Timed(stream, start=start)


def measure(call: Call, *, label: str = "", clock: Clock = time.perf_counter) -> Trace:
    """Make one call and time it: a stream is read to its end, a reply taken whole."""
    start = clock()  # before the call: sending the request is part of the wait
    result = call()
    if isinstance(result, Iterable) and not isinstance(result, (str, bytes, Mapping)):
        stream = Timed(result, start=start, clock=clock)
        for _ in stream:
            pass
        assert stream.trace is not None
        trace = stream.trace
    else:
        trace = _whole_trace(start, clock(), result)
    trace.label = label
    return trace


def _streamed_trace(
    start: float, end: float, pieces: list[tuple[float, str]], stream: object
) -> Trace:
    first = next((t for t, text in pieces if text), None)
    # A client's stream keeps the runtime's final figures in `.reply` once it has ended.
    try:
        reply = getattr(stream, "reply", None)
    except LabkitError:  # a stream that was cut short: the trace keeps what arrived
        reply = None
    tokens, speed, source = _token_figures(reply)
    if tokens is None:
        tokens, source = sum(1 for _, text in pieces if text), COUNTED
    if speed is None and first is not None and tokens > 1:
        # Decode speed: the tokens after the first, over the time they took to arrive.
        last = max(t for t, text in pieces if text)
        speed = (tokens - 1) / (last - first) if last > first else None
    return Trace(
        start=start,
        total=end - start,
        first_token=first,
        pieces=list(pieces),
        tokens=tokens,
        tokens_per_second=speed,
        source=source,
        streamed=True,
        prompt_tokens=getattr(reply, "prompt_tokens", None),
    )


def _whole_trace(start: float, end: float, result: object) -> Trace:
    text = result if isinstance(result, str) else str(getattr(result, "text", result))
    total = end - start
    tokens, speed, source = _token_figures(None if isinstance(result, str) else result)
    if tokens is not None and speed is None and total > 0:
        speed = tokens / total  # no runtime timings: the best we know is the whole wait
    return Trace(
        start=start,
        total=total,
        # Nothing is shown before the whole reply is there, so the first token arrives last.
        first_token=total,
        pieces=[(total, text)],
        tokens=tokens,
        tokens_per_second=speed,
        source=source,
        streamed=False,
        prompt_tokens=getattr(result, "prompt_tokens", None),
    )


def _token_figures(reply: object) -> tuple[int | None, float | None, str]:
    """(tokens, tokens per second, source) from what the runtime reported, if anything."""
    tokens = getattr(reply, "completion_tokens", None)
    if not isinstance(tokens, int):
        return None, None, UNKNOWN
    speed = runtime_speed(reply)
    return tokens, speed, RUNTIME if speed is not None else USAGE


def runtime_speed(reply: object) -> float | None:
    """Decode tokens per second as the runtime itself measured it, or None if it did not say."""
    # Only the runtime's counters count here: Reply.tokens_per_second may be a clock estimate.
    timings = getattr(reply, "timings", None) or {}
    raw = getattr(reply, "raw", None)
    raw = raw if isinstance(raw, Mapping) else {}
    for counters in (timings, raw, raw.get("timings")):
        if not isinstance(counters, Mapping):
            continue
        # Ollama: eval_count tokens in eval_duration nanoseconds.
        if counters.get("eval_count") and counters.get("eval_duration"):
            return float(counters["eval_count"]) / (float(counters["eval_duration"]) / 1e9)
        # llama.cpp: its own rate (the first token comes with the prompt, so it is left out),
        # else predicted_n tokens in predicted_ms milliseconds.
        if counters.get("predicted_per_second"):
            return float(counters["predicted_per_second"])
        if counters.get("predicted_n") and counters.get("predicted_ms"):
            return float(counters["predicted_n"]) / (float(counters["predicted_ms"]) / 1e3)
    return None
