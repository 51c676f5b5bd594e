"""What the runtime refuses before any work starts: other websites, big bodies, costly schemas.

Browsers: a web page may send requests to any address, loopback included, so a page could
use the runtime behind its visitor's back. Like Ollama, the runtime answers only requests
whose ``Host`` is a loopback name (which stops DNS rebinding) and whose ``Origin``, when a
browser sends one, is a loopback page or one listed in ``LABKIT_ORIGINS`` (or Ollama's
``OLLAMA_ORIGINS``): comma-separated origins, ``*`` as a wildcard, e.g.
``LABKIT_ORIGINS="https://notebooks.example.org,https://*.example.com"``. Anything else: 403.

Cost: the model server does its work on one thread for everyone, so a request it takes long
to prepare stalls every other. Bodies over ``MAX_BODY_BYTES`` and ``format`` schemas over the
budget below are refused with a 400-family answer before the model server sees them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from labkit.runtime.common import ApiError, error, openai_error

__all__ = [
    "DEFAULT_ORIGINS",
    "MAX_BODY_BYTES",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_CHOICES",
    "MAX_SCHEMA_DEPTH",
    "ORIGINS_VARIABLES",
    "allowed_host",
    "allowed_origin",
    "allowed_origins",
    "check_schema_cost",
    "guard",
]

# 8 MB holds a thousand 512-token inputs for /api/embed with room to spare; a chat prompt is
# limited far below that by the model's context anyway.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Measured on 2 CPU cores: a 30-token answer constrained to an enum of 2,000 random strings
# takes 2.2 s instead of 0.7 s, and the model server's one thread spends that time for every
# request; 5,000 stalled everyone for 25 s. At 256 choices in 8 KB a plain chat beside the
# worst such schema takes about twice its time alone (bench/fairness.py).
MAX_SCHEMA_BYTES = 8 * 1024
MAX_SCHEMA_CHOICES = 256
MAX_SCHEMA_DEPTH = 32

ORIGINS_VARIABLES = ("LABKIT_ORIGINS", "OLLAMA_ORIGINS")
# Ollama's defaults: pages served from this machine, and desktop-app schemes.
DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for scheme in ("http", "https")
        for host in ("localhost", "127.0.0.1", "[::1]")
        for port in ("", ":*")
    ),
    *("app://*", "file://*", "tauri://*", "vscode-webview://*"),
)


def allowed_origins() -> list[str]:
    """The origin patterns accepted now: the defaults plus the environment's (read each time)."""
    extra = [
        item.strip()
        for name in ORIGINS_VARIABLES
        for item in os.environ.get(name, "").split(",")
        if item.strip()
    ]
    return [*DEFAULT_ORIGINS, *extra]


def allowed_origin(origin: str) -> bool:
    """True if a browser page from ``origin`` may use the runtime."""
    return any(_matches(origin, pattern) for pattern in allowed_origins())


def _matches(origin: str, pattern: str) -> bool:
    """``*`` matches anything; every other character only itself (``[::1]`` is no class)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, origin) is not None


def allowed_host(host: str) -> bool:
    """True if ``host`` (a Host header) is a loopback name or a local address, as Ollama allows."""
    name = urlsplit("//" + host).hostname or ""
    if name in ("", "localhost") or name.endswith(".localhost"):
        return True
    if name == socket.gethostname().lower():
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name not ours: what a DNS-rebinding page would send
    # As Ollama: an address of this machine or its network (a page cannot rebind an IP).
    return address.is_loopback or address.is_private or address.is_unspecified


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/v1/"):
        return openai_error(status, message)
    return error(status, message)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign hosts, foreign origins and oversized bodies; answer CORS preflights."""
    if not allowed_host(request.headers.get("Host", "")):
        return _refuse(request, 403, "this runtime answers only on localhost (Host refused)")
    origin = request.headers.get("Origin")
    if origin is not None and not allowed_origin(origin):
        message = (
            f"origin {origin!r} is not allowed; to let a web page use the runtime, add its "
            "origin to LABKIT_ORIGINS (comma-separated) before `labkit up`"
        )
        return _refuse(request, 403, message)
    cors = _cors_headers(origin)
    if request.method == "OPTIONS" and origin is not None:
        return web.Response(status=204, headers=cors)
    size = request.content_length
    if size is not None and size > MAX_BODY_BYTES:
        message = f"request body too large ({size} bytes); the limit is {MAX_BODY_BYTES} bytes"
        return _refuse(request, 413, message)
    response = await handler(request)
    if cors and not response.prepared:
        response.headers.update(cors)
    return response


def _cors_headers(origin: str | None) -> dict[str, str]:
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, User-Agent, Accept",
        "Vary": "Origin",
    }


def check_schema_cost(schema: Any, where: str = "format") -> None:
    """Refuse (400) a JSON schema or grammar that would take long to compile or to follow."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise ApiError(
            400,
            f"{where} is too large ({len(text)} bytes; the limit is {MAX_SCHEMA_BYTES}): "
            "a bigger grammar would slow every request; describe the shape more loosely "
            "and check the values in your code",
        )
    if isinstance(schema, str):
        return
    choices, depth = _walk(schema, 0)
    if depth > MAX_SCHEMA_DEPTH:
        raise ApiError(
            400, f"{where} is nested {depth} levels deep; the limit is {MAX_SCHEMA_DEPTH}"
        )
    if choices > MAX_SCHEMA_CHOICES:
        raise ApiError(
            400,
            f"{where} offers {choices} choices (enum, anyOf, oneOf); the limit is "
            f"{MAX_SCHEMA_CHOICES}: more would slow every request; ask for a plain string "
            "and check it against your list in code",
        )


def _walk(node: Any, depth: int) -> tuple[int, int]:
    """(choices, deepest level) in a schema; stops descending past the depth limit."""
    if depth > MAX_SCHEMA_DEPTH:
        return 0, depth
    choices, deepest = 0, depth
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("enum", "anyOf", "oneOf") and isinstance(value, list):
                choices += len(value)
            sub_choices, sub_depth = _walk(value, depth + 1)
            choices, deepest = choices + sub_choices, max(deepest, sub_depth)
    elif isinstance(node, list):
        for value in node:
            sub_choices, sub_depth = _walk(value, depth + 1)
            choices, deepest = choices + sub_choices, max(deepest, sub_depth)
    return choices, deepest
