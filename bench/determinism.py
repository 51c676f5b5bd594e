"""Benchmark determinism: does a seeded temperature-0 request always get the same reply?

Run: .venv/bin/python bench/determinism.py [--repeats 20] [--rounds 8] [--compare]
It starts a runtime of its own in a private folder (a runtime you have running is never
touched) and stops it at the end. With --compare it starts two, one with llama.cpp's own
choices (LABKIT_DETERMINISTIC=0: flash attention as llama.cpp picks it, prompts reused from its
cache; how the kit ran before) and one with the kit's (no flash attention, no prompt reuse),
and measures both the same way.

For each case (a short chat, a JSON-schema request, a 40-line prompt), on both dialects
(/api/chat and /v1/chat/completions), streamed and not, one request is sent alone, then
--repeats times while 8 other chats run (varied prompts and lengths, one with a schema, some
sharing the case's opening so the prompt cache has something to offer; the twelve measured
requests of a round also run side by side). It prints how many distinct replies each got:
1 is the goal. Then the throughput of 4 concurrent chats: generated tokens per second of wall
clock, and per CPU-second of the runtime process, which a busy machine disturbs far less.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from labkit import runtime

SEED = 42
SYSTEM = "You are a concise assistant for an HR department. Answer in plain English."

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["pay", "leave", "travel", "other"]},
        "reason": {"type": "string"},
        "confidence": {"type": "number"},
    },
    "required": ["label", "reason", "confidence"],
}

ACTIONS = ["started job", "read 120 rows", "retried a call", "wrote report", "slept"]
LONG_PROMPT = "Summarise the following log in two sentences.\n" + "\n".join(
    f"{9 + n // 6:02d}:{(n * 7) % 60:02d} worker-{n % 5} {ACTIONS[n % 5]} {n * 13 % 97}"
    for n in range(39)
)


def chat(
    *messages: tuple[str, str], tokens: int, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One request's content: messages as (role, text), a token limit, maybe a schema."""
    case: dict[str, Any] = {
        "messages": [{"role": role, "content": text} for role, text in messages],
        "max_tokens": tokens,
    }
    if schema is not None:
        case["schema"] = schema
    return case


CASES = {
    "short chat": chat(
        ("system", SYSTEM), ("user", "How many days of annual leave is usual?"), tokens=48
    ),
    "JSON schema": chat(
        ("system", SYSTEM),
        ("user", "Classify: 'Flight to Berlin booked for the sales fair, hotel two nights.'"),
        tokens=64,
        schema=SCHEMA,
    ),
    "40-line prompt": chat(("user", LONG_PROMPT), tokens=64),
}

# What runs beside: varied lengths, a schema, and openings shared with the cases above.
BACKGROUND = [
    chat(("user", "Tell me a story about a lighthouse."), tokens=96),
    chat(("system", SYSTEM), ("user", "How many days of sick leave is usual?"), tokens=40),
    chat(
        ("system", SYSTEM),
        ("user", "Classify: 'Salary paid on the 25th.'"),
        tokens=64,
        schema=SCHEMA,
    ),
    chat(("user", LONG_PROMPT[:600] + "\nWhat time does the log start?"), tokens=24),
    chat(("user", "List ten fruits."), tokens=64),
    chat(("user", "Hi"), tokens=8),
    chat(("user", "Explain recursion. " * 30), tokens=48),
    chat(("user", "Write a haiku about rain."), tokens=32),
]

THROUGHPUT = {
    "short prompts": [
        chat(("user", "Write a short paragraph about the history of bicycles."), tokens=128),
        chat(("user", "Describe a busy market in the morning."), tokens=128),
        chat(("user", "Explain how a refrigerator keeps food cold."), tokens=128),
        chat(("user", "Tell a short story about a cat who learns to swim."), tokens=128),
    ],
    "600-token prompts": [
        chat(("user", LONG_PROMPT + f"\nWhich worker appears most? ({n})"), tokens=128)
        for n in range(4)
    ],
}

SETTINGS = {"0": "llama.cpp's choices (before)", "1": "deterministic (now)"}


