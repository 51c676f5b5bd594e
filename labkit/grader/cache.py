"""A reply cache in front of the runtime, shared by every kernel of one grading run.

A class of 300 asks the model the same things 300 times: the same handbook embedded, the
same prompt at temperature 0 with a seed. The runtime would compute each again; this cache
answers the repeats from memory, so grading stays live (the first learner's request goes to
the runtime) and gives the same result a repeat would have given:

- embeddings (``/api/embed``, ``/v1/embeddings``): one vector per (route, model, options,
  text), so a learner who batches chunks differently still hits what others embedded;
- chat and completions at temperature 0 with a seed, not streamed or streamed: the reply
  to the byte-identical request (any other request goes through untouched).

Only successful replies are kept; two identical requests in flight wait for one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

from labkit.grader.settings import GradingError

__all__ = ["ReplyCache"]

_EMBED = ("/api/embed", "/v1/embeddings")
_REPLY = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class ReplyCache:
    """An HTTP server on 127.0.0.1 that answers repeats and passes the rest to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.replies: dict[bytes | str, tuple[int, str, bytes]] = {}
        self.vectors: dict[str, list[float]] = {}
        self.pending: dict[bytes | str, asyncio.Future[Any]] = {}
        self.hits = self.misses = 0
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
            raise GradingError(f"The reply cache could not start: {started[:1]}")
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
        app = web.Application(client_max_size=64 * 1024 * 1024)
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
            return await self._answer(request)
        except (aiohttp.ClientError, OSError) as exc:  # the runtime went away: say so
            text = json.dumps({"error": f"the model runtime is not reachable: {exc}"})
            return web.Response(status=502, text=text, content_type="application/json")

    async def _answer(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        path = request.path
        if request.method == "POST" and path in _EMBED:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(body)
                if isinstance(data, dict) and "input" in data:
                    return await self._embed(request, path, data)
        key = None
        if request.method == "POST" and path in _REPLY and _deterministic(body):
            key = path.encode() + b"\n" + body
        if key is None:
            status, ctype, content = await self._upstream(request, body)
        else:
            status, ctype, content = await self._once(key, lambda: self._upstream(request, body))
        return web.Response(status=status, body=content, headers={"Content-Type": ctype})

    async def _once(self, key: bytes | str, fetch: Any) -> Any:
        """The cached value for ``key``, or fetch it once even if asked twice at a time."""
        if key in self.replies:
            self.hits += 1
            return self.replies[key]
        if key in self.pending:
            self.hits += 1
            return await asyncio.shield(self.pending[key])
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            value = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # read: nobody else may be waiting
            raise
        finally:
            self.pending.pop(key, None)
        if value[0] == 200:
            self.replies[key] = value
        future.set_result(value)
        return value

    async def _upstream(self, request: Any, body: bytes) -> tuple[int, str, bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.pop("Host", None)
        url = self.upstream + request.path_qs
        async with self.session.request(request.method, url, data=body, headers=headers) as up:
            content = await up.read()
            return up.status, up.headers.get("Content-Type", "application/json"), content

    async def _fetch_vectors(
        self, request: Any, path: str, prefix: str, options: dict[str, Any], texts: list[str]
    ) -> tuple[int, str, bytes] | None:
        """Ask the runtime for ``texts`` and keep their vectors; its reply if it failed."""
        body = json.dumps({**options, "input": texts}).encode()
        status, ctype, content = await self._upstream(request, body)
        if status != 200:
            return status, ctype, content
        for text, vector in zip(texts, _vectors(path, json.loads(content)), strict=True):
            self.vectors[prefix + text] = vector
        return None

    async def _embed(self, request: Any, path: str, data: dict[str, Any]) -> Any:
        """Answer an embedding request text by text, asking the runtime only for new texts."""
        from aiohttp import web

        texts = data["input"]
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("not a list of texts")
        options = {k: v for k, v in data.items() if k != "input"}
        prefix = path + "\n" + json.dumps(options, sort_keys=True) + "\n"
        keys = [prefix + t for t in texts]
        # Texts another request is fetching right now are awaited, not fetched twice: two
        # kernels that start the same exercise together embed the handbook once.
        waits = {self.pending[k] for k in keys if k not in self.vectors and k in self.pending}
        for other in waits:
            with contextlib.suppress(Exception):
                await asyncio.shield(other)
        new = list(
            dict.fromkeys(t for k, t in zip(keys, texts, strict=True) if k not in self.vectors)
        )
        self.hits += len(texts) - len(new)
        if new:
            self.misses += len(new)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            for text in new:
                self.pending[prefix + text] = future
            try:
                error = await self._fetch_vectors(request, path, prefix, options, new)
            finally:
                for text in new:
                    self.pending.pop(prefix + text, None)
                future.set_result(None)  # waiters look again (and fetch what is still missing)
            if error is not None:
                return web.Response(
                    status=error[0], body=error[2], headers={"Content-Type": error[1]}
                )
        vectors = [self.vectors[k] for k in keys]
        model = data.get("model", "")
        if path == "/api/embed":
            reply: dict[str, Any] = {"model": model, "embeddings": vectors}
        else:
            items = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ]
            reply = {"object": "list", "data": items, "model": model, "usage": _usage(texts)}
        return web.json_response(reply)


def _vectors(path: str, answer: dict[str, Any]) -> list[Any]:
    if path == "/api/embed":
        return list(answer["embeddings"])
    return [d["embedding"] for d in sorted(answer["data"], key=lambda d: d["index"])]


def _usage(texts: list[str]) -> dict[str, int]:
    tokens = sum(max(1, len(t) // 4) for t in texts)  # an estimate: the runtime was not asked
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _deterministic(body: bytes) -> bool:
    """True for a request at temperature 0 with a seed (Ollama options or OpenAI fields)."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    options = data["options"] if isinstance(data.get("options"), dict) else data
    return options.get("temperature") == 0 and options.get("seed") is not None
