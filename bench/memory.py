"""Benchmark memory: the runtime's RSS under rounds of the costliest requests it accepts.

Run: .venv/bin/python bench/memory.py [--rounds 3]
Uses the running embedded runtime (``labkit up``; ``LABKIT_HOME`` picks another). Each round
sends, four at a time: full contexts (a different ~1,800-token prompt each, which fills the
prompt cache), 20 alternatives per token for 4 choices (streamed and collected), the longest
prompt the front lets through, the largest embedding inputs, and the largest schema. Prints
the RSS before and after each round; the README's "at most about N MB" must stay above it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from labkit import runtime
from labkit.runtime import fields, guard

CHAT, EMBED = runtime.CHAT_MODEL, runtime.EMBED_MODEL
HELLO = [{"role": "user", "content": "Count from one to fifty in words."}]


def rss_mb(pid: int) -> float:
    """The resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def costliest(round_number: int) -> list[tuple[str, dict[str, Any]]]:
    """(path, body) of each costliest accepted request, prompts different every round."""

    def words(count: int, seed: str) -> str:
        return " ".join(hashlib.sha1(f"{seed}-{n}".encode()).hexdigest()[:5] for n in range(count))

    values = [hashlib.sha1(str(n).encode()).hexdigest()[:20] for n in range(256)]
    schema = {"type": "object", "properties": {"v": {"type": "string", "enum": values}}}
    assert len(json.dumps(schema)) <= guard.MAX_SCHEMA_BYTES
    most = {"n_probs": fields.MAX_ALTERNATIVES, "post_sampling_probs": True}
    requests_: list[tuple[str, dict[str, Any]]] = [
        (
            "/api/generate",
            {
                "model": CHAT,
                "prompt": words(340, f"{round_number}-{slot}"),
                "raw": True,
                "stream": False,
                "options": {"num_predict": 8},
            },
        )
        for slot in range(4)
    ]
    requests_ += [
        (
            "/v1/chat/completions",
            {
                "model": CHAT,
                "messages": HELLO,
                "logprobs": True,
                "top_logprobs": fields.MAX_ALTERNATIVES,
                "n": fields.MAX_CHOICES,
                "max_tokens": 64,
            },
        ),
        (
            "/v1/completions",
            {"model": CHAT, "prompt": ["a", "b", "c", "d"], "max_tokens": 64, "stream": True}
            | most,
        ),
        ("/v1/completions", {"model": CHAT, "prompt": "word " * 13_000, "max_tokens": 1}),
        (
            "/v1/embeddings",
            {"model": EMBED, "input": [[1000 + n + k for n in range(510)] for k in range(16)]},
        ),
        ("/api/chat", {"model": CHAT, "messages": HELLO, "format": schema, "stream": False}),
    ]
    return requests_


def main() -> None:
    """Send the rounds and print the RSS after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    record = runtime.read_record()
    if record is None:
        raise SystemExit("No runtime is running here: start one with `labkit up`.")
    print(f"runtime pid {record.pid}: {rss_mb(record.pid):.0f} MB before")
    for number in range(args.rounds):
        started = time.perf_counter()

        def send(item: tuple[str, dict[str, Any]]) -> int:
            path, body = item
            return requests.post(record.url + path, json=body, timeout=1800).status_code

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(send, costliest(number)))
        took = time.perf_counter() - started
        print(
            f"round {number + 1}: statuses {statuses}, {took:.0f} s, "
            f"RSS {rss_mb(record.pid):.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
