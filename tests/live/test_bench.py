"""labkit.bench against the live runtime: consistent figures, honest token counts, no overhead."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from labkit import Client, Reply, bench, runtime

PROMPT = "Name three colours."
# Deterministic and short: temperature 0, a fixed seed, a small token budget.
SETTINGS = {"temperature": 0.0, "seed": 42, "max_tokens": 16}


def _has_ollama_chat(url: str) -> bool:
    try:
        return requests.post(url + "/api/chat", json={}, timeout=5).status_code != 404
    except requests.RequestException:
        return False


@pytest.fixture(scope="module", params=["openai", "ollama"])
def client(request: pytest.FixtureRequest, embedded: runtime.RuntimeRecord) -> Iterator[Client]:
    """A client for the embedded runtime in each dialect it serves."""
    if request.param == "ollama" and not _has_ollama_chat(embedded.url):
        pytest.skip("this runtime does not serve Ollama's /api/chat")
    with Client(embedded.url, dialect=request.param, model=runtime.CHAT_MODEL) as made:
        made.chat(PROMPT, **SETTINGS)  # warm-up: the first call after start pays for loading
        yield made


@pytest.fixture(scope="module")
def openai_client(embedded: runtime.RuntimeRecord) -> Iterator[Client]:
    """One client for the tests that need only one dialect."""
    with Client(embedded.url, dialect="openai", model=runtime.CHAT_MODEL) as made:
        yield made


# --- one call ---------------------------------------------------------------------------------


def test_stream_trace_is_consistent_with_the_runtime(client: Client) -> None:
    stream = client.stream(PROMPT, **SETTINGS)
    trace = bench.measure(lambda: stream, label="stream")
    reply = stream.reply

    assert trace.streamed and trace.label == "stream"
    assert trace.first_token is not None
    assert 0 < trace.first_token <= trace.total
    times = [t for t, _ in trace.pieces]
    assert times == sorted(times), "pieces must arrive in time order"
    assert times[-1] <= trace.total
    assert trace.first_token == next(t for t, text in trace.pieces if text)
    assert trace.text == reply.text
    # Token figures come from the runtime's own counters for this very call.
    assert trace.source == bench.RUNTIME
    assert trace.tokens == reply.completion_tokens
    assert trace.prompt_tokens == reply.prompt_tokens
    assert trace.tokens_per_second == pytest.approx(reply.tokens_per_second)
    # One streamed piece is one token (give or take one held back at a character boundary).
    counted = sum(1 for _, text in trace.pieces if text)
    assert reply.completion_tokens is not None
    assert abs(counted - reply.completion_tokens) <= 1


def test_whole_reply_trace_arrives_at_once(client: Client) -> None:
    replies: list[Reply] = []

    def call() -> Reply:
        replies.append(client.chat(PROMPT, **SETTINGS))
        return replies[-1]

    trace = bench.measure(call)
    (reply,) = replies
    assert not trace.streamed
    # Nothing is visible before the whole answer: first token and total coincide.
    assert trace.first_token == trace.total
    assert trace.pieces == [(trace.total, reply.text)]
    assert trace.total >= reply.latency > 0  # our clock encloses the client's own
    assert trace.source == bench.RUNTIME
    assert trace.tokens == reply.completion_tokens
    assert trace.tokens_per_second == pytest.approx(reply.tokens_per_second)


# --- measuring does not get in the way ----------------------------------------------------------


def test_measuring_adds_no_measurable_delay(openai_client: Client) -> None:
    """Same stream, timed raw underneath and by bench on top: the two clocks agree."""
    delays: list[float] = []
    end_gaps: list[float] = []
    for _ in range(3):
        raw: list[float] = []
        stream = openai_client.stream(PROMPT, **SETTINGS)

        def stamped(stream: Iterator[str] = stream, raw: list[float] = raw) -> Iterator[str]:
            for piece in stream:
                raw.append(time.perf_counter())  # when the client handed the piece over
                yield piece

        measured = bench.timed(stamped())
        seen = []
        for _piece in measured:
            seen.append(time.perf_counter())  # when the piece reached the reader
        trace, reply = measured.trace, stream.reply
        assert trace is not None and len(seen) == len(raw) == len(trace.pieces)
        delays += [after - before for before, after in zip(raw, seen, strict=True)]
        # The client's own clock of the same stream ends where ours does.
        end_gaps.append(abs(trace.total - reply.latency))
        # Pieces reach the reader while the stream is still running, not all at the end.
        assert seen[0] < seen[-1]
    assert statistics.median(delays) < 0.005
    assert statistics.median(end_gaps) < 0.005


# --- many calls -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(openai_client: Client) -> bench.Comparison:
    """A small live comparison: streamed, whole, and two streams at once."""
    return bench.compare(
        {
            "stream": lambda: openai_client.stream(PROMPT, **SETTINGS),
            "no stream": lambda: openai_client.chat(PROMPT, **SETTINGS),
            "2 at once": bench.Config(lambda: openai_client.stream(PROMPT, **SETTINGS), 2),
        },
        trials=3,
        warmup=1,
        progress=False,
    )


def test_compare_live(comparison: bench.Comparison) -> None:
    assert list(comparison) == ["stream", "no stream", "2 at once"]
    assert [len(found) for found in comparison.values()] == [3, 3, 6]
    assert sorted(t.trial for t in comparison["2 at once"]) == [0, 0, 1, 1, 2, 2]
    for metric in bench.METRICS:
        for label, s in comparison.summary(metric).items():
            assert s.n > 0, (label, metric)
            assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max, (label, metric)
    for trace in (t for found in comparison.values() for t in found):
        assert trace.first_token is not None and 0 < trace.first_token <= trace.total
        assert trace.source == bench.RUNTIME
    # A stream shows text before it ends; a whole reply shows nothing until it is complete.
    for trace in comparison["stream"] + comparison["2 at once"]:
        assert trace.streamed and trace.first_token is not None
        assert trace.first_token < trace.total
    assert all(t.first_token == t.total for t in comparison["no stream"])
    table = comparison.table()
    assert "first token ms p50/p90/p99" in table
    assert all(label in table for label in comparison)


def test_concurrent_calls_overlap(comparison: bench.Comparison) -> None:
    together = comparison["2 at once"]
    for trial in range(3):
        batch = [t for t in together if t.trial == trial]
        assert len(batch) == 2 and all(t.concurrency == 2 for t in batch)
        # Both started before either finished: they really ran at the same time.
        assert max(t.start for t in batch) < min(t.end for t in batch)
    throughput = bench.batch_throughput(together)
    assert len(throughput) == 3
    for figure, trial in zip(throughput, range(3), strict=True):
        batch = [t for t in together if t.trial == trial]
        wall = max(t.end for t in batch) - min(t.start for t in batch)
        assert figure == pytest.approx(sum(t.tokens or 0 for t in batch) / wall)


def test_csv_round_trip(comparison: bench.Comparison, tmp_path: Path) -> None:
    tricky = bench.measure(
        lambda: iter(['say "hi",', "\nnew line", " ünïcode ✓"]), label="odd, one"
    )
    traces = [t for found in comparison.values() for t in found] + [tricky]
    path = bench.write_csv(traces, tmp_path / "traces.csv")
    back = bench.read_csv(path)
    assert [t for found in back.values() for t in found] == traces
    saved = comparison.to_csv(tmp_path / "comparison.csv")
    assert bench.read_csv(saved).traces == comparison.traces
