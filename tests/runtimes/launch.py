"""Start another kind of runtime for the notebook matrix: plain llama.cpp, or an OpenAI-only URL.

``python tests/runtimes/launch.py llamacpp RECORD`` starts two llama.cpp servers the way a
learner would (one for chat, one started for embeddings with mean pooling; no model aliases,
so each is named by its file). ``openai-only`` also puts a small router on one address in
front of them that speaks only ``/v1/*`` and names the models as LM Studio does. When
everything answers, the addresses go into RECORD (JSON); the process serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
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
    params.n_parallel = 4
    if embedding:  # llama-server --embeddings --pooling mean
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        params.n_ctx, params.n_batch, params.n_ubatch = 2048, 2048, 512
    else:
        params.n_ctx = 8192
    return xllamacpp.Server(params)


async def router(chat_url: str, embed_url: str, stop: asyncio.Event) -> str:
    """An OpenAI-only address in front of both servers, with LM Studio's model ids."""
    import aiohttp
    from aiohttp import web

    # A new connection per request, as the kit's own front does: llama.cpp closes idle
    # keep-alive connections, and reusing one it just closed turns into a spurious 500 here.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=None),
    )

    async def models(_: web.Request) -> web.Response:
        data = [
            {"id": LMSTUDIO_CHAT, "object": "model", "owned_by": "organization_owner"},
            {"id": LMSTUDIO_EMBED, "object": "model", "owned_by": "organization_owner"},
        ]
        return web.json_response({"object": "list", "data": data})

    async def forward(request: web.Request) -> web.StreamResponse:
        target = embed_url if request.path == "/v1/embeddings" else chat_url
        body = await request.read()
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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", runtime.free_port())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    asyncio.get_running_loop().create_task(_cleanup_on(stop, runner))
    return f"http://127.0.0.1:{port}"


async def _cleanup_on(stop: asyncio.Event, runner: Any) -> None:
    await stop.wait()
    await runner.cleanup()


async def serve(kind: str, record: Path, threads: int) -> None:
    """Start the servers, write the record, serve until asked to stop."""
    chat = start_llama(runtime.chat_model_path(), embedding=False, threads=threads)
    embed = start_llama(runtime.embed_model_path(), embedding=True, threads=threads)
    for server in (chat, embed):
        wait_healthy(server.listening_address, timeout=60.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = {"kind": kind, "chat_url": chat.listening_address, "embed_url": embed.listening_address}
    if kind == "llamacpp":
        info |= {"base_url": info["chat_url"], "labkit_embed_url": info["embed_url"]}
    else:
        url = await router(chat.listening_address, embed.listening_address, stop)
        info |= {"base_url": url, "labkit_embed_url": ""}
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(record)
    await stop.wait()
    await asyncio.sleep(0.1)
    del chat, embed


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("llamacpp", "openai-only"))
    parser.add_argument("record", type=Path)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 2))
    args = parser.parse_args()
    asyncio.run(serve(args.kind, args.record, args.threads))


if __name__ == "__main__":
    main()
