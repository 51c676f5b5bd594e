"""What does the Ollama dialect cost? The same chats, through it and straight to llama.cpp.

Run: .venv/bin/python bench/ollama_dialect.py [--pairs 16] [--tokens 48] [--quick-pairs 60]
Uses the embedded runtime that runs under $LABKIT_HOME (or starts one, and stops it after).
Each pair sends one prompt both ways, streaming: to the dialect's /api/chat and to llama.cpp's
own /v1/chat/completions, with the same sampling settings. Every pair has its own numbered
prompt, so no pair reuses an earlier one's prompt cache; inside a pair the second request
reuses the first's, and the order alternates so both ways get that equally often.

On a shared CPU, llama.cpp's own speed changes from one request to the next, so each
request is also compared with llama.cpp's account of that same request (its "timings"):
- wait before the first token = client's time to first token - llama.cpp's prompt time;
  the dialect's added latency is the paired difference of these waits, measured on extra
  2-token pairs that repeat one cached prompt, so little else varies (goal: p50 <= 5 ms);
- decode efficiency = the client's decode rate / llama.cpp's own rate for the request;
  the dialect's is compared with the direct path's (goal: >= 0.95 times);
- streaming: the client sees text from first to last piece over (nearly) the whole of
  llama.cpp's decode time; a server that buffered would deliver it all at once (goal:
  p50 of spread / decode time >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from labkit import runtime
from labkit.runtime.checks import OLLAMA_DEFAULTS

PROMPTS = (
    "Name three colours and say one thing about each.",
    "Explain what a kettle does, in two sentences.",
    "Write a short poem about rain on a window.",
    "Give three tips for keeping a plant alive.",
)


@dataclass
class Timing:
    """One streamed request, seen from the client and reported by llama.cpp."""

    first: float  # seconds from sending to the first text
    last: float  # seconds from sending to the last text
    tokens: int  # tokens generated, as llama.cpp counted them
    prompt_s: float  # llama.cpp's prompt processing time
    decode_s: float  # llama.cpp's decode time (first token to last)

    @property
    def wait(self) -> float:
        """Time to first token not spent by llama.cpp on the prompt: HTTP and translation."""
        return self.first - self.prompt_s

    @property
    def spread(self) -> float:
        """Time between the first and the last piece of text."""
        return self.last - self.first

    @property
    def rate(self) -> float:
        """Decode rate seen by the client: tokens after the first, over the spread."""
        return (self.tokens - 1) / self.spread if self.spread > 0 else float("nan")

    @property
    def server_rate(self) -> float:
        """llama.cpp's own decode rate for this request."""
        return self.tokens / self.decode_s

    @property
    def efficiency(self) -> float:
        """How much of llama.cpp's decode rate reached the client."""
        return self.rate / self.server_rate


def _lines(response: requests.Response) -> Iterator[bytes]:
    # chunk_size=None: hand over each HTTP chunk as it arrives (no read-ahead buffering).
    yield from response.iter_lines(chunk_size=None)


def via_dialect(url: str, prompt: str, tokens: int) -> Timing:
    """Stream one chat through the Ollama dialect."""
    options = {"temperature": 0, "seed": 42, "num_predict": tokens}
    body = {"model": runtime.CHAT_MODEL, "messages": [{"role": "user", "content": prompt}]}
    body["options"] = options
    sent = time.perf_counter()
    first = last = 0.0
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=300) as response:
        response.raise_for_status()
        for line in _lines(response):
            chunk = json.loads(line)
            if chunk.get("message", {}).get("content"):
                last = time.perf_counter() - sent
                first = first or last
            if chunk["done"]:
                prompt_s = chunk["prompt_eval_duration"] / 1e9
                decode_s = chunk["eval_duration"] / 1e9
                return Timing(first, last, chunk["eval_count"], prompt_s, decode_s)
    raise RuntimeError("the dialect's stream ended without its closing object")


