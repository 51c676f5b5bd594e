"""Pieces every route shares: the backend, errors in both dialects, request checks, llama.cpp calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

__all__ = [
    "BACKEND",
    "BODY_READ_SECONDS",
    "LOAD",
    "MAX_JSON_DEPTH",
    "PROPS",
    "SESSION",
    "ApiError",
    "Backend",
    "ClientGone",
    "Load",
    "check_connected",
    "error",
    "field_of",
    "json_answer",
    "ndjson_line",
    "openai_error",
    "post_json",
    "read_object",
    "server_props",
    "shown",
    "slot_context",
    "timestamp",
    "type_name",
    "unless_client_leaves",
    "upstream_error",
]


@dataclass(frozen=True)
class Backend:
    """Where llama.cpp runs and which models it serves."""

    llama_url: str
    embed_url: str
    chat_model: str
    embed_model: str
    chat_model_path: Path
    embed_model_path: Path
    api_key: str = ""  # what llama.cpp's servers ask of every request but /health


class ApiError(Exception):
    """A request that fails with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Load:
    """Generations in flight; long embedding work gives way to them (see ``embed.py``)."""

    generating: int = 0

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Count one generation for as long as the block runs."""
        self.generating += 1
        try:
            yield
        finally:
            self.generating -= 1


LOAD = web.AppKey("load", Load)
SESSION = web.AppKey("session", aiohttp.ClientSession)


BACKEND = web.AppKey("backend", Backend)


PROPS = web.AppKey("props", dict)  # llama.cpp's /props per server URL, fetched once


def json_answer(answer: Any, status: int = 200) -> web.Response:
    """A JSON answer, compact like Go's encoder writes it."""
    return web.Response(
        body=ndjson_line(answer)[:-1], status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    """An error in Ollama's shape: ``{"error": "..."}``."""
    return json_answer({"error": message}, status=status)


def openai_error(status: int, message: str) -> web.Response:
    """An error in OpenAI's shape, with the ``type`` Ollama's /v1 routes use."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return json_answer(body, status=status)


def timestamp(seconds: float) -> str:
    """A time the way Go writes it in JSON (RFC 3339, UTC, "Z")."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


async def server_props(app: web.Application, url: str) -> dict[str, Any]:
    """llama.cpp's /props for one server (its context size and slots), fetched once."""
    cache = app[PROPS]
    if url not in cache:
        async with app[SESSION].get(url + "/props") as reply:
            reply.raise_for_status()
            cache[url] = await reply.json()
    props: dict[str, Any] = cache[url]
    return props


async def slot_context(app: web.Application, url: str) -> int:
    """How many tokens one request may use on this server (its context per slot)."""
    props = await server_props(app, url)
    return int(props.get("default_generation_settings", {}).get("n_ctx", 0))


T = TypeVar("T")


TYPE_WORDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number"}


TYPE_WORDS |= {str: "a string", list: "a list", dict: "an object", type(None): "null"}


def type_name(value: object) -> str:
    return TYPE_WORDS.get(type(value), type(value).__name__)


# A client has this long to send its whole body; one that trickles it holds a connection.
BODY_READ_SECONDS = 30.0
MAX_JSON_DEPTH = 64  # far deeper than any real request; deeper ones cost recursion


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 4xx that says what is wrong with it."""
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            raw = await request.read()
    except TimeoutError as exc:
        raise ApiError(
            408, f"the request body did not arrive in {BODY_READ_SECONDS:.0f} s"
        ) from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(
            413, f"request body too large; the limit is {request.client_max_size} bytes"
        ) from exc
    except (web.RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
        # A body that does not decode as its Content-Encoding says (gzip that is no gzip).
        encoding = request.headers.get("Content-Encoding", "")
        raise ApiError(
            400,
            f"the request body could not be decoded as Content-Encoding {shown(encoding)!r}; "
            "send it as it is (without that header) or compress it as the header says",
        ) from exc
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ApiError(400, "invalid JSON in the request body: nested too deeply") from exc
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON in the request body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type_name(body)}")
    depth, surrogate = _walk(body)
    if depth > MAX_JSON_DEPTH:
        message = f"invalid JSON in the request body: nested more than {MAX_JSON_DEPTH} levels"
        raise ApiError(400, message)
    if surrogate:
        raise ApiError(
            400,
            f"invalid text in the request body: {surrogate} holds a lone surrogate (such as "
            "\\ud800), which is half of a character and no text; send valid UTF-8",
        )
    return body


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


# What json.loads leaves of an unpaired "\\ud800" escape (a pair becomes one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _walk(value: Any) -> tuple[int, str]:
    """How deeply ``value`` nests, and where a string holds a lone surrogate ("" if none).

    Iterative: no recursion to exhaust. A lone surrogate cannot be encoded as UTF-8, so it
    would fail every step after this one.
    """
    deepest, found, stack = 0, "", [(value, 1, "the body")]
    while stack:
        node, level, where = stack.pop()
        if isinstance(node, str):
            if not found and not node.isascii() and _SURROGATE.search(node):
                found = where
            continue
        if isinstance(node, dict):
            for key in node:
                if not found and not key.isascii() and _SURROGATE.search(key):
                    found = f"a key of {where}"
            parent = "" if level == 1 else where + "."
            children = [(child, parent + shown(str(key), 40)) for key, child in node.items()]
        elif isinstance(node, list):
            children = [(child, f"{where}[{n}]") for n, child in enumerate(node)]
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:
            stack.extend((child, level + 1, place) for child, place in children)
    return deepest, found


def shown(text: str, limit: int = 80) -> str:
    """``text`` as an answer may repeat it: cut to ``limit`` characters, lone surrogates escaped."""
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode()


def field_of(body: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """``body[key]`` if it has the right type; missing or null gives ``default``."""
    value = body.get(key)
    if value is None:
        return default
    wrong_number = kind in (int, float) and isinstance(value, bool)
    if kind is float and isinstance(value, int) and not wrong_number:
        value = float(value)
    if wrong_number or not isinstance(value, kind):
        raise ApiError(400, f'"{key}" must be {TYPE_WORDS[kind]}, got {type_name(value)}')
    return value


async def post_json(session: aiohttp.ClientSession, url: str, payload: Any) -> Any:
    """POST to llama.cpp and return its JSON, turning its errors into Ollama's."""
    async with session.post(url, json=payload) as reply:
        if reply.status != 200:
            raise ApiError(reply.status, await upstream_error(reply))
        return await reply.json()


async def upstream_error(reply: aiohttp.ClientResponse) -> str:
    """The message inside llama.cpp's error answer."""
    text = await reply.text()
    message = text.strip() or f"the model server answered {reply.status}"
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        found = json.loads(text)["error"]
        message = str(found.get("message", found) if isinstance(found, dict) else found)
    if "exceeds the available context size" in message:
        # llama.cpp suggests a bigger context, which a client cannot change here.
        message = message.replace(", try increasing it", "")
        message += "; shorten the prompt (or the conversation) to fit"
    return message


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


def check_connected(request: web.Request) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone


async def unless_client_leaves(request: web.Request, pending: Awaitable[T]) -> T:
    """Await ``pending``, but give up (cancelling it) as soon as the client disconnects.

    llama.cpp answers only when its first token (or, without streaming, its whole reply)
    is ready; a client that leaves meanwhile must not keep a slot busy.
    """
    task = asyncio.ensure_future(pending)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        try:
            check_connected(request)
        except ClientGone:
            task.cancel()
            raise


def ndjson_line(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: a JSON escape carries it
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
