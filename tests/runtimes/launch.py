"""The other kinds of runtime for the notebook matrix: plain llama.cpp, and an OpenAI-only URL.

``python tests/runtimes/launch.py RECORD`` starts two llama.cpp servers the way a learner would
(one for chat, one started for embeddings with mean pooling; no model aliases, so each is named
by its file), and a small router on one address in front of them that speaks only ``/v1/*``
and names the models as LM Studio does. Both servers are reached through a cache of repeatable
answers (see ``caching_front``). When everything answers, the addresses go into RECORD (JSON):
``chat_url`` and ``embed_url`` (the plain llama.cpp pair) and ``openai_url`` (the router). The
process serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from labkit import runtime
from labkit.runtime.server import wait_healthy

# LM Studio's ids for the two models (what its /v1/models lists).
LMSTUDIO_CHAT = "smollm2-135m-instruct"
LMSTUDIO_EMBED = "text-embedding-all-minilm-l6-v2"


def start_llama(model: Path, *, embedding: bool, threads: int) -> Any:
    """One llama.cpp server on a free loopback port, as `llama-server -m FILE` would start it."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.port = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # Threads that wait sleep instead of spinning: this pair shares two cores with the kit's
    # runtime and the notebooks, and a spinning thread takes a core another one needs.
    params.cpuparams.poll = params.cpuparams_batch.poll = 0
    params.n_parallel = 4
    if embedding:  # llama-server --embeddings --pooling mean
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        params.n_ctx, params.n_batch, params.n_ubatch = 2048, 2048, 512
    else:
        params.n_ctx = 8192
    return xllamacpp.Server(params)