def direct(llama_url: str, prompt: str, tokens: int, headers: dict[str, str]) -> Timing:
    """Stream the same chat from llama.cpp itself, with the settings the dialect sends."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        **OLLAMA_DEFAULTS,
        "temperature": 0,
        "seed": 42,
        "n_predict": tokens,
    }
    sent = time.perf_counter()
    first = last = 0.0
    with requests.post(
        llama_url + "/v1/chat/completions", json=body, headers=headers, stream=True, timeout=300
    ) as response:
        response.raise_for_status()
        for line in _lines(response):
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            choice = event["choices"][0] if event.get("choices") else {}
            if (choice.get("delta") or {}).get("content"):
                last = time.perf_counter() - sent
                first = first or last
            if timings := event.get("timings"):
                prompt_s, decode_s = timings["prompt_ms"] / 1e3, timings["predicted_ms"] / 1e3
                return Timing(first, last, timings["predicted_n"], prompt_s, decode_s)
    raise RuntimeError("llama.cpp's stream ended without its timings")


def p50(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def run_pairs(
    record: runtime.RuntimeRecord, count: int, tokens: int, first_number: int, fixed: str = ""
) -> tuple[list[Timing], list[Timing]]:
    """Send ``count`` prompts (or ``fixed`` every time) both ways, alternating the order."""
    dialect: list[Timing] = []
    plain: list[Timing] = []
    for n in range(first_number, first_number + count):
        prompt = fixed or f"Request {n}. {PROMPTS[n % len(PROMPTS)]}"
        if n % 2:  # a busy moment on the machine then hits both ways alike
            dialect.append(via_dialect(record.url, prompt, tokens))
            plain.append(direct(record.llama_url, prompt, tokens, record.llama_headers))
        else:
            plain.append(direct(record.llama_url, prompt, tokens, record.llama_headers))
            dialect.append(via_dialect(record.url, prompt, tokens))
    return dialect, plain


def main() -> None:
    """Alternate the two paths, then print the table and the verdicts."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=16, help="pairs of whole answers")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per whole answer")
    parser.add_argument(
        "--quick-pairs", type=int, default=60, help="2-token pairs for time to first token"
    )
    args = parser.parse_args()

    record = runtime.read_record()
    started_here = record is None
    if record is None:
        record = runtime.up(runtime.free_port())
    try:
        print(f"Dialect {record.url}/api/chat vs llama.cpp {record.llama_url}/v1/chat/completions")
        print(f"{args.pairs} pairs of {args.tokens}-token answers, then {args.quick_pairs} pairs")
        print("of 2-token answers to one cached prompt. Shared CPU: timings are noisy.\n")
        run_pairs(record, 2, 8, first_number=0)  # warm-up, not counted
        dialect, plain = run_pairs(record, args.pairs, args.tokens, first_number=2)
        # One prompt over and over: llama.cpp reuses it from its cache, so the prompt costs
        # almost nothing and what remains of the time to first token is the way there.
        quick = run_pairs(record, args.quick_pairs, 2, 2 + args.pairs, fixed=PROMPTS[0])
        report(dialect, plain, quick)
    finally:
        if started_here:
            runtime.down()


def report(
    dialect: list[Timing], plain: list[Timing], quick: tuple[list[Timing], list[Timing]]
) -> None:
    """Print the side-by-side table and the three verdicts."""
    pairs = list(zip(dialect, plain, strict=True))
    rows = [
        ("time to first token (ms)", lambda t: t.first * 1e3),
        ("  of which llama.cpp's prompt (ms)", lambda t: t.prompt_s * 1e3),
        ("  the rest: HTTP, translation (ms)", lambda t: t.wait * 1e3),
        ("decode tokens/s, client", lambda t: t.rate),
        ("decode tokens/s, llama.cpp", lambda t: t.server_rate),
        ("decode efficiency", lambda t: t.efficiency),
        ("first to last text (ms)", lambda t: t.spread * 1e3),
        ("spread / llama.cpp decode time", lambda t: t.spread / t.decode_s),
        ("tokens per answer", lambda t: float(t.tokens)),
    ]
    print(f"{'p50 of ' + str(len(pairs)) + ' requests each':36} {'dialect':>10} {'llama.cpp':>10}")
    for name, measure in rows:
        ours = p50([measure(t) for t in dialect])
        theirs = p50([measure(t) for t in plain])
        print(f"{name:36} {ours:10.3f} {theirs:10.3f}")

    quick_pairs = list(zip(*quick, strict=True))
    added = [(d.wait - p.wait) * 1e3 for d, p in quick_pairs]
    efficiency = p50([d.efficiency for d in dialect]) / p50([p.efficiency for p in plain])
    raw_ratio = p50([d.rate / p.rate for d, p in pairs])
    streaming = [d.spread / d.decode_s for d in dialect]
    print(f"\nadded wait before the first token, {len(added)} cached-prompt pairs: ", end="")
    tenths = statistics.quantiles(added, n=10)
    print(f"p50 {p50(added):+.2f} ms (p10 {tenths[0]:+.2f}, p90 {tenths[-1]:+.2f})")
    raw_added = [(d.first - p.first) * 1e3 for d, p in quick_pairs]
    print(f"added time to first token, not corrected for prompt time: p50 {p50(raw_added):+.2f} ms")
    print(f"decode efficiency, dialect / direct: {efficiency:.3f} times", end="")
    print(f" (raw decode rates, paired p50: {raw_ratio:.3f} times; CPU noise included)")
    least_direct = min(t.spread / t.decode_s for t in plain)
    print(f"spread / decode time of dialect requests: p50 {p50(streaming):.3f}", end="")
    print(f", least {min(streaming):.3f} (direct: least {least_direct:.3f})")
    print("\nGoals:")
    verdicts = (
        ("added time to first token <= 5 ms (p50)", p50(added) <= 5.0),
        ("decode rate >= 0.95 times llama.cpp's", efficiency >= 0.95),
        ("true streaming (spread >= 0.9 of decode)", p50(streaming) >= 0.9),
    )
    for goal, met in verdicts:
        print(f"  {goal:42} {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