def body_for(
    case: dict[str, Any], dialect: str, stream: bool, seeded: bool = True
) -> dict[str, Any]:
    """The request of one case in one dialect: temperature 0 and a seed if ``seeded``."""
    body: dict[str, Any] = {
        "model": runtime.CHAT_MODEL,
        "messages": case["messages"],
        "stream": stream,
    }
    sampling = {"temperature": 0, "seed": SEED} if seeded else {}
    if dialect == "ollama":
        body["options"] = {**sampling, "num_predict": case["max_tokens"]}
        if "schema" in case:
            body["format"] = case["schema"]
    else:
        body |= {**sampling, "max_tokens": case["max_tokens"]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if "schema" in case:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"schema": case["schema"]},
            }
    return body


def ask(url: str, body: dict[str, Any], dialect: str) -> tuple[str, int]:
    """Send one chat; returns (the reply's text, tokens generated)."""
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    with requests.post(url + path, json=body, stream=body["stream"], timeout=900) as answer:
        answer.raise_for_status()
        if body["stream"]:
            return _streamed(answer, dialect)
        whole = answer.json()
        if dialect == "ollama":
            return whole["message"]["content"], int(whole["eval_count"])
        return whole["choices"][0]["message"]["content"], int(whole["usage"]["completion_tokens"])


def _streamed(answer: requests.Response, dialect: str) -> tuple[str, int]:
    """Put a streamed reply together from its NDJSON lines or server-sent events."""
    parts: list[str] = []
    tokens = 0
    for line in answer.iter_lines():
        if dialect == "openai":
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            line = line[6:]
        event = json.loads(line)
        if "error" in event:
            raise RuntimeError(f"the stream ended with an error: {event['error']}")
        if dialect == "ollama":
            parts.append(event.get("message", {}).get("content", ""))
            tokens = int(event.get("eval_count", tokens))
            continue
        for choice in event.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
        if event.get("usage"):
            tokens = int(event["usage"]["completion_tokens"])
    return "".join(parts), tokens


@contextlib.contextmanager
def background(url: str, width: int = 8) -> Iterator[list[int]]:
    """``width`` threads that keep other chats running while the block runs."""
    stop = threading.Event()
    done = [0]

    def loop(number: int) -> None:
        # Each thread walks the list from its own place; dialect, streaming and sampling vary.
        jobs = itertools.cycle(BACKGROUND[number:] + BACKGROUND[:number])
        for turn in itertools.count():
            if stop.is_set():
                return
            dialect = "ollama" if (turn + number) % 2 else "openai"
            body = body_for(next(jobs), dialect, (turn + number) % 3 == 0, seeded=bool(turn % 2))
            ask(url, body, dialect)
            done[0] += 1

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(width)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let every slot fill before the measured requests go in
    try:
        yield done
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=900)


Combo = tuple[str, str, bool]


def distinct_replies(url: str, repeats: int) -> dict[Combo, list[str]]:
    """Every case alone once, then ``repeats`` times amid other chats: its replies."""
    combos = [
        (name, dialect, stream)
        for name in CASES
        for dialect in ("ollama", "openai")
        for stream in (False, True)
    ]

    def send(combo: Combo) -> str:
        name, dialect, stream = combo
        return ask(url, body_for(CASES[name], dialect, stream), dialect)[0]

    replies = {combo: [send(combo)] for combo in combos}  # alone: one at a time
    with background(url) as done, ThreadPoolExecutor(len(combos)) as pool:
        for round_ in range(repeats):
            for combo, text in zip(combos, pool.map(send, combos), strict=True):
                replies[combo].append(text)
            print(f"  round {round_ + 1}/{repeats} ({done[0]} other chats so far)", flush=True)
    return replies


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_round(
    record: runtime.RuntimeRecord, cases: list[dict[str, Any]]
) -> tuple[float, float]:
    """Four chats at once: (tokens per wall-clock second, tokens per CPU-second of the runtime)."""
    cpu, started = cpu_seconds(record.pid), time.perf_counter()
    with ThreadPoolExecutor(len(cases)) as pool:
        tokens = sum(
            t
            for _, t in pool.map(
                lambda c: ask(record.url, body_for(c, "ollama", False), "ollama"), cases
            )
        )
    wall = time.perf_counter() - started
    return tokens / wall, tokens / (cpu_seconds(record.pid) - cpu)