def _session() -> Any:
    import aiohttp

    # A new connection per request, as the kit's own front does: llama.cpp closes idle
    # keep-alive connections, and reusing one it just closed turns into a spurious 500 here.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def _serve_app(app: Any, stop: asyncio.Event) -> str:
    """Serve ``app`` on a free loopback port until ``stop``; its address."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", runtime.free_port())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    asyncio.get_running_loop().create_task(_cleanup_on(stop, runner))
    return f"http://127.0.0.1:{port}"


# Headers that belong to one connection, not to the message: never copied across.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


# A replayed answer arrives at this fraction of the pace it was computed at: a lesson that
# compares timings (a stream's first piece before a whole reply) still sees them in order,
# and the machine's cores go to work that is not done yet.
REPLAY_PACE = 0.05


async def caching_front(upstream: str, stop: asyncio.Event) -> str:
    """``upstream`` behind a cache of its replies: a repeatable request is computed once.

    Both kinds of runtime use the same two llama.cpp servers, and each runs the same notebooks:
    the second kind gets the first one's answers (byte for byte what the server sent, renamed
    to the model it asked for, piece by piece at a quarter of the pace it came). Only what is
    repeatable is kept: embeddings, and generations at temperature 0 or with a seed.
    Everything else, and every failure, passes through.
    """
    from aiohttp import web

    session = _session()
    cache: dict[str, tuple[int, str, list[tuple[float, bytes]]]] = {}

    async def replay(request: web.Request, key: str, asked: Any) -> web.StreamResponse:
        status, kind, pieces = cache[key]
        if kind != "text/event-stream":  # one JSON document: renamed whole, sent at its end
            pieces = [(pieces[-1][0], b"".join(piece for _, piece in pieces))] if pieces else []
        reply = web.StreamResponse(status=status)
        reply.content_type = kind
        await reply.prepare(request)
        started = loop.time()
        for offset, piece in pieces:
            await asyncio.sleep(max(0.0, started + offset * REPLAY_PACE - loop.time()))
            await reply.write(_named(piece, asked))
        await reply.write_eof()
        return reply

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        asked, key = _cache_key(request.method, request.path_qs, body)
        if key in cache:
            return await replay(request, key, asked)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        started = loop.time()
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            reply = web.StreamResponse(status=answer.status)
            for name, value in answer.headers.items():
                if name.lower() not in _HOP:
                    reply.headers[name] = value
            await reply.prepare(request)
            pieces = []
            # Streamed on as it comes: a streaming test still sees its pieces one by one.
            async for piece in answer.content.iter_any():
                pieces.append((loop.time() - started, piece))
                await reply.write(piece)
            await reply.write_eof()
            if key and answer.status == 200:
                cache[key] = (answer.status, answer.content_type, pieces)
            return reply

    loop = asyncio.get_running_loop()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    return await _serve_app(app, stop)


def _cache_key(method: str, path: str, body: bytes) -> tuple[Any, str]:
    """The model a request names, and a key for it that leaves the model name out ("" if none).

    A llama.cpp server serves its one model whatever name it is given; each kind of runtime
    names it differently (by its file, or LM Studio's id), and should share the answers.
    """
    if method != "POST" or not any(word in path for word in ("embed", "completion")):
        return None, ""
    try:
        data = json.loads(body)
    except ValueError:
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    repeatable = data.get("temperature") == 0 or data.get("seed") not in (None, -1)
    if "completion" in path and not repeatable:
        return None, ""
    asked = data.pop("model", None)
    text = path + "\n" + json.dumps(data, sort_keys=True)
    return asked, hashlib.sha256(text.encode()).hexdigest()


def _model_of(body: bytes) -> Any:
    """The model a JSON request body names, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("model") if isinstance(data, dict) else None


def _named(data: bytes, model: Any) -> bytes:
    """A cached answer naming the model this request asked for, as llama.cpp's own would."""
    if model is None:
        return data
    if data.startswith(b"data:"):  # a stream of server-sent events: rename event by event
        lines = []
        for line in data.split(b"\n"):
            if line.startswith(b"data: {"):
                line = b"data: " + _named(line[6:], model)
            lines.append(line)
        return b"\n".join(lines)
    try:
        answer = json.loads(data)
    except ValueError:
        return data
    if isinstance(answer, dict) and "model" in answer:
        answer["model"] = model
        return json.dumps(answer).encode()
    return data


async def router(chat_url: str, embed_url: str, stop: asyncio.Event) -> str:
    """An OpenAI-only address in front of both servers, with LM Studio's model ids."""
    from aiohttp import web

    session = _session()

    async def models(_: web.Request) -> web.Response:
        data = [
            {"id": LMSTUDIO_CHAT, "object": "model", "owned_by": "organization_owner"},
            {"id": LMSTUDIO_EMBED, "object": "model", "owned_by": "organization_owner"},
        ]
        return web.json_response({"object": "list", "data": data})

    async def forward(request: web.Request) -> web.StreamResponse:
        target = embed_url if request.path == "/v1/embeddings" else chat_url
        body = await request.read()
        asked = _model_of(body)
        if asked is not None and asked not in (LMSTUDIO_CHAT, LMSTUDIO_EMBED):
            # llama.cpp would answer with its one model whatever the name; LM Studio refuses
            # a model it does not have, in OpenAI's error shape.
            error = {
                "message": f'Model "{asked}" not found. Use an id listed by GET /v1/models.',
                "type": "invalid_request_error",
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=404)
        async with session.request(
            request.method,
            target + request.path_qs,
            data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as upstream:
            reply = web.StreamResponse(status=upstream.status)
            reply.content_type = upstream.content_type
            await reply.prepare(request)
            async for piece in upstream.content.iter_any():
                await reply.write(piece)
            await reply.write_eof()
            return reply

    async def elsewhere(request: web.Request) -> web.Response:
        # What LM Studio says for a route it does not have (it has no Ollama /api/*).
        return web.json_response(
            {"error": f"Unexpected endpoint or method. ({request.path})"}, status=404
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    app.on_cleanup.append(lambda _: session.close())
    return await _serve_app(app, stop)


async def _cleanup_on(stop: asyncio.Event, runner: Any) -> None:
    await stop.wait()
    await runner.cleanup()


async def serve(record: Path, threads: int) -> None:
    """Start the servers, write the record, serve until asked to stop."""
    chat = start_llama(runtime.chat_model_path(), embedding=False, threads=threads)
    embed = start_llama(runtime.embed_model_path(), embedding=True, threads=threads)
    for server in (chat, embed):
        wait_healthy(server.listening_address, timeout=60.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    chat_url = await caching_front(chat.listening_address, stop)
    embed_url = await caching_front(embed.listening_address, stop)
    info = {
        "chat_url": chat_url,
        "embed_url": embed_url,
        "openai_url": await router(chat_url, embed_url, stop),
    }
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(record)
    await stop.wait()
    await asyncio.sleep(0.1)
    del chat, embed


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("record", type=Path)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 2))
    args = parser.parse_args()
    asyncio.run(serve(args.record, args.threads))


if __name__ == "__main__":
    main()
