"""The grader's reply cache against a scripted runtime: no kernel can turn it against another.

A real runtime will not refuse, fail or hold a request on cue, so these tests put a small
HTTP server of their own behind the cache: it records what reaches it and answers as told.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from labkit.grader import cache as cache_module
from labkit.grader.cache import MAX_CACHED_BODY, MAX_OPTIONS_BYTES, ReplyCache
from labkit.grader.network import kernel_address

DIM = 16  # the fake runtime's vector length
# Headers a kernel may send that the runtime would accept: none of them is passed on.
HOSTILE = {
    "Origin": "http://localhost:8888",
    "Referer": "http://evil.example/page",
    "Host": "localhost:1",
    "Authorization": "Bearer not-the-key",
    "Cookie": "session=evil",
    "X-Forwarded-For": "203.0.113.66",
    "User-Agent": "evil/6.6",
    "Content-Type": "text/plain",
}


class Seen:
    """One request as the fake runtime received it."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.data = json.loads(body) if body else None


Script = Callable[[Seen, int], tuple[int, Any]]  # (request, its number) -> (status, body)


def ollama_like(seen: Seen, number: int) -> tuple[int, Any]:
    """What a healthy runtime answers: a chat reply, vectors, or a model list."""
    if seen.path == "/api/embed":
        texts = seen.data["input"]
        texts = [texts] if isinstance(texts, str) else texts
        return 200, {"model": "m", "embeddings": [_vector(t) for t in texts]}
    if seen.path == "/api/tags":
        return 200, {"models": [{"name": "m"}]}
    if seen.data and seen.data.get("stream") is not False:
        lines = [{"message": {"content": "Blue"}, "done": False}, {"done": True}]
        return 200, "".join(json.dumps(line) + "\n" for line in lines).encode()
    return 200, {"message": {"role": "assistant", "content": f"reply {number}"}, "done": True}


def _vector(text: str) -> list[float]:
    return [float(len(text) + i) / 7 for i in range(DIM)]


class Upstream:
    """The fake runtime: answers by ``script``, holds requests while ``hold`` is set."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: Script = ollama_like
        self.hold = threading.Event()  # set: requests wait for release()
        self.released = threading.Event()
        self.in_flight: list[Seen] = []
        self.most_at_once: dict[str, int] = {}  # by the "kernel" field of a body
        self.lock = threading.Condition()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers), self.rfile.read(length))
                with upstream.lock:
                    upstream.seen.append(seen)
                    number = len(upstream.seen)
                    upstream.in_flight.append(seen)
                    kernel = (seen.data or {}).get("kernel") if seen.data else None
                    if isinstance(kernel, str):
                        now = sum(1 for s in upstream.in_flight if s.data.get("kernel") == kernel)
                        upstream.most_at_once[kernel] = max(
                            now, upstream.most_at_once.get(kernel, 0)
                        )
                    upstream.lock.notify_all()
                if upstream.hold.is_set():
                    upstream.released.wait(30)
                status, body = upstream.script(seen, number)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                with upstream.lock:
                    upstream.in_flight.remove(seen)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds (it should, within seconds)."""
        with self.lock:
            assert self.lock.wait_for(condition, timeout=30), "the fake runtime waited in vain"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def start(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[ReplyCache, str]]]:
    monkeypatch.delenv("LABKIT_API_KEY", raising=False)
    started: list[ReplyCache] = []

    def make(**options: Any) -> tuple[ReplyCache, str]:
        replies = ReplyCache(upstream.url, **options)
        host, port = replies.start()
        started.append(replies)
        return replies, f"{host}:{port}"

    yield make
    for replies in started:
        replies.stop()


