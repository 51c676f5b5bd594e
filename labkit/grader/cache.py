"""A reply cache in front of the runtime, shared by every kernel of one grading run.

A class of 300 asks the model the same things 300 times: the same handbook embedded, the
same prompt at temperature 0 with a seed. The runtime would compute each again; this cache
answers the repeats from memory, so grading stays live (the first learner's request goes to
the runtime) and gives the same result a repeat would have given:

- embeddings (``/api/embed``, ``/v1/embeddings``): one vector per (route, model, options,
  text), so a learner who batches chunks differently still hits what others embedded;
- chat and completions at temperature 0 with a seed, not streamed or streamed: the reply
  to the same request (any other request goes through untouched).

Every kernel is a stranger to the others, so none can turn the cache against them:

- a request with a foreign ``Host`` or ``Origin`` gets the runtime's 403 from the cache,
  for itself alone;
- a request is rebuilt from its parsed body: none of the kernel's headers reaches the
  runtime (only ``Content-Type: application/json`` and, if the grader has
  ``$LABKIT_API_KEY``, its ``Authorization``), so one learner's request is exactly what any
  other learner's identical request would have been;
- the key is a SHA-256 of everything that changes the reply (method, route, query, the
  whole parsed body), 32 bytes however big the request;
- only complete successful replies are kept or handed to the requests waiting for the same
  one; after a failed fetch, each waiting request asks the runtime for itself;
- memory is bounded (``max_bytes``, default 256 MB, and ``max_entries``; least recently
  used first out), and a body over ``MAX_CACHED_BODY`` or options over
  ``MAX_OPTIONS_BYTES`` are passed through and never stored;
- a kernel has at most ``per_kernel`` requests in flight (default 4), the run at most
  ``total``; kernels waiting for a place take turns. Kernels are told apart by the address
  their connection comes from: the sandbox's forwarder gives each kernel a loopback
  address of its own (kernels that reach the cache directly share 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

from labkit.grader.settings import GradingError
from labkit.transport import auth_headers

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_PER_KERNEL",
    "MAX_CACHED_BODY",
    "MAX_OPTIONS_BYTES",
    "MAX_REQUEST_BYTES",
    "ReplyCache",
]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 500_000
DEFAULT_PER_KERNEL = 4  # a notebook asks one thing at a time; 4 leaves room for a small pool
DEFAULT_TOTAL = 32
DEFAULT_QUEUE = 256  # requests one kernel may have waiting for a place; more get a 429
# A class embeds a handbook in batches of a few hundred KB; the kit's runtime refuses bodies
# over 8 MB. Bigger bodies still reach the runtime (it answers as it would without the
# cache) but are never stored, and nothing a kernel sends is held past 16 MB.
MAX_CACHED_BODY = 4 * 1024 * 1024
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_OPTIONS_BYTES = 64 * 1024  # the options of one embedding request, as canonical JSON
_ENTRY_OVERHEAD = 200  # bytes of bookkeeping per stored entry (key object, dict slot, tuple)

_EMBED = ("/api/embed", "/v1/embeddings")
_REPLY = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")


class _Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes
    retry_after: str | None = None


class _Busy(Exception):
    """A kernel has more requests waiting than it may."""


class ReplyCache:
    """An HTTP server on 127.0.0.1 that answers repeats and passes the rest to ``upstream``."""

    def __init__(
        self,
        upstream: str,
        *,
        api_key: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        per_kernel: int = DEFAULT_PER_KERNEL,
        total: int = DEFAULT_TOTAL,
        queue: int = DEFAULT_QUEUE,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        # What the runtime sees of every request: the kit's own headers, never a kernel's.
        self.headers = {"Content-Type": "application/json", **auth_headers(api_key)}
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.store: OrderedDict[bytes, tuple[str, bytes] | array[float]] = OrderedDict()
        self.stored_bytes = 0
        self.pending: dict[bytes, asyncio.Future[None]] = {}
        self.turns = _Turns(per_kernel, total, queue)
        self.hits = self.misses = self.waits = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> tuple[str, int]:
        """Serve in a background thread; the (host, port) it listens on."""
        started: list[Any] = []
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve(started, ready))
            except BaseException as exc:  # reported to start() below
                started.append(exc)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=serve, name="labkit-reply-cache", daemon=True)
        self._thread.start()
        ready.wait(30)
        if not started or isinstance(started[0], BaseException):
            raise GradingError(
                f"The reply cache could not start ({started[:1]}); grade with --no-cache."
            )
        address: tuple[str, int] = started[0]
        return address

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, started: list[Any], ready: threading.Event) -> None:
        import aiohttp
        from aiohttp import web

        self._stop = asyncio.Event()
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        port = server.sockets[0].getsockname()[1]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.session = session
            started.append(("127.0.0.1", port))
            ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        try:
            async with self.turns.turn(request.remote or "?"):
                return await self._answer(request)
        except _Busy:
            text = json.dumps({"error": "too many requests from this notebook at once"})
            return web.Response(
                status=429, text=text, content_type="application/json", headers={"Retry-After": "1"}
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            # The runtime went away: say so (to this request only; nothing is kept).
            text = json.dumps({"error": f"the model runtime is not reachable: {exc}"})
            return web.Response(status=502, text=text, content_type="application/json")

    async def _answer(self, request: Any) -> Any:
        method, path, target = request.method, request.path, request.path_qs
        if refused := _foreign(request.headers, path):
            return refused
        body = await request.read()
        data = _parse(body) if body else None
        if data is None:  # nothing to rebuild: no body, or not JSON (the runtime says so)
            return _response(await self._upstream(method, target, body or None))
        rebuilt = json.dumps(data).encode()
        cacheable = method == "POST" and len(body) <= MAX_CACHED_BODY and isinstance(data, dict)
        if cacheable and path in _EMBED and _texts(data) is not None:
            return await self._embed(target, path, data)
        if cacheable and path in _REPLY and _deterministic(data):
            key = _digest(b"reply", target.encode(), _canonical(data, keep_order=True))
            fetch = functools.partial(self._upstream, method, target, rebuilt)
            return _response(await self._shared(key, fetch, path, data))
        return _response(await self._upstream(method, target, rebuilt))

    async def _shared(
        self, key: bytes, fetch: Callable[[], Awaitable[_Reply]], path: str, data: dict[str, Any]
    ) -> _Reply:
        """The stored reply for ``key``, the one being fetched for it, or a fetch of our own."""
        stored = self._get(key)
        leader = self.pending.get(key)
        if stored is None and leader is not None:
            self.waits += 1
            await asyncio.shield(leader)
            stored = self._get(key)
            if stored is None:
                # The leader's fetch failed or was refused: its answer was for it alone.
                self.misses += 1
                return self._keep(key, await fetch(), path, data)
        if stored is not None:
            self.hits += 1
            assert not isinstance(stored, array)
            return _Reply(200, stored[0], stored[1])
        self.misses += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            return self._keep(key, await fetch(), path, data)
        finally:
            self.pending.pop(key, None)
            future.set_result(None)  # waiters look again: stored, or they fetch for themselves

    def _keep(self, key: bytes, reply: _Reply, path: str, data: dict[str, Any]) -> _Reply:
        """Store ``reply`` if it is a complete success; return it either way."""
        if reply.status == 200 and _complete(reply.body, path, data.get("stream")):
            self._put(key, (reply.content_type, reply.body), len(reply.body))
        return reply

    def _get(self, key: bytes) -> tuple[str, bytes] | array[float] | None:
        value = self.store.get(key)
        if value is not None:
            self.store.move_to_end(key)
        return value

    def _put(self, key: bytes, value: tuple[str, bytes] | array[float], size: int) -> None:
        """Keep ``value``, dropping the least recently used entries beyond the bounds."""
        size += len(key) + _ENTRY_OVERHEAD
        if size > self.max_bytes // 8:  # one entry never pushes out most of the others
            return
        old = self.store.pop(key, None)
        if old is not None:
            self.stored_bytes -= _size(old) + len(key) + _ENTRY_OVERHEAD
        self.store[key] = value
        self.stored_bytes += size
        while self.store and (
            self.stored_bytes > self.max_bytes or len(self.store) > self.max_entries
        ):
            dropped, gone = self.store.popitem(last=False)
            self.stored_bytes -= _size(gone) + len(dropped) + _ENTRY_OVERHEAD

    async def _upstream(self, method: str, target: str, body: bytes | None) -> _Reply:
        """Ask the runtime, with the kit's headers only."""
        headers = (
            self.headers
            if body is not None
            else {k: v for k, v in self.headers.items() if k != "Content-Type"}
        )
        async with self.session.request(
            method, self.upstream + target, data=body, headers=headers, allow_redirects=False
        ) as up:
            content = await up.read()
            ctype = up.headers.get("Content-Type", "application/json")
            return _Reply(up.status, ctype, content, up.headers.get("Retry-After"))

    async def _embed(self, target: str, path: str, data: dict[str, Any]) -> Any:
        """Answer an embedding request text by text, asking the runtime only for new texts."""
        from aiohttp import web

        texts = _texts(data)
        assert texts is not None
        options = {k: v for k, v in data.items() if k != "input"}
        canonical = _canonical(options, keep_order=False)
        if len(canonical) > MAX_OPTIONS_BYTES or options.get("encoding_format") not in (
            None,
            "float",
        ):
            # Junk options, or vectors as text: answered by the runtime, never stored.
            return _response(await self._upstream("POST", target, json.dumps(data).encode()))
        prefix = _digest(b"embed", target.encode(), canonical)
        keys = [_digest(prefix, t.encode("utf-8", "surrogatepass")) for t in texts]
        # Texts another request is fetching right now are awaited, not fetched twice: two
        # kernels that start the same exercise together embed the handbook once.
        waits = {self.pending[k] for k in keys if k not in self.store and k in self.pending}
        if waits:
            self.waits += 1
            for other in waits:
                await asyncio.shield(other)
        # Vectors found now are held here: storing the new ones may evict them from the store.
        found: dict[bytes, array[float]] = {}
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            value = self._get(key)
            if isinstance(value, array):
                found[key] = value
            else:
                missing[key] = text
        self.hits += len(texts) - len(missing)
        if missing:
            # Whatever the waited-for fetch did not bring (it failed?) is asked for here.
            self.misses += len(missing)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for key in missing:
                self.pending[key] = future
            try:
                body = json.dumps({**options, "input": list(missing.values())}).encode()
                reply = await self._upstream("POST", target, body)
                vectors = _vectors(path, reply, len(missing)) if reply.status == 200 else None
                if vectors is None:  # refused, failed or not understood: for this request only
                    return _response(reply)
                for key, vector in zip(missing, vectors, strict=True):
                    self._put(key, vector, 8 * len(vector))
                    found[key] = vector
            finally:
                for key in missing:
                    if self.pending.get(key) is future:  # not another request's since
                        del self.pending[key]
                future.set_result(None)  # waiters look again (and fetch what is still missing)
        vectors_out = [found[key].tolist() for key in keys]
        model = data.get("model", "")
        if path == "/api/embed":
            answer: dict[str, Any] = {"model": model, "embeddings": vectors_out}
        else:
            items = [
                {"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(vectors_out)
            ]
            answer = {"object": "list", "data": items, "model": model, "usage": _usage(texts)}
        return web.json_response(answer)


class _Turns:
    """Places for requests: ``per_kernel`` for one kernel, ``total`` in all.

    Kernels waiting for a place are served in turn, one request each, so a kernel that
    keeps many requests queued delays each other kernel by one request at most.
    """

    def __init__(self, per_kernel: int, total: int, queue: int) -> None:
        self.per_kernel, self.total, self.queue = per_kernel, total, queue
        self.running: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.order: deque[str] = deque()  # kernels with requests waiting, next turn first
        self.busy = 0

    @contextlib.asynccontextmanager
    async def turn(self, kernel: str) -> AsyncIterator[None]:
        """Hold one of ``kernel``'s places while the block runs."""
        await self._enter(kernel)
        try:
            yield
        finally:
            self._leave(kernel)

    def _free(self, kernel: str) -> bool:
        return self.busy < self.total and self.running.get(kernel, 0) < self.per_kernel

    def _start(self, kernel: str) -> None:
        self.running[kernel] = self.running.get(kernel, 0) + 1
        self.busy += 1

    async def _enter(self, kernel: str) -> None:
        if kernel not in self.waiting and self._free(kernel):
            self._start(kernel)
            return
        queue = self.waiting.get(kernel)
        if queue is None:
            queue = self.waiting[kernel] = deque()
            self.order.append(kernel)
        elif len(queue) >= self.queue:
            raise _Busy(kernel)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._leave(kernel)  # given a place just as it was cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(future)
                self._forget(kernel)
            raise

    def _forget(self, kernel: str) -> None:
        """Drop ``kernel`` from the turns once nothing of its is waiting."""
        queue = self.waiting.get(kernel)
        if queue is not None and not queue:
            del self.waiting[kernel]
            self.order.remove(kernel)

    def _leave(self, kernel: str) -> None:
        self.running[kernel] -= 1
        if not self.running[kernel]:
            del self.running[kernel]
        self.busy -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Give free places to waiting kernels in turn, one request each."""
        passed = 0
        while self.order and self.busy < self.total and passed < len(self.order):
            kernel = self.order[0]
            queue = self.waiting[kernel]
            while queue and queue[0].done():  # cancelled while waiting
                queue.popleft()
            if not queue:
                self._forget(kernel)
                continue
            if not self._free(kernel):
                self.order.rotate(-1)
                passed += 1
                continue
            self._start(kernel)
            queue.popleft().set_result(None)
            self.order.rotate(-1)  # its next request waits for the others' turns
            self._forget(kernel)
            passed = 0


def _foreign(headers: Any, path: str) -> Any:
    """The runtime's 403 for a foreign Host or Origin, given here; None for other requests.

    Headers never reach the runtime, so the cache refuses what it would have refused: a
    kernel gets the answer it would get without the cache, and a web page open on the
    grading machine cannot use the cache's port to get round the runtime's guard.
    """
    from labkit.runtime.common import error, openai_error
    from labkit.runtime.guard import allowed_host, allowed_origin

    refuse = openai_error if path.startswith("/v1/") else error
    if not allowed_host(headers.get("Host", "")):
        return refuse(403, "this runtime answers only on localhost (Host refused)")
    origin = headers.get("Origin")
    if origin is not None and not allowed_origin(origin):
        return refuse(403, f"origin {origin!r} is not allowed")
    return None


def _parse(body: bytes) -> Any:
    """The JSON value in ``body``, or None if it is not JSON (NaN and Infinity are not)."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(body, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None


def _canonical(value: Any, *, keep_order: bool) -> bytes:
    """``value`` as compact JSON with sorted keys (top level and ``options`` only if asked).

    Where keys go into the model's prompt or grammar (a JSON schema's properties, tool
    definitions) their order changes the reply, so a reply's key keeps it there.
    """
    if keep_order and isinstance(value, dict):
        value = {
            k: dict(sorted(v.items())) if k == "options" and isinstance(v, dict) else v
            for k, v in sorted(value.items())
        }
    text = json.dumps(value, sort_keys=not keep_order, separators=(",", ":"))
    return text.encode()


def _digest(*parts: bytes) -> bytes:
    """SHA-256 of ``parts``, each length-prefixed so no two splits give the same key."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _texts(data: dict[str, Any]) -> list[str] | None:
    """The texts of an embedding request, or None if it has none to cache text by text."""
    texts = data.get("input")
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
        return texts
    return None


def _vectors(path: str, reply: _Reply, count: int) -> list[array[float]] | None:
    """The ``count`` vectors of an embedding reply, or None if it is not one."""
    answer = _parse(reply.body)
    try:
        if path == "/api/embed":
            found = list(answer["embeddings"])
        else:
            found = [d["embedding"] for d in sorted(answer["data"], key=lambda d: d["index"])]
        if len(found) != count:
            return None
        vectors = []
        for vector in found:
            if not isinstance(vector, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
            ):
                return None
            vectors.append(array("d", vector))
    except (KeyError, TypeError, ValueError):
        return None
    return vectors


def _complete(body: bytes, path: str, stream: Any) -> bool:
    """True if ``body`` is a whole reply, not an error or a stream cut short."""
    if path.startswith("/v1/") and stream:
        events = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
        if not events or events[-1] != b"[DONE]":
            return False
        return all(isinstance(_parse(e), dict) and "error" not in _parse(e) for e in events[:-1])
    if path.startswith("/api/") and stream is not False:  # Ollama streams unless told not to
        lines = [_parse(line) for line in body.splitlines() if line.strip()]
        if not lines or not all(isinstance(x, dict) and "error" not in x for x in lines):
            return False
        return lines[-1].get("done") is True
    answer = _parse(body)
    return isinstance(answer, dict) and "error" not in answer


def _size(value: tuple[str, bytes] | array[float]) -> int:
    if isinstance(value, array):
        return 8 * len(value)
    return len(value[1])


def _response(reply: _Reply) -> Any:
    from aiohttp import web

    headers = {"Content-Type": reply.content_type}
    if reply.retry_after is not None:
        headers["Retry-After"] = reply.retry_after
    return web.Response(status=reply.status, body=reply.body, headers=headers)


def _usage(texts: list[str]) -> dict[str, int]:
    tokens = sum(max(1, len(t) // 4) for t in texts)  # an estimate: the runtime was not asked
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _deterministic(data: dict[str, Any]) -> bool:
    """True for a request at temperature 0 with a seed (Ollama options or OpenAI fields)."""
    options = data["options"] if isinstance(data.get("options"), dict) else data
    return options.get("temperature") == 0 and options.get("seed") is not None
