"""Benchmark fairness: a plain chat alone, and beside the costliest requests the runtime accepts.

Run: .venv/bin/python bench/fairness.py [--runs 15]
Uses the running embedded runtime (``labkit up``). Beside the plain chat run, over and over,
the worst-case schema the runtime accepts (an enum of as many random values as it allows, in
as many bytes) and a 1,000-input /api/embed. Prints p50 and p90 of the plain chat's latency
both ways, side by side; the goal is p50 beside at most twice p50 alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import threading
import time
from typing import Any

import requests

from labkit import runtime
from labkit.runtime import guard

PLAIN = {
    "model": runtime.CHAT_MODEL,
    "messages": [{"role": "user", "content": "Say hello to Ada in one sentence."}],
    "stream": False,
    "options": {"temperature": 0, "seed": 1, "num_predict": 24},
}


def worst_schema() -> dict[str, Any]:
    """An enum of the most random values the limits allow (no shared prefixes to merge)."""
    count = guard.MAX_SCHEMA_CHOICES
    overhead = len(json.dumps({"type": "object", "properties": {"v": {"enum": []}}}))
    width = max(4, (guard.MAX_SCHEMA_BYTES - overhead) // count - 4)  # '"…", ' per value
    values = [hashlib.sha256(str(n).encode()).hexdigest()[:width] for n in range(count)]
    schema = {"type": "object", "properties": {"v": {"type": "string", "enum": values}}}
    assert len(json.dumps(schema)) <= guard.MAX_SCHEMA_BYTES
    return schema


def timed_chat(url: str) -> float:
    """Seconds for one plain, non-streamed chat."""
    started = time.perf_counter()
    answer = requests.post(url + "/api/chat", json=PLAIN, timeout=300)
    answer.raise_for_status()
    return time.perf_counter() - started


def pressure(
    url: str, stop: threading.Event, counts: dict[str, int], which: set[str]
) -> list[threading.Thread]:
    """Threads that keep a worst-case schema chat and a 1,000-input embed running."""
    heavy = {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": "Pick one value."}],
        "format": worst_schema(),
        "stream": False,
        "options": {"temperature": 0, "seed": 1, "num_predict": 64},
    }
    texts = [
        f"Document {n}: the leave policy grants days off for many reasons." for n in range(1000)
    ]
    embed = {"model": runtime.EMBED_MODEL, "input": texts}

    def loop(path: str, body: dict[str, Any], name: str) -> None:
        while not stop.is_set():
            answer = requests.post(url + path, json=body, timeout=600)
            answer.raise_for_status()
            counts[name] += 1

    jobs = {"schema": ("/api/chat", heavy), "embed": ("/api/embed", embed)}
    return [
        threading.Thread(target=loop, args=(*jobs[name], name), daemon=True)
        for name in sorted(which)
    ]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    """Measure the plain chat alone, then beside the pressure, and print both."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--beside",
        default="schema,embed",
        help="what runs beside the plain chat: schema, embed or both (default)",
    )
    args = parser.parse_args()
    record = runtime.read_record()
    if record is None:
        raise SystemExit("Start the runtime first: labkit up")
    url = record.url
    timed_chat(url)  # warm the prompt cache, as the measured runs will find it
    alone = [timed_chat(url) for _ in range(args.runs)]

    stop = threading.Event()
    counts = {"schema": 0, "embed": 0}
    threads = pressure(url, stop, counts, set(args.beside.split(",")))
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # let both heavy requests get going
    beside = [timed_chat(url) for _ in range(args.runs)]
    stop.set()
    for thread in threads:
        thread.join(timeout=600)

    p50_alone, p50_beside = statistics.median(alone), statistics.median(beside)
    print(f"plain chat ({PLAIN['options']['num_predict']} tokens), {args.runs} runs each")
    print(f"{'':28}{'alone':>10}{'beside':>10}")
    print(f"{'p50 latency (s)':28}{p50_alone:>10.2f}{p50_beside:>10.2f}")
    print(f"{'p90 latency (s)':28}{percentile(alone, 0.9):>10.2f}{percentile(beside, 0.9):>10.2f}")
    print(f"{'beside / alone (p50)':28}{'':>10}{p50_beside / p50_alone:>10.2f}  (goal <= 2.00)")
    print(
        f"beside: worst-case schema ({guard.MAX_SCHEMA_CHOICES} choices, "
        f"{len(json.dumps(worst_schema()))} bytes) finished {counts['schema']} times, "
        f"1,000-input embed {counts['embed']} times"
    )


if __name__ == "__main__":
    main()
