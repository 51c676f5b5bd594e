"""Benchmark the embedded runtime: cold start, time to first token, decode speed.

Run: .venv/bin/python bench/runtime.py [--runs 5]
Each run starts a fresh runtime in a private folder, so it never touches one you have running.
Prints medians, so later changes can be compared with earlier ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from labkit import runtime

PROMPT = "Write three sentences about the sea."


def stream_once(url: str, max_tokens: int = 96) -> tuple[float, float, int]:
    """One streamed chat: (time to first token, decode tokens/s by the server, tokens)."""
    body = {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "options": {"temperature": 0, "seed": 42, "num_predict": max_tokens},
    }
    start = time.perf_counter()
    first = None
    final: dict[str, int] = {}
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            chunk = json.loads(line)
            if first is None and chunk.get("message", {}).get("content"):
                first = time.perf_counter() - start
            if chunk.get("done"):
                final = chunk
    tokens = final["eval_count"]
    return first or float("nan"), tokens / (final["eval_duration"] / 1e9), tokens


def main() -> None:
    """Start the runtime several times and print median figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    starts, firsts, speeds = [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as home:
            t0 = time.perf_counter()
            record = runtime.up(runtime.free_port(), state_dir=Path(home), say=False)
            starts.append(time.perf_counter() - t0)
            try:
                stream_once(record.url, 8)  # warm-up: the first request pays for loading
                for _ in range(3):
                    first, speed, _tokens = stream_once(record.url)
                    firsts.append(first)
                    speeds.append(speed)
            finally:
                runtime.down(state_dir=Path(home), say=False)
        print(f"run {run + 1}/{args.runs}: cold start {starts[-1]:.2f} s", flush=True)
    print()
    print(f"{'figure':<32}{'median':>10}{'min':>10}{'max':>10}")
    for name, values in [
        ("cold start to healthy (s)", starts),
        ("time to first token (ms)", [v * 1000 for v in firsts]),
        ("decode speed (tokens/s)", speeds),
    ]:
        print(
            f"{name:<32}{statistics.median(values):>10.2f}{min(values):>10.2f}{max(values):>10.2f}"
        )


if __name__ == "__main__":
    main()
