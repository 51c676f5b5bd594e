"""Benchmark fair share: light learners' small chats alone, and beside one heavy learner's burst.

Run: .venv/bin/python bench/fair_share.py [--rounds 6] [--url URL]

Starts two private runtimes, one after the other (a temporary folder, a free port): one with
``LABKIT_FAIR_SHARE=off`` (arrival order: llama.cpp's own queue, as the runtime served before)
and one with the fair share on (waiting requests served in turn per learner). Each is measured
the same way. Alone: three light learners send one small chat each at the same moment, a
round at a time. Beside: one heavy learner keeps eight streams going (one long answer after
another) while the light learners' rounds repeat. Alone and beside take turns, half the
rounds at a time. Every request names its learner with the ``X-Labkit-Learner`` header, as
nginx does on a class server. Prints the light learners' p50 and p90 alone and beside, before
and after, side by side, and the heavy learner's tokens per second; the goal is a p50 beside
within twice the p50 alone. With ``--url``, measures that running runtime only (whatever its
setting).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from labkit import runtime
from labkit.runtime.fairshare import LEARNER_HEADER

LIGHT = ("light-1", "light-2", "light-3")
HEAVY_STREAMS = 8
LIGHT_TOKENS = 24
HEAVY_TOKENS = 128
GAP_SECONDS = 1.0  # between rounds: the heavy streams are at another point each time
TIMEOUT = aiohttp.ClientTimeout(total=600)


def chat(content: str, tokens: int, *, stream: bool) -> dict[str, Any]:
    """An Ollama chat request at temperature 0 with a seed."""
    return {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        "options": {"temperature": 0, "seed": 1, "num_predict": tokens},
    }


SMALL = chat("Say hello to Ada in one sentence.", LIGHT_TOKENS, stream=False)
LONG = chat("Write a long story about a lighthouse keeper.", HEAVY_TOKENS, stream=True)


@dataclass
class Figures:
    """What one runtime measured."""

    alone: list[float] = field(default_factory=list)
    beside: list[float] = field(default_factory=list)
    heavy_tokens_per_second: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(session: aiohttp.ClientSession, url: str, learner: str) -> float:
    """Seconds for one light learner's small, non-streamed chat."""
    started = time.perf_counter()
    headers = {LEARNER_HEADER: learner}
    async with session.post(url + "/api/chat", json=SMALL, headers=headers) as answer:
        if answer.status != 200:
            raise SystemExit(f"the runtime answered {answer.status}: {await answer.text()}")
        await answer.read()
    return time.perf_counter() - started


async def light_rounds(session: aiohttp.ClientSession, url: str, rounds: int) -> list[float]:
    """Every light learner's latency, all three asking at once, ``rounds`` times."""
    found: list[float] = []
    for _ in range(rounds):
        found += await asyncio.gather(*(timed(session, url, name) for name in LIGHT))
        await asyncio.sleep(GAP_SECONDS)
    return found


async def heavy_stream(
    session: aiohttp.ClientSession, url: str, tokens: list[int], started: asyncio.Event
) -> None:
    """One of the heavy learner's streams: long answers, one after another, until cancelled."""
    headers = {LEARNER_HEADER: "heavy"}
    while True:
        async with session.post(url + "/api/chat", json=LONG, headers=headers) as answer:
            if answer.status != 200:
                raise SystemExit(f"the runtime answered {answer.status}: {await answer.text()}")
            async for _line in answer.content:
                tokens[0] += 1  # one NDJSON line per piece of text: about a token
                started.set()


async def measure(url: str, rounds: int) -> Figures:
    """The light learners alone, then beside the heavy learner's eight streams, twice over.

    Alone and beside take turns (half the rounds each time), so that the load other programs
    put on the machine meanwhile weighs on both alike.
    """
    figures = Figures()
    tokens, seconds = 0, 0.0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for name in LIGHT:  # warm the prompt cache, as the measured rounds will find it
            await timed(session, url, name)
        for block in (rounds - rounds // 2, rounds // 2):
            if not block:
                continue
            figures.alone += await light_rounds(session, url, block)
            counted, started = [0], asyncio.Event()
            heavy = [
                asyncio.create_task(heavy_stream(session, url, counted, started))
                for _ in range(HEAVY_STREAMS)
            ]
            await asyncio.wait_for(started.wait(), 300)
            await asyncio.sleep(2.0)  # every stream going, and some on their next answer
            before, clock = counted[0], time.perf_counter()
            figures.beside += await light_rounds(session, url, block)
            seconds += time.perf_counter() - clock
            tokens += counted[0] - before
            for task in heavy:
                task.cancel()  # hang up: the runtime stops their work
            await asyncio.gather(*heavy, return_exceptions=True)
            await asyncio.sleep(GAP_SECONDS)
    figures.heavy_tokens_per_second = tokens / seconds
    return figures


@contextlib.contextmanager
def private_runtime(fair: bool) -> Iterator[str]:
    """A runtime of its own in a temporary folder, fair share on or off; its URL."""
    with tempfile.TemporaryDirectory(prefix="labkit-fair-share-") as name:
        folder = Path(name)
        saved = os.environ.get("LABKIT_FAIR_SHARE")
        os.environ["LABKIT_FAIR_SHARE"] = "on" if fair else "off"  # the runtime inherits it
        try:
            record = runtime.up(port=runtime.free_port(), state_dir=folder, say=False)
        finally:
            if saved is None:
                del os.environ["LABKIT_FAIR_SHARE"]
            else:
                os.environ["LABKIT_FAIR_SHARE"] = saved
        try:
            yield record.url
        finally:
            runtime.down(state_dir=folder, say=False)


def row(label: str, figures: Figures) -> str:
    """One line of the table."""
    alone, beside = statistics.median(figures.alone), statistics.median(figures.beside)
    return (
        f"{label:<30}{alone:>8.2f}{beside:>9.2f}{beside / alone:>8.1f}x"
        f"{percentile(figures.alone, 0.9):>9.2f}{percentile(figures.beside, 0.9):>9.2f}"
        f"{figures.heavy_tokens_per_second:>10.1f}"
    )


def main() -> None:
    """Measure arrival order and fair share on private runtimes (or one given runtime)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of three light chats")
    parser.add_argument("--url", help="measure this running runtime only")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    results: dict[str, Figures] = {}
    if args.url:
        results[args.url] = asyncio.run(measure(args.url.rstrip("/"), args.rounds))
    else:
        for label, fair in (("arrival order (before)", False), ("in turn per learner", True)):
            with private_runtime(fair) as url:
                results[label] = asyncio.run(measure(url, args.rounds))
    print(
        f"{len(LIGHT)} light learners, one small chat each ({LIGHT_TOKENS} tokens) x "
        f"{args.rounds} rounds; beside: one heavy learner with {HEAVY_STREAMS} streams of "
        f"{HEAVY_TOKENS}-token answers"
    )
    print(f"{'light latency (s)':<30}{'p50':>8}{'p50':>9}{'':>9}{'p90':>9}{'p90':>9}{'heavy':>10}")
    print(f"{'':<30}{'alone':>8}{'beside':>9}{'ratio':>9}{'alone':>9}{'beside':>9}{'tok/s':>10}")
    for label, figures in results.items():
        print(row(label, figures))
    print("goal: light p50 beside the heavy learner within 2x of alone")


if __name__ == "__main__":
    main()
