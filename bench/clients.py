"""Benchmark labkit's client: does it cost anything over plain ``requests``? Does batching pay?

Run: .venv/bin/python bench/clients.py [--rounds 12] [--tokens 64] [--texts 64]

1. Streaming, in both dialects: the same request through ``Client.stream`` and through a
   hand-written ``requests`` loop, taking turns (the order swaps every round). Compared: decode
   speed seen by the caller (pieces per second after the first), time to the first piece, and
   the caller's CPU time per piece (what parsing costs; barely moved by other programs).
   Goals: labkit's decode speed at least 0.97x raw; first-piece overhead at most 2 ms.
2. The client's own ceiling: a real answer's stream lines, recorded and repeated to 3,000+
   pieces, replayed by a local server as fast as the socket goes. No model in the way, so
   this shows what parsing costs per piece, free of the noise of a busy CPU.
3. Embeddings: the same texts in batches of 32 vs one request per text. Goal: batched at
   least 10x faster.

The runtime is the one labkit finds (``LABKIT_BASE_URL`` to choose). Wall-clock figures are
medians over rounds and still move with whatever else the CPU is doing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import requests

from labkit import Client, discovery

PROMPT = "Write a short story about a lighthouse keeper."
SEED = 42


@dataclass
class Run:
    """One streamed answer as the caller saw it."""

    first: float  # seconds to the first non-empty piece
    speed: float  # pieces per second after the first
    pieces: int
    cpu: float  # CPU seconds this thread spent reading and parsing


def request_body(model: str, dialect: str, tokens: int) -> dict[str, Any]:
    """The streamed chat request both contenders send."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if dialect == "ollama":
        body["options"] = {"temperature": 0, "seed": SEED, "num_predict": tokens}
    else:
        body |= {"temperature": 0, "seed": SEED, "max_tokens": tokens}
        body["stream_options"] = {"include_usage": True}
    body["messages"] = [{"role": "user", "content": PROMPT}]
    return body


