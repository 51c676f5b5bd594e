"""Ollama's HTTP API, served in front of llama.cpp's own server: the application and its routes.

No package ships an Ollama server, so the embedded runtime speaks Ollama's dialect itself.
Each ``/api/*`` request is checked the way Ollama checks it (``checks.py``), translated into a
request to llama.cpp (``chat.py``, ``embed.py``), and llama.cpp's answer is translated back,
token by token, into Ollama's shapes. ``/v1/*`` (OpenAI's dialect, which real Ollama also
serves) is forwarded (``openai.py``). Model listings come from the GGUF files (``catalog.py``,
``gguf.py``); what is refused before any work starts is in ``guard.py``; which fields reach
llama.cpp, and what they may cost, in ``fields.py`` (both dialects).

Where this server differs from real Ollama is listed in ``docs/ollama-differences.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from labkit.runtime.catalog import all_models, bundled_only, ps, pull, root, show, tags, version
from labkit.runtime.chat import chat, generate
from labkit.runtime.common import (
    BACKEND,
    LOAD,
    PROPS,
    SESSION,
    ApiError,
    Backend,
    Load,
    error,
    openai_error,
    server_props,
    shown,
)
from labkit.runtime.embed import embed, embeddings
from labkit.runtime.gguf import gguf_info
from labkit.runtime.guard import MAX_BODY_BYTES, guard
from labkit.runtime.openai import forward_openai, openai_model, openai_models

__all__ = [
    "create_app",
]

# Characters of an error message at most: a message may quote what the client sent.
MAX_MESSAGE = 2000


def create_app(backend: Backend) -> web.Application:
    """The aiohttp application that serves Ollama's API for ``backend``."""
    # The guard runs inside the error handler: what it refuses never reaches a route.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors, guard])
    app[BACKEND] = backend
    app[PROPS] = {}
    app[LOAD] = Load()
    app.cleanup_ctx.append(_client_session)
    routes = app.router
    routes.add_get("/", root)  # add_get also answers HEAD, as Ollama does
    routes.add_get("/api/version", version)
    routes.add_get("/api/tags", tags)
    routes.add_post("/api/show", show)
    routes.add_get("/api/ps", ps)
    routes.add_post("/api/chat", chat)
    routes.add_post("/api/generate", generate)
    routes.add_post("/api/embed", embed)
    routes.add_post("/api/embeddings", embeddings)
    routes.add_post("/api/pull", pull)
    for method, path in (
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/{digest}"),
        ("HEAD", "/api/blobs/{digest}"),
    ):
        routes.add_route(method, path, bundled_only)
    routes.add_get("/v1/models", openai_models)
    routes.add_get("/v1/models/{model:.+}", openai_model)
    routes.add_post("/v1/chat/completions", forward_openai)
    routes.add_post("/v1/completions", forward_openai)
    routes.add_post("/v1/embeddings", forward_openai)
    return app


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    # No overall timeout: a long generation is not an error; clients set their own.
    # A large read buffer: llama.cpp's last event repeats the whole prompt on one line.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    # One connection per request: llama.cpp closes a connection after a streamed answer
    # (despite "Keep-Alive"), and an idle kept-alive one would hold one of its few HTTP
    # threads. A new loopback connection costs a fraction of a millisecond.
    connector = aiohttp.TCPConnector(force_close=True)
    # llama.cpp's servers want a key only the front knows, so only the front reaches them.
    key = app[BACKEND].api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, read_bufsize=2**20, headers=headers
    ) as session:
        app[SESSION] = session
        # Read model metadata in the background, so the first /api/tags answers at once.
        warming = asyncio.get_running_loop().create_task(_warm_caches(app))
        yield
        warming.cancel()


async def _warm_caches(app: web.Application) -> None:
    with contextlib.suppress(Exception):
        for model in all_models(app[BACKEND]):
            await gguf_info(model.path)
            await server_props(app, model.url)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the answer Ollama gives, so a bad request never stops us."""
    openai = request.path.startswith("/v1/")
    answer = openai_error if openai else error
    try:
        return await handler(request)
    except ApiError as exc:
        return answer(exc.status, shown(exc.message, MAX_MESSAGE))
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")  # Ollama's (Gin's) words
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return answer(exc.status, shown(exc.reason, MAX_MESSAGE))
    except aiohttp.ClientError as exc:
        message = f"the model server (llama.cpp) did not answer: {exc}. Restart the runtime."
        return answer(502, shown(message, MAX_MESSAGE))
    except Exception as exc:  # a bug here must not take the server down
        traceback.print_exc(file=sys.stderr)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return answer(500, shown(message, MAX_MESSAGE))
