"""Benchmark bookkeeping without a runtime: traces, summaries, turns, bad input."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import bench
from labkit.errors import InvalidInput

PROMPT = "Name three colours."
SETTINGS = {"temperature": 0.0, "seed": 42, "max_tokens": 16}


def test_counts_pieces_when_the_runtime_reports_nothing() -> None:
    trace = bench.measure(lambda: iter(["one", "", " two", " three"]))
    assert trace.source == bench.COUNTED
    assert trace.tokens == 3  # the empty piece is not a token
    assert trace.text == "one two three"
    plain = bench.measure(lambda: "just text")
    assert (plain.source, plain.tokens, plain.tokens_per_second) == (bench.UNKNOWN, None, None)


def test_timed_hands_each_piece_on_before_the_stream_goes_on() -> None:
    received_first = threading.Event()
    waited: list[bool] = []

    def stream() -> Iterator[str]:
        yield "first"
        # A wrapper that buffered would ask for more before handing "first" on, and this
        # wait would time out; one that passes pieces straight through never waits here.
        waited.append(received_first.wait(timeout=2.0))
        yield "second"

    measured = bench.timed(stream())
    for piece in measured:
        if piece == "first":
            assert measured.trace is None, "the stream has not ended yet"
            received_first.set()
    assert waited == [True]
    assert measured.trace is not None and measured.trace.text == "firstsecond"


def test_summary_percentiles() -> None:
    summary = bench.summarize(range(1, 101))
    assert (summary.n, summary.min, summary.max, summary.mean) == (100, 1, 100, 50.5)
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p90 == pytest.approx(90.1)
    assert summary.p99 == pytest.approx(99.01)
    empty = bench.summarize([None, float("nan")])
    assert empty.n == 0 and math.isnan(empty.p50)


def test_compare_takes_turns() -> None:
    order: list[str] = []

    def call(label: str) -> bench.Call:
        return lambda: order.append(label) or label

    bench.compare({k: call(k) for k in "abc"}, trials=3, warmup=1, progress=False)
    # Round by round, every configuration runs once, and who goes first rotates.
    assert order == list("abc") + list("bca") + list("cab") + list("abc")


def test_bad_input_is_explained(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="at least one configuration"):
        bench.compare({})
    with pytest.raises(InvalidInput, match="trials >= 1"):
        bench.compare({"a": lambda: "x"}, trials=0)
    with pytest.raises(InvalidInput, match="concurrency"):
        bench.compare({"a": bench.Config(lambda: "x", 0)})
    with pytest.raises(InvalidInput, match="Unknown figure"):
        bench.values([], "speed")
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(InvalidInput, match="not a trace file"):
        bench.read_csv(other)
    with pytest.raises(InvalidInput, match="Cannot read"):
        bench.read_csv(tmp_path / "missing.csv")