def raw_pieces(
    session: requests.Session, url: str, dialect: str, body: dict[str, Any]
) -> Iterator[str]:
    """What a person writes without labkit: post, iter_lines, parse each line."""
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    with session.post(url + path, json=body, stream=True, timeout=(30, 120)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if dialect == "ollama":
                chunk = json.loads(line)
                yield chunk.get("message", {}).get("content", "")
                if chunk.get("done"):
                    return
            elif line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                for choice in json.loads(payload).get("choices", []):
                    yield (choice.get("delta") or {}).get("content") or ""


def timed(pieces: Iterator[str]) -> Run:
    """Consume a stream, noting when each piece arrives and the CPU time it took."""
    cpu, start = time.thread_time(), time.perf_counter()
    arrivals = [time.perf_counter() - start for piece in pieces if piece]
    cpu = time.thread_time() - cpu
    first, last = arrivals[0], arrivals[-1]
    speed = (len(arrivals) - 1) / (last - first) if last > first else float("nan")
    return Run(first, speed, len(arrivals), cpu)


def bench_stream(url: str, model: str, dialect: str, rounds: int, tokens: int) -> dict[str, float]:
    """Alternate labkit and raw streaming of the same request; medians."""
    client = Client(url, dialect=dialect, model=model)
    session = requests.Session()
    session.trust_env = False  # as labkit's client does for loopback addresses
    body = request_body(model, dialect, tokens)

    def ours() -> Iterator[str]:
        return client.stream(PROMPT, temperature=0, seed=SEED, max_tokens=tokens)

    def theirs() -> Iterator[str]:
        return raw_pieces(session, url, dialect, body)

    contenders: list[tuple[str, Callable[[], Iterator[str]]]] = [("labkit", ours), ("raw", theirs)]
    runs: dict[str, list[Run]] = {"labkit": [], "raw": []}
    for _ in range(2):  # warm-up: model loading, prompt cache, connections
        for _, make in contenders:
            timed(make())
    for r in range(rounds):
        for name, make in contenders if r % 2 == 0 else contenders[::-1]:
            runs[name].append(timed(make()))
    client.close()
    session.close()
    ours_runs, raw_runs = runs["labkit"], runs["raw"]
    paired = [a.first - b.first for a, b in zip(ours_runs, raw_runs, strict=True)]
    result = {
        "labkit_tps": statistics.median(run.speed for run in ours_runs),
        "raw_tps": statistics.median(run.speed for run in raw_runs),
        "labkit_first_ms": 1000 * statistics.median(run.first for run in ours_runs),
        "raw_first_ms": 1000 * statistics.median(run.first for run in raw_runs),
        "first_overhead_ms": 1000 * statistics.median(paired),
        "labkit_cpu_us": 1e6 * statistics.median(run.cpu / run.pieces for run in ours_runs),
        "raw_cpu_us": 1e6 * statistics.median(run.cpu / run.pieces for run in raw_runs),
        "pieces": statistics.median(run.pieces for run in ours_runs + raw_runs),
    }
    result["tps_ratio"] = result["labkit_tps"] / result["raw_tps"]
    return result


class Replay(BaseHTTPRequestHandler):
    """Answers every POST with the same recorded stream, one chunk per line, at full speed."""

    protocol_version = "HTTP/1.1"
    lines: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")  # one answer per connection, then done
        self.end_headers()
        self.close_connection = True
        for line in self.lines:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def record(rt: discovery.Runtime, dialect: str, tokens: int, repeat: int) -> list[bytes]:
    """One real streamed answer's lines, its text-carrying lines repeated ``repeat`` times."""
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    body = request_body(rt.chat_model, dialect, tokens)
    with requests.post(rt.url + path, json=body, stream=True, timeout=120) as response:
        lines = [line + b"\n" for line in response.iter_lines() if line]
    sep = b"\n" if dialect == "openai" else b""  # SSE events end with a blank line
    lines = [line + sep for line in lines]
    text = [i for i, line in enumerate(lines) if carries_text(line, dialect)]
    head, middle, tail = lines[: text[0]], lines[text[0] : text[-1] + 1], lines[text[-1] + 1 :]
    return head + middle * repeat + tail


def carries_text(line: bytes, dialect: str) -> bool:
    """True for a stream line with a piece of the answer (not a start, end or usage line)."""
    if dialect == "openai":
        if not line.startswith(b"data: {"):
            return False
        choices = json.loads(line[6:]).get("choices") or [{}]
        return bool((choices[0].get("delta") or {}).get("content"))
    chunk = json.loads(line)
    return not chunk.get("done") and bool(chunk.get("message", {}).get("content"))


def bench_ceiling(rt: discovery.Runtime, dialect: str, rounds: int) -> dict[str, float]:
    """Labkit vs raw on a replayed stream: how fast can each consume pieces?"""
    Replay.lines = record(rt, dialect, 64, repeat=50)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        return bench_stream(url, rt.chat_model, dialect, rounds, 64)
    finally:
        server.shutdown()
        server.server_close()


def bench_embed(rt: discovery.Runtime, dialect: str, count: int, rounds: int) -> dict[str, float]:
    """The same texts batched (32 per request) vs one per request, alternating."""
    client = Client(rt.url, dialect=dialect, embed_model=rt.embed_model)
    texts = [
        f"Sentence number {i} is about topic {i % 7} and colour {i % 5}." for i in range(count)
    ]
    client.embed(texts[:4])  # warm-up
    times: dict[int, list[float]] = {32: [], 1: []}
    for r in range(rounds):
        for size in (32, 1) if r % 2 == 0 else (1, 32):
            start = time.perf_counter()
            client.embed(texts, batch_size=size)
            times[size].append(time.perf_counter() - start)
    client.close()
    batched, single = statistics.median(times[32]), statistics.median(times[1])
    return {"batched_s": batched, "single_s": single, "speedup": single / batched}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_ceiling(title: str, rounds: int, s: dict[str, float]) -> None:
    print(f"{title}: {rounds} rounds each, ~{s['pieces']:.0f} pieces per answer")
    print(f"  pieces/s               labkit {s['labkit_tps']:8.0f}   raw {s['raw_tps']:8.0f}")
    print(f"  client CPU/piece (us)  labkit {s['labkit_cpu_us']:8.1f}   raw {s['raw_cpu_us']:8.1f}")
    extra = 1e6 / s["labkit_tps"] - 1e6 / s["raw_tps"]
    print(f"  labkit's cost: {extra:+.2f} us per piece (a model's pieces come 5,000+ us apart)")


def report_stream(title: str, rounds: int, s: dict[str, float]) -> None:
    print(f"{title}: {rounds} rounds each, ~{s['pieces']:.0f} pieces per answer")
    print(f"  decode pieces/s        labkit {s['labkit_tps']:8.1f}   raw {s['raw_tps']:8.1f}")
    print(
        f"  first piece (ms)       labkit {s['labkit_first_ms']:8.1f}   "
        f"raw {s['raw_first_ms']:8.1f}"
    )
    print(f"  client CPU/piece (us)  labkit {s['labkit_cpu_us']:8.0f}   raw {s['raw_cpu_us']:8.0f}")
    ratio, overhead = s["tps_ratio"], s["first_overhead_ms"]
    print(f"  decode ratio labkit/raw = {ratio:.3f} (goal >= 0.97): {verdict(ratio >= 0.97)}")
    print(
        f"  first-piece overhead = {overhead:+.2f} ms, median of paired rounds "
        f"(goal <= 2 ms): {verdict(overhead <= 2.0)}"
    )


def report_embed(dialect: str, count: int, e: dict[str, float]) -> None:
    print(
        f"[{dialect}] embeddings of {count} texts: batched {1000 * e['batched_s']:.0f} ms, "
        f"one by one {1000 * e['single_s']:.0f} ms"
    )
    speedup = e["speedup"]
    print(f"  batched speedup = {speedup:.1f}x (goal >= 10x): {verdict(speedup >= 10)}")


def main() -> None:
    """Run both benchmarks in both dialects and print the ratios against the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="streamed answers per contender")
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per streamed answer")
    parser.add_argument("--texts", type=int, default=64, help="texts to embed")
    parser.add_argument("--embed-rounds", type=int, default=3, help="embedding rounds per way")
    args = parser.parse_args()
    rt = discovery.find_runtime(start=True)
    print(f"Runtime: {rt}\n")
    for dialect in ("openai", "ollama"):
        live = bench_stream(rt.url, rt.chat_model, dialect, args.rounds, args.tokens)
        report_stream(f"[{dialect}] streaming from the model", args.rounds, live)
        ceiling = bench_ceiling(rt, dialect, args.rounds)
        report_ceiling(f"[{dialect}] replayed stream, no model", args.rounds, ceiling)
        report_embed(dialect, args.texts, bench_embed(rt, dialect, args.texts, args.embed_rounds))
        print()


if __name__ == "__main__":
    main()