def start(home: str, setting: str) -> runtime.RuntimeRecord:
    """A private runtime with LABKIT_DETERMINISTIC set to ``setting``."""
    before = os.environ.get("LABKIT_DETERMINISTIC")
    os.environ["LABKIT_DETERMINISTIC"] = setting  # the runtime process inherits it
    try:
        return runtime.up(runtime.free_port(), state_dir=Path(home), say=False)
    finally:
        if before is None:
            del os.environ["LABKIT_DETERMINISTIC"]
        else:
            os.environ["LABKIT_DETERMINISTIC"] = before


def report(records: dict[str, runtime.RuntimeRecord], repeats: int, rounds: int) -> None:
    """Measure every runtime and print the figures side by side."""
    for record in records.values():
        ask(record.url, body_for(CASES["short chat"], "ollama", False), "ollama")  # warm-up
    speeds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    print(f"throughput, 4 concurrent chats of 128 tokens, {rounds} rounds...", flush=True)
    for round_ in range(rounds):
        # Alternate the order, so that a busy moment of the machine hits both alike.
        order = list(records) if round_ % 2 == 0 else list(reversed(records))
        for setting in order:
            for kind, cases in THROUGHPUT.items():
                speeds.setdefault((setting, kind), []).append(
                    throughput_round(records[setting], cases)
                )
    replies = {}
    for setting, record in records.items():
        print(f"distinct replies, {SETTINGS[setting]}: alone, then {repeats} rounds...", flush=True)
        replies[setting] = distinct_replies(record.url, repeats)

    print()
    print(f"distinct replies of one request sent alone, then {repeats} times amid 8 other chats")
    head = "".join(f"{SETTINGS[s]:>30}" for s in records)
    print(f"{'case':<16}{'dialect':<8}{'stream':<7}{head}")
    first = next(iter(replies.values()))
    for combo in first:
        name, dialect, stream = combo
        cells = ""
        for setting in records:
            texts = replies[setting][combo]
            same = sum(text == texts[0] for text in texts[1:])
            cells += f"{len(set(texts)):>14} ({same:>2}/{repeats} as alone)"
        print(f"{name:<16}{dialect:<8}{'yes' if stream else 'no':<7}{cells}")
    print()
    print(f"throughput of 4 concurrent chats, median of {rounds} rounds")
    print(f"{'':<20}{'':<30}{'tokens/s':>10}{'tokens/CPU-s':>14}")
    for kind in THROUGHPUT:
        for setting in records:
            figures = speeds[(setting, kind)]
            wall = statistics.median(f[0] for f in figures)
            cpu = statistics.median(f[1] for f in figures)
            print(f"{kind:<20}{SETTINGS[setting]:<30}{wall:>10.1f}{cpu:>14.1f}")
    if len(records) == 2:
        for kind in THROUGHPUT:
            (before, now) = [speeds[(s, kind)] for s in records]
            change = [
                statistics.median(f[i] for f in now) / statistics.median(f[i] for f in before) - 1
                for i in (0, 1)
            ]
            print(f"{kind}: now {change[0]:+.0%} tokens/s, {change[1]:+.0%} tokens/CPU-s")


def main() -> None:
    """Start the runtime(s), measure, print, stop."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8, help="throughput rounds")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also measure llama.cpp's own choices (how the kit ran before)",
    )
    args = parser.parse_args()
    settings = ["0", "1"] if args.compare else ["1"]
    with contextlib.ExitStack() as stack:
        records = {}
        for setting in settings:
            home = stack.enter_context(tempfile.TemporaryDirectory())
            records[setting] = start(home, setting)
            stack.callback(runtime.down, state_dir=Path(home), say=False)
        report(records, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