def send(
    address: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> tuple[int, bytes]:
    """One request to the cache, from loopback address ``source`` if given (a "kernel")."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(
        host, int(port), timeout=60, source_address=(source, 0) if source else None
    )
    try:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=raw, headers=all_headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    """A seeded temperature-0 chat request (the kind the cache keeps)."""
    options = {"temperature": 0, "seed": 42, "num_predict": 8}
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": False}
    return {**body, "options": options, **extra}


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state kept by another thread) until it holds."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.01)


def test_no_header_of_a_kernel_reaches_the_runtime(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    _, address = start()
    body = chat("Name one colour.")
    status, _ = send(address, "POST", "/api/chat", json.dumps(body).encode(), HOSTILE)
    assert status == 200
    assert send(address, "GET", "/api/tags?x=1", headers=HOSTILE)[0] == 200
    post, get = upstream.seen
    assert post.data == body and get.path == "/api/tags?x=1" and not get.body
    for seen in (post, get):
        names = {k.lower() for k in seen.headers}
        assert not names & {"origin", "referer", "authorization", "cookie", "x-forwarded-for"}
        assert seen.headers["Host"] == upstream.url.removeprefix("http://")
        assert "evil" not in seen.headers.get("User-Agent", "")
    assert post.headers["Content-Type"] == "application/json"


def test_a_foreign_origin_or_host_gets_the_runtimes_403_for_itself_alone(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    upstream.hold.set()
    body = chat("Name one colour.")
    with ThreadPoolExecutor(1) as pool:
        honest = pool.submit(send, address, "POST", "/api/chat", body)
        upstream.wait_for(lambda: len(upstream.seen) == 1)
        # The same request, from a web page or by a rebound name, while the first is fetched.
        for foreign in ({"Origin": "http://evil.example"}, {"Host": "evil.example"}):
            status, answer = send(address, "POST", "/api/chat", body, foreign)
            assert status == 403 and "error" in json.loads(answer)
            status, answer = send(address, "POST", "/v1/chat/completions", body, foreign)
            assert status == 403 and "message" in json.loads(answer)["error"]  # OpenAI's shape
        upstream.hold.clear()
        upstream.released.set()
        assert honest.result()[0] == 200
    assert len(upstream.seen) == 1 and replies.waits == 0
    assert send(address, "POST", "/api/chat", body)[0] == 200  # and it was kept for others


def test_the_graders_key_is_the_only_authorization(
    upstream: Upstream,
    start: Callable[..., tuple[ReplyCache, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, given = start(api_key="grader-key")
    monkeypatch.setenv("LABKIT_API_KEY", "from-environment")
    _, from_env = start()
    for address in (given, from_env):
        send(address, "POST", "/api/chat", chat("Hi"), HOSTILE)
    assert [s.headers["Authorization"] for s in upstream.seen] == [
        "Bearer grader-key",
        "Bearer from-environment",
    ]


def test_a_refused_fetch_is_not_shared_with_waiters_nor_kept(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    upstream.script = lambda seen, n: (403, {"error": "refused"}) if n == 1 else (200, {"ok": n})
    upstream.hold.set()
    body = chat("Name one colour.")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send, address, "POST", "/api/chat", body)
        upstream.wait_for(lambda: len(upstream.seen) == 1)
        second = pool.submit(send, address, "POST", "/api/chat", body)
        wait_until(lambda: replies.waits == 1)  # it waits for the first fetch...
        upstream.hold.clear()
        upstream.released.set()
        assert first.result() == (403, b'{"error": "refused"}')
        # ...which failed: it asked for itself rather than take the first one's 403.
        assert second.result() == (200, b'{"ok": 2}')
    assert send(address, "POST", "/api/chat", body) == (200, b'{"ok": 2}')
    assert len(upstream.seen) == 2  # the 200 was kept, the 403 never was


def test_errors_and_cut_streams_are_never_kept(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    cut = b'{"message": {"content": "Bl"}, "done": false}\n'
    answers = {
        "error": (500, {"error": "boom"}),
        "error-in-200": (200, {"error": "model is loading"}),
        "cut": (200, cut),
        "not-json": (200, b"<html>"),
    }
    upstream.script = lambda seen, n: answers[seen.data["messages"][0]["content"]]
    for prompt, (status, _) in answers.items():
        body = chat(prompt, stream=prompt == "cut")
        for _ in range(2):
            assert send(address, "POST", "/api/chat", body)[0] == status
    assert len(upstream.seen) == 2 * len(answers) and not replies.store


def test_embedding_waiters_fetch_for_themselves_after_a_failure(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()

    def script(seen: Seen, number: int) -> tuple[int, Any]:
        return (500, {"error": "busy"}) if number == 1 else ollama_like(seen, number)

    upstream.script = script
    upstream.hold.set()
    body = {"model": "m", "input": ["a", "bb", "ccc"]}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send, address, "POST", "/api/embed", body)
        upstream.wait_for(lambda: len(upstream.seen) == 1)
        second = pool.submit(send, address, "POST", "/api/embed", {**body, "input": ["bb"]})
        wait_until(lambda: replies.waits == 1)
        upstream.hold.clear()
        upstream.released.set()
        assert first.result()[0] == 500
        status, answer = second.result()
    assert status == 200 and json.loads(answer)["embeddings"] == [_vector("bb")]
    assert upstream.seen[1].data["input"] == ["bb"]


def test_the_key_covers_everything_that_changes_the_reply(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    base = chat("Name one colour.")
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    swapped = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    different = [
        base,
        {**base, "options": {**base["options"], "num_predict": 9}},
        {**base, "options": {**base["options"], "top_k": 1}},
        {**base, "messages": [*base["messages"], {"role": "user", "content": "Another."}]},
        {**base, "model": "other"},
        {**base, "format": schema},
        {**base, "format": swapped},  # properties in another order: another grammar
    ]
    for body in different:
        send(address, "POST", "/api/chat", body)
    assert len(upstream.seen) == len(different) == len(replies.store)
    # The same request with its fields in another order, or on /api/generate, or with a query.
    same = dict(reversed(list(base.items())))
    same["options"] = dict(reversed(list(base["options"].items())))
    send(address, "POST", "/api/chat", same)
    assert len(upstream.seen) == len(different)
    send(address, "POST", "/api/generate", base)
    send(address, "POST", "/api/chat?debug=1", base)
    assert len(upstream.seen) == len(different) + 2
    # Keys are digests, whatever the size of the request.
    assert {len(key) for key in replies.store} == {32}


def test_the_store_keeps_to_its_bounds_dropping_the_least_recently_used(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    reply = {"message": {"content": "x" * 4000}, "done": True}
    size = len(json.dumps(reply)) + 32 + cache_module._ENTRY_OVERHEAD
    upstream.script = lambda seen, n: (200, reply)
    replies, address = start(max_bytes=10 * size)
    for n in range(10):
        send(address, "POST", "/api/chat", chat(f"p{n}"))
    assert len(replies.store) == 10 and replies.stored_bytes == 10 * size
    send(address, "POST", "/api/chat", chat("p0"))  # a hit: p0 is now the most recent
    send(address, "POST", "/api/chat", chat("p10"))  # one too many: the oldest (p1) goes
    assert len(replies.store) == 10 and replies.stored_bytes <= replies.max_bytes
    asked = len(upstream.seen)
    send(address, "POST", "/api/chat", chat("p0"))
    assert len(upstream.seen) == asked
    send(address, "POST", "/api/chat", chat("p1"))
    assert len(upstream.seen) == asked + 1
    # An entry over an eighth of the bound is passed on, not kept.
    upstream.script = lambda seen, n: (200, {"message": {"content": "y" * 6000}, "done": True})
    before = dict(replies.store)
    assert send(address, "POST", "/api/chat", chat("big"))[0] == 200
    assert replies.store == before
    # A bound on entries too.
    few, address = start(max_entries=3)
    for n in range(5):
        send(address, "POST", "/api/chat", chat(f"q{n}"))
    assert len(few.store) == 3


def test_junk_options_do_not_multiply_memory(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    texts = [f"text {n}" for n in range(64)]
    entry = 8 * DIM + 32 + cache_module._ENTRY_OVERHEAD
    growth = []
    for junk in ("", "x" * 10_000, "y" * 60_000):
        before = replies.stored_bytes
        body = {"model": "m", "input": texts, "options": {"junk": junk}}
        status, answer = send(address, "POST", "/api/embed", body)
        assert status == 200 and json.loads(answer)["embeddings"] == [_vector(t) for t in texts]
        growth.append(replies.stored_bytes - before)
    assert growth == [64 * entry] * 3  # the same texts cost the same, whatever rides along
    # Options over the limit are passed on and never stored (a megabyte, in a 1.1 MB body).
    before = len(replies.store)
    huge = {"model": "m", "input": texts, "options": {"junk": "z" * (1 << 20)}}
    assert MAX_OPTIONS_BYTES < len(json.dumps(huge)) < MAX_CACHED_BODY
    for _ in range(2):
        assert send(address, "POST", "/api/embed", huge)[0] == 200
    assert len(replies.store) == before
    assert upstream.seen[-1].data["options"]["junk"] == huge["options"]["junk"]


def test_a_body_over_the_cached_size_is_passed_on_uncached(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    body = chat("x" * (MAX_CACHED_BODY + 10))
    for _ in range(2):
        assert send(address, "POST", "/api/chat", body)[0] == 200
    assert len(upstream.seen) == 2 and not replies.store


@pytest.mark.skipif(sys.platform != "linux", reason="kernels' own loopback addresses are Linux's")
def test_one_kernel_cannot_hold_more_than_four_requests_or_starve_another(
    upstream: Upstream, start: Callable[..., tuple[ReplyCache, str]]
) -> None:
    replies, address = start()
    upstream.hold.set()
    greedy, honest = kernel_address(4242), kernel_address(4343)

    def ask(kernel: str, n: int) -> int:
        body = {"model": "m", "kernel": kernel, "n": n, "stream": False}  # not cached
        return send(address, "POST", "/api/chat", body, source=kernel)[0]

    with ThreadPoolExecutor(11) as pool:
        flood = [pool.submit(ask, greedy, n) for n in range(10)]
        upstream.wait_for(lambda: len(upstream.in_flight) == 4)
        wait_until(lambda: len(replies.turns.waiting.get(greedy, ())) == 6)
        mine = pool.submit(ask, honest, 0)
        upstream.wait_for(lambda: len(upstream.in_flight) == 5)  # not behind the flood
        assert upstream.in_flight[-1].data["kernel"] == honest
        upstream.hold.clear()
        upstream.released.set()
        assert [f.result() for f in flood] == [200] * 10 and mine.result() == 200
    assert upstream.most_at_once == {greedy: 4, honest: 1}


def test_kernels_waiting_for_a_place_take_turns() -> None:
    async def scenario() -> list[str]:
        turns = cache_module._Turns(per_kernel=2, total=2, queue=3)
        served: list[str] = []
        running: list[asyncio.Event] = []  # one per request holding a place, oldest first

        async def request(kernel: str) -> None:
            async with turns.turn(kernel):
                served.append(kernel)
                done = asyncio.Event()
                running.append(done)
                await done.wait()

        tasks = [asyncio.create_task(request("A")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("B")) for _ in range(2)]
        await asyncio.sleep(0)
        assert served == ["A", "A"]  # both places taken: 3 of A's and 2 of B's wait
        with pytest.raises(cache_module._Busy):
            await turns._enter("A")  # a fourth waiting request of A's is one too many
        # Cancelled while waiting: it leaves the line without taking a place.
        lost = asyncio.create_task(request("B"))
        await asyncio.sleep(0)
        lost.cancel()
        while len(served) < 7:
            running.pop(0).set()  # the oldest request ends, and its place is handed on
            await asyncio.sleep(0.01)
        for event in running:
            event.set()
        await asyncio.gather(*tasks)
        assert turns.busy == 0 and not turns.waiting and not turns.order
        return served

    # After A's first two, A and B alternate: B is never left behind A's queue.
    assert asyncio.run(scenario()) == ["A", "A", "A", "B", "A", "B", "A"]


def test_each_kernel_gets_a_loopback_address_of_its_own() -> None:
    addresses = {kernel_address(pid) for pid in (1, 2, 255, 256, 65536, 4_194_304)}
    assert len(addresses) == 6 and "127.0.0.1" not in addresses
    assert all(a.startswith("127.") and int(a.split(".")[1]) >= 128 for a in addresses)
