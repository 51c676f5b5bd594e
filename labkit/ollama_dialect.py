"""Ollama's HTTP API, served in front of llama.cpp's own server.

No package ships an Ollama server, so the embedded runtime speaks Ollama's dialect itself:
each ``/api/*`` request is translated into a llama.cpp request, and ``/v1/*`` (OpenAI's
dialect, which real Ollama also serves) is forwarded as it is.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

VERSION = "0.12.0"  # the Ollama API version whose shapes this module follows


@dataclass(frozen=True)
class Backend:
    """Where llama.cpp runs and which models it serves."""

    llama_url: str
    embed_url: str
    chat_model: str
    embed_model: str
    chat_model_path: Path
    embed_model_path: Path


SESSION = web.AppKey("session", aiohttp.ClientSession)
BACKEND = web.AppKey("backend", Backend)


def create_app(backend: Backend) -> web.Application:
    """The aiohttp application that serves Ollama's API for ``backend``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BACKEND] = backend
    app.cleanup_ctx.append(_client_session)
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/v1/chat/completions", forward_openai)
    app.router.add_post("/v1/completions", forward_openai)
    app.router.add_post("/v1/embeddings", forward_openai)
    return app


async def _client_session(app: web.Application) -> Any:
    # No overall timeout: a long generation is not an error; clients set their own.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        app[SESSION] = session
        yield


def error(status: int, message: str) -> web.Response:
    """An error in Ollama's shape: ``{"error": "..."}``."""
    return web.json_response({"error": message}, status=status)


async def root(request: web.Request) -> web.Response:
    """Ollama's liveness answer."""
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    """GET /api/version."""
    return web.json_response({"version": VERSION})


def _model_entry(name: str, path: Path, family: str, size_label: str, quant: str) -> dict[str, Any]:
    stat = path.stat()
    return {
        "name": name,
        "model": name,
        "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime)),
        "size": stat.st_size,
        # Ollama's digest is a sha256 of the blob; hashing 100 MB per request is too slow,
        # so this one hashes the name, size and mtime instead (stable while the file is).
        "digest": hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime}".encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": size_label,
            "quantization_level": quant,
        },
    }


def models(backend: Backend) -> list[dict[str, Any]]:
    """The installed models, in /api/tags shape."""
    return [
        _model_entry(backend.chat_model, backend.chat_model_path, "llama", "135M", "Q4_1"),
        _model_entry(backend.embed_model, backend.embed_model_path, "bert", "23M", "F16"),
    ]


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models this runtime has."""
    return web.json_response({"models": models(request.app[BACKEND])})


async def openai_models(request: web.Request) -> web.Response:
    """GET /v1/models in OpenAI's shape, listing both models."""
    data = [
        {"id": m["name"], "object": "model", "created": 0, "owned_by": "library"}
        for m in models(request.app[BACKEND])
    ]
    return web.json_response({"object": "list", "data": data})


async def forward_openai(request: web.Request) -> web.StreamResponse:
    """Forward an OpenAI-style request to the llama.cpp server that has its model."""
    backend = request.app[BACKEND]
    try:
        body = await request.json()
    except ValueError:
        return _openai_error(400, "invalid JSON in request body")
    if not isinstance(body, dict):
        return _openai_error(400, "request body must be a JSON object")
    model = body.get("model") or backend.chat_model
    is_embed = request.path.endswith("/embeddings")
    wanted = backend.embed_model if is_embed else backend.chat_model
    if model not in (wanted, wanted.split(":")[0]):
        return _openai_error(404, f'model "{model}" not found, try pulling it first', "not_found")
    base = backend.embed_url if is_embed else backend.llama_url
    session = request.app[SESSION]
    async with session.post(base + request.path, json=body) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        # Pass bytes through as they come: streaming must stay streaming.
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def _openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)
