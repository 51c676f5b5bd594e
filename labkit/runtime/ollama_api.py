"""Ollama's HTTP API, served in front of llama.cpp's own server.

No package ships an Ollama server, so the embedded runtime speaks Ollama's dialect itself.
Each ``/api/*`` request is checked the way Ollama checks it, translated into a request to
llama.cpp (``/v1/chat/completions`` for chat, ``/completion`` for generate, ``/v1/embeddings``
for embeddings), and llama.cpp's answer is translated back, token by token, into Ollama's
shapes. ``/v1/*`` (OpenAI's dialect, which real Ollama also serves) is forwarded as it is.

Where this server differs from real Ollama is listed in ``docs/ollama-differences.md``.

Reading order: the app and its error handling, then models (names, GGUF metadata, list,
show, ps), then request checking, then chat and generate, embeddings, model management,
and last the OpenAI routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import mmap
import re
import struct
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from labkit.models import match_model
from labkit.runtime import tools

VERSION = "0.12.0"  # the Ollama API version whose shapes this module follows

# Ollama's own sampling defaults (api.DefaultOptions); llama.cpp's differ (top_p 0.95,
# min_p 0.05, repeat_penalty 1.0), and a client speaking Ollama expects Ollama's.
OLLAMA_DEFAULTS: dict[str, float | int] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


@dataclass(frozen=True)
class Backend:
    """Where llama.cpp runs and which models it serves."""

    llama_url: str
    embed_url: str
    chat_model: str
    embed_model: str
    chat_model_path: Path
    embed_model_path: Path


class ApiError(Exception):
    """A request that fails with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


SESSION = web.AppKey("session", aiohttp.ClientSession)
BACKEND = web.AppKey("backend", Backend)
PROPS = web.AppKey("props", dict)  # llama.cpp's /props per server URL, fetched once


def create_app(backend: Backend) -> web.Application:
    """The aiohttp application that serves Ollama's API for ``backend``."""
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_errors])
    app[BACKEND] = backend
    app[PROPS] = {}
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
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, read_bufsize=2**20
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
    try:
        return await handler(request)
    except ApiError as exc:
        return openai_error(exc.status, exc.message) if openai else error(exc.status, exc.message)
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")  # Ollama's (Gin's) words
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return openai_error(exc.status, exc.reason) if openai else error(exc.status, exc.reason)
    except aiohttp.ClientError as exc:
        message = f"the model server (llama.cpp) did not answer: {exc}. Restart the runtime."
        return openai_error(502, message) if openai else error(502, message)
    except Exception as exc:  # a bug here must not take the server down
        traceback.print_exc(file=sys.stderr)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return openai_error(500, message) if openai else error(500, message)


def _json(answer: Any, status: int = 200) -> web.Response:
    """A JSON answer, compact like Go's encoder writes it."""
    return web.Response(body=_line(answer)[:-1], status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    """An error in Ollama's shape: ``{"error": "..."}``."""
    return _json({"error": message}, status=status)


def openai_error(status: int, message: str) -> web.Response:
    """An error in OpenAI's shape, with the ``type`` Ollama's /v1 routes use."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return _json(body, status=status)


async def root(request: web.Request) -> web.Response:
    """Ollama's liveness answer."""
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    """GET /api/version."""
    return _json({"version": VERSION})


# --- Models: names, metadata, list, show, ps -----------------------------------------------


@dataclass(frozen=True)
class Model:
    """One model this runtime serves, and the llama.cpp server that runs it."""

    name: str  # Ollama-style "family:tag"
    path: Path
    url: str
    chat: bool  # True: completion (chat, generate); False: embeddings only


def all_models(backend: Backend) -> tuple[Model, Model]:
    """The chat model and the embedding model."""
    return (
        Model(backend.chat_model, backend.chat_model_path, backend.llama_url, chat=True),
        Model(backend.embed_model, backend.embed_model_path, backend.embed_url, chat=False),
    )


def find_model(backend: Backend, requested: str) -> Model | None:
    """The model a client means by ``requested``, matched the way Ollama matches names.

    The rule is ``labkit.models.match_model``'s, shared with the client and health checks.
    """
    name = match_model(requested, [model.name for model in all_models(backend)])
    return next((model for model in all_models(backend) if model.name == name), None)


def model_for(backend: Backend, body: dict[str, Any]) -> tuple[Model, str]:
    """The model a request names, and the name as written (Ollama echoes it back).

    Fails the way Ollama does when the request names no model, or one it does not have.
    """
    name = body.get("model") or body.get("name")  # older clients send "name"
    if name is None or name == "":
        raise ApiError(400, "model is required")
    if not isinstance(name, str):
        raise ApiError(400, f'"model" must be a string, got {_type_name(name)}')
    model = find_model(backend, name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    return model, name


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file says about its model (the same source Ollama reads)."""

    kv: dict[str, Any]
    tensors: list[dict[str, Any]]
    parameter_count: int

    @property
    def architecture(self) -> str:
        """The model's architecture, e.g. "llama" or "bert"."""
        return str(self.kv.get("general.architecture", ""))

    def get(self, key: str, default: int = 0) -> int:
        """An integer from the architecture's own keys, e.g. ``get("block_count")``."""
        value = self.kv.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default


_GGUF_CACHE: dict[tuple[str, int, int, bool], GgufInfo] = {}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_GGUF_SCALARS |= {10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


async def gguf_info(path: Path, *, verbose: bool = False) -> GgufInfo:
    """The GGUF metadata of ``path``, read once per file version (off the event loop)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, verbose)
    if key not in _GGUF_CACHE:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, read_gguf, path, verbose)
        if verbose:
            return info  # the full vocabulary is large; keep only the short form around
        _GGUF_CACHE[key] = info
    return _GGUF_CACHE[key]


def read_gguf(path: Path, verbose: bool = False) -> GgufInfo:
    """Read a GGUF header: its key/value metadata and its tensor list.

    Like ``ollama show``, arrays longer than five items (the vocabulary) are left out
    unless ``verbose``. The ``gguf`` package can read this too, but it loads every array
    and takes seconds; this walks the header in milliseconds.
    """
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        pos = 24

        def take(fmt: str) -> Any:
            nonlocal pos
            values = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize("<" + fmt)
            return values[0] if len(values) == 1 else values

        def string() -> str:
            nonlocal pos
            size = take("Q")
            pos += size
            return buf[pos - size : pos].decode("utf-8", "replace")

        def value(kind: int) -> Any:
            nonlocal pos
            if kind == _GGUF_STRING:
                return string()
            if kind != _GGUF_ARRAY:
                return _float32(take("f")) if kind == 6 else take(_GGUF_SCALARS[kind])
            item, count = take("I"), take("Q")
            if count <= 5 or verbose:
                return [value(item) for _ in range(count)]
            if item == _GGUF_STRING:  # skip without decoding: only the lengths matter
                for _ in range(count):
                    size = take("Q")  # (not "pos += take(...)": take() moves pos itself)
                    pos += size
            else:
                pos += count * struct.calcsize("<" + _GGUF_SCALARS[item])
            return []

        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            kv[key] = value(take("I"))
        tensors: list[dict[str, Any]] = []
        parameters = 0
        for _ in range(n_tensors):
            name = string()
            dims = take("I")
            shape = [take("Q") for _ in range(dims)]
            kind, _offset = take("I"), take("Q")
            tensors.append({"name": name, "type": _tensor_type(kind), "shape": shape})
            parameters += math.prod(shape)
    kv["general.parameter_count"] = parameters  # Ollama adds this key too
    return GgufInfo(kv, tensors, parameters)


def _float32(value: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06)."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == struct.pack("<f", value):
            return short
    return value


def _tensor_type(kind: int) -> str:
    import gguf  # only for its table of names; imported here as it pulls in numpy

    try:
        return str(gguf.GGMLQuantizationType(kind).name)
    except ValueError:
        return f"type{kind}"


def _file_type(info: GgufInfo) -> str:
    """The quantization level as Ollama names it ("Q4_1", "F16")."""
    import gguf

    with contextlib.suppress(KeyError, ValueError):
        name = str(gguf.LlamaFileType(int(info.kv["general.file_type"])).name)
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return ""


def _human_number(count: int) -> str:
    """Ollama's parameter size label: 134515008 → "134.52M"."""
    for limit, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if count >= limit:
            number = count / limit
            return f"{number:.0f}{unit}" if number.is_integer() else f"{number:.{decimals}f}{unit}"
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)


def _details(info: GgufInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": _human_number(info.parameter_count),
        "quantization_level": _file_type(info),
    }


def _timestamp(seconds: float) -> str:
    """A time the way Go writes it in JSON (RFC 3339, UTC, "Z")."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _digest(path: Path) -> str:
    # Ollama's digest identifies the model's manifest. Hashing a 100 MB file per request is
    # too slow, so this one hashes the path, size and time: stable while the file is.
    stat = path.stat()
    return hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime}".encode()).hexdigest()


async def model_entry(model: Model) -> dict[str, Any]:
    """One model in /api/tags shape."""
    stat = model.path.stat()
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": _timestamp(stat.st_mtime),
        "size": stat.st_size,
        "digest": _digest(model.path),
        "details": _details(await gguf_info(model.path)),
    }


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models this runtime has, most recently modified first."""
    entries = [await model_entry(m) for m in all_models(request.app[BACKEND])]
    entries.sort(key=lambda entry: str(entry["modified_at"]), reverse=True)
    return _json({"models": entries})


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


async def show(request: web.Request) -> web.Response:
    """POST /api/show: details, metadata and a Modelfile, filled from the GGUF file."""
    body = await read_object(request)
    model, _ = model_for(request.app[BACKEND], body)
    verbose = _field(body, "verbose", bool, False)
    info = await gguf_info(model.path, verbose=verbose)
    template = str(info.kv.get("tokenizer.chat_template", ""))
    license_text = str(info.kv.get("general.license", ""))
    n_ctx = await slot_context(request.app, model.url)
    parameters = f"{'num_ctx':<30} {n_ctx}" if n_ctx else ""
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {model.name}\n\n"
        f"FROM {model.path}\n"
        + (f'TEMPLATE """{template}"""\n' if template else "")
        + (f"PARAMETER num_ctx {n_ctx}\n" if n_ctx else "")
        + (f'LICENSE """{license_text}"""\n' if license_text else "")
    )
    model_info = {
        k: v for k, v in info.kv.items() if k not in ("general.name", "tokenizer.chat_template")
    }
    return _json(
        {
            "license": license_text,
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,  # llama.cpp applies it: Jinja, not Go's template syntax
            "details": _details(info),
            "model_info": model_info,
            "tensors": info.tensors,
            "capabilities": ["completion"] if model.chat else ["embedding"],
            "modified_at": _timestamp(model.path.stat().st_mtime),
        }
    )


def _kv_cache_bytes(info: GgufInfo, n_ctx: int) -> int:
    """Memory llama.cpp sets aside for keys and values (16-bit), for every context slot."""
    if "bert" in info.architecture:
        return 0  # encoder-only embedding models keep no cache
    heads, heads_kv = info.get("attention.head_count", 1), info.get("attention.head_count_kv")
    head_dim = info.get("attention.key_length") or info.get("embedding_length") // max(heads, 1)
    return info.get("block_count") * n_ctx * 2 * (heads_kv or heads) * head_dim * 2


async def ps(request: web.Request) -> web.Response:
    """GET /api/ps: the loaded models (both stay loaded while the runtime runs)."""
    # Ollama writes "forever" as now + the largest Go duration (about 292 years).
    forever = time.time() + (2**63 - 1) / 1e9
    entries = []
    for model in all_models(request.app[BACKEND]):
        props = await server_props(request.app, model.url)
        slots = int(props.get("total_slots", 1))
        n_ctx = await slot_context(request.app, model.url)
        info = await gguf_info(model.path)
        entry = await model_entry(model)
        del entry["modified_at"]
        entry["size"] += _kv_cache_bytes(info, n_ctx * slots)
        entry |= {"expires_at": _timestamp(forever), "size_vram": 0, "context_length": n_ctx}
        entries.append(entry)
    return _json({"models": entries})


# --- Checking requests ---------------------------------------------------------------------

T = TypeVar("T")

_TYPE_WORDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number"}
_TYPE_WORDS |= {str: "a string", list: "a list", dict: "an object", type(None): "null"}


def _type_name(value: object) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON in the request body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def _field(body: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """``body[key]`` if it has the right type; missing or null gives ``default``."""
    value = body.get(key)
    if value is None:
        return default
    wrong_number = kind in (int, float) and isinstance(value, bool)
    if kind is float and isinstance(value, int) and not wrong_number:
        value = float(value)
    if wrong_number or not isinstance(value, kind):
        raise ApiError(400, f'"{key}" must be {_TYPE_WORDS[kind]}, got {_type_name(value)}')
    return value


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h))+)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def check_keep_alive(body: dict[str, Any]) -> float | None:
    """Seconds that ``keep_alive`` asks for (a number, or a Go duration such as "5m").

    Checked like Ollama checks it; the runtime keeps its models loaded whatever it says.
    """
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if not _DURATION.fullmatch(value):
            raise ApiError(400, f'time: invalid duration "{value}"')
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
        return -seconds if value.startswith("-") else seconds
    raise ApiError(400, f"Unsupported type: '{_type_name(value)}' for keep_alive")


# Ollama's option → (llama.cpp's parameter, the type Ollama requires).
SAMPLING_OPTIONS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "min_p": ("min_p", float),
    "typical_p": ("typical_p", float),
    "repeat_last_n": ("repeat_last_n", int),
    "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "num_predict": ("n_predict", int),
    "num_keep": ("n_keep", int),
    "stop": ("stop", list),
}
# Options that size the model when Ollama loads it: checked, but the loaded runtime keeps
# its own settings (a context of 2048 tokens per request).
LOAD_OPTIONS: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "use_mmap": bool,
}


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's sampling parameters for Ollama's ``options`` (Ollama's defaults first)."""
    options = _field(body, "options", dict, {})
    params: dict[str, Any] = dict(OLLAMA_DEFAULTS)
    for key, value in options.items():
        if value is None:
            continue
        if key in SAMPLING_OPTIONS:
            name, kind = SAMPLING_OPTIONS[key]
            params[name] = _option(key, value, kind)
        elif key in LOAD_OPTIONS:
            _option(key, value, LOAD_OPTIONS[key])
        # Ollama ignores options it does not know (it logs a warning); so does this.
    return params


def _option(key: str, value: Any, kind: type) -> Any:
    """One option, type-checked with Ollama's rules and messages."""
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError(400, f'option "{key}" must be of an array of strings')
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ApiError(400, f'option "{key}" must be of type boolean')
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        word = "integer" if kind is int else "float32"
        raise ApiError(400, f'option "{key}" must be of type {word}')
    return int(value) if kind is int else float(value)


def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema that ``format`` asks for: "json" means any JSON object."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "object"}  # Ollama's JSON grammar starts with an object too
    if isinstance(value, dict):
        return value
    shown = json.dumps(value)
    raise ApiError(400, f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


def check_capabilities(body: dict[str, Any], label: str) -> None:
    """Refuse, as Ollama does, what the bundled model cannot do: tools, thinking, images."""
    think = body.get("think")
    if isinstance(think, str):
        raise ApiError(400, f'think value "{think}" is not supported for this model')
    if think is not None and not isinstance(think, bool):
        raise ApiError(400, f'"think" must be a boolean, got {_type_name(think)}')
    if think:
        raise ApiError(400, f'"{label}" does not support thinking')
    tools = _field(body, "tools", list, [])
    if tools:
        raise ApiError(400, f'"{label}" does not support tools')
    if _field(body, "images", list, []):
        raise ApiError(400, f'"{label}" does not support images (it is not a vision model)')
    if body.get("logprobs"):
        raise ApiError(400, "logprobs are not supported by this runtime")


def chat_messages(body: dict[str, Any], label: str) -> list[dict[str, str]]:
    """The conversation as llama.cpp wants it: role and content of each message."""
    messages = _field(body, "messages", list, [])
    checked = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with a role and a content")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ApiError(400, f'{where} needs a "role" ("system", "user", "assistant", ...)')
        content = _field(message, "content", str, "")
        if _field(message, "images", list, []):
            raise ApiError(400, f'"{label}" does not support images (it is not a vision model)')
        checked.append({"role": role, "content": content})
    return checked


# --- Chat and generate ---------------------------------------------------------------------


@dataclass
class Turn:
    """One generation: what to ask llama.cpp, and how to answer the client."""

    chat: bool  # /api/chat (message) or /api/generate (response)
    label: str  # the model name as the client wrote it; Ollama echoes it back
    url: str
    payload: dict[str, Any]
    stream: bool
    started: float  # perf_counter() when the request arrived
    loaded: float = 0.0  # when the model was ready (it always is: only checks come first)
    prompt: str | None = None  # generate: the full prompt, tokenized with the reply as context
    text: list[str] = field(default_factory=list)


@dataclass
class Piece:
    """One event from llama.cpp's stream: some text, the end, or an error."""

    text: str = ""
    done: str = ""  # "stop" or "length" on the last event
    timings: dict[str, Any] | None = None
    error: str = ""


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat, answered by llama.cpp's /v1/chat/completions."""
    started = time.perf_counter()
    body = await read_object(request)
    backend = request.app[BACKEND]
    model, label = model_for(backend, body)
    if not model.chat:
        raise ApiError(400, f'"{label}" does not support chat')
    if body.get("tools"):  # any model can call tools here: decoding is constrained to them
        return await tools.chat(
            request.app[SESSION], model.url, body, label, "ollama", sampling(body)
        )
    messages = chat_messages(body, label)
    stream = _field(body, "stream", bool, True)
    keep_alive = check_keep_alive(body)
    check_capabilities(body, label)
    payload: dict[str, Any] = {"messages": messages, "stream": True, **sampling(body)}
    if (schema := json_schema(body)) is not None:
        payload["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    if not messages:  # Ollama loads (or, with keep_alive 0, unloads) the model
        return _loaded(label, chat=True, unload=keep_alive == 0.0)
    url = model.url + "/v1/chat/completions"
    turn = Turn(True, label, url, payload, stream, started, loaded=time.perf_counter())
    return await relay(request, turn)


async def generate(request: web.Request) -> web.StreamResponse:
    """POST /api/generate, answered by llama.cpp's /completion with the chat template."""
    started = time.perf_counter()
    body = await read_object(request)
    backend = request.app[BACKEND]
    model, label = model_for(backend, body)
    if not model.chat:
        raise ApiError(400, f'"{label}" does not support generate')
    prompt = _field(body, "prompt", str, "")
    system = _field(body, "system", str, "")
    raw = _field(body, "raw", bool, False)
    context = _field(body, "context", list, [])
    template = _field(body, "template", str, "")
    stream = _field(body, "stream", bool, True)
    keep_alive = check_keep_alive(body)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise ApiError(400, '"context" must be a list of token ids (integers)')
    if raw and (template or system or context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    if _field(body, "suffix", str, ""):
        raise ApiError(400, f'"{label}" does not support insert')
    if template:
        raise ApiError(
            400,
            "custom templates are not supported here (the model's own chat template is "
            "always used); build the whole prompt yourself and send it with raw=true",
        )
    check_capabilities(body, label)
    payload: dict[str, Any] = {"stream": True, **sampling(body)}
    if (schema := json_schema(body)) is not None:
        payload["json_schema"] = schema
    if not prompt:
        return _loaded(label, chat=False, unload=keep_alive == 0.0)
    loaded = time.perf_counter()
    if not raw:
        prompt = await _templated(request.app, model, system, prompt, context)
    payload["prompt"] = prompt
    url = model.url + "/completion"
    turn = Turn(False, label, url, payload, stream, started, loaded, None if raw else prompt)
    return await relay(request, turn)


async def _templated(
    app: web.Application, model: Model, system: str, prompt: str, context: list[int]
) -> str:
    """Ollama's prompt: earlier context (as text), then the template applied to the turn."""
    session = app[SESSION]
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    templated = await _post_json(session, model.url + "/apply-template", {"messages": messages})
    if not context:
        return str(templated["prompt"])
    vocabulary = (await gguf_info(model.path)).get("vocab_size")
    if vocabulary and not all(0 <= token < vocabulary for token in context):
        raise ApiError(400, f'"context" holds token ids outside 0..{vocabulary - 1}')
    earlier = await _post_json(session, model.url + "/detokenize", {"tokens": context})
    return str(earlier["content"]) + str(templated["prompt"])


def _loaded(label: str, *, chat: bool, unload: bool) -> web.Response:
    """Ollama's answer to a request without input: the model is (un)loaded, nothing said."""
    answer: dict[str, Any] = {"model": label, "created_at": _timestamp(time.time())}
    if chat:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer |= {"done": True, "done_reason": "unload" if unload else "load"}
    return _json(answer)


async def _post_json(session: aiohttp.ClientSession, url: str, payload: Any) -> Any:
    """POST to llama.cpp and return its JSON, turning its errors into Ollama's."""
    async with session.post(url, json=payload) as reply:
        if reply.status != 200:
            raise ApiError(reply.status, await _upstream_error(reply))
        return await reply.json()


async def _upstream_error(reply: aiohttp.ClientResponse) -> str:
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


def _check_connected(request: web.Request) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone


async def _unless_client_leaves(request: web.Request, pending: Awaitable[T]) -> T:
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
            _check_connected(request)
        except ClientGone:
            task.cancel()
            raise


async def relay(request: web.Request, turn: Turn) -> web.StreamResponse:
    """Ask llama.cpp (always streaming) and answer the client as the turn wants."""
    session = request.app[SESSION]
    try:
        upstream = await _unless_client_leaves(request, session.post(turn.url, json=turn.payload))
    except ClientGone:
        return web.Response(status=499)  # nginx's "client closed request"; nobody reads it
    try:
        if upstream.status != 200:
            raise ApiError(upstream.status, await _upstream_error(upstream))
        pieces = _pieces(upstream, chat=turn.chat)
        if turn.stream:
            return await _stream_answer(request, turn, pieces)
        return await _whole_answer(request, turn, pieces)
    except (ClientGone, ConnectionResetError):
        return web.Response(status=499)
    finally:
        # Closing our side mid-answer is what makes llama.cpp stop decoding for a client
        # that left; after a complete answer it just ends a finished connection.
        upstream.close()


async def _pieces(upstream: aiohttp.ClientResponse, *, chat: bool) -> AsyncIterator[Piece]:
    """Parse llama.cpp's server-sent events as they arrive, one line at a time."""
    async for line in upstream.content:
        if line.startswith(b"error:"):
            yield Piece(error=_event_error(json.loads(line[6:])))
            continue
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            yield Piece(error=_event_error(event))
            continue
        if chat:  # OpenAI's chunks: the text is in choices[0].delta
            choice = event["choices"][0] if event.get("choices") else {}
            text = (choice.get("delta") or {}).get("content") or ""
            stop = choice.get("finish_reason") or ""
            if stop:
                stop = "length" if stop == "length" else "stop"
        else:  # llama.cpp's own chunks: "content", and "stop" on the last one
            text = event.get("content") or ""
            stop = ""
            if event.get("stop"):
                stop = "length" if event.get("stop_type") == "limit" else "stop"
        if text:
            yield Piece(text)
        if stop:
            # The closing event carries llama.cpp's own counts and timings.
            yield Piece(done=stop, timings=event.get("timings"))


def _event_error(event: Any) -> str:
    found = event.get("error", event) if isinstance(event, dict) else event
    return str(found.get("message", found) if isinstance(found, dict) else found)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def _stream_answer(
    request: web.Request, turn: Turn, pieces: AsyncIterator[Piece]
) -> web.StreamResponse:
    """Write one NDJSON line per piece of text, then the closing object."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        async for piece in pieces:
            _check_connected(request)
            if piece.error:
                await response.write(_line({"error": piece.error}))
                break
            if piece.done:
                await response.write(_line(await _closing(request, turn, piece)))
            elif piece.text:
                turn.text.append(piece.text)
                await response.write(_line(_chunk(turn, piece.text)))
    except (ApiError, aiohttp.ClientError, ValueError) as exc:
        # The status line is gone already: Ollama reports a late failure as a last line.
        await response.write(_line({"error": str(exc)}))
    await response.write_eof()
    return response


async def _whole_answer(
    request: web.Request, turn: Turn, pieces: AsyncIterator[Piece]
) -> web.Response:
    """Collect the stream (watching for a client that leaves), then answer once."""
    closing: dict[str, Any] = {}
    async for piece in pieces:
        _check_connected(request)
        if piece.error:
            raise ApiError(500, piece.error)
        if piece.done:
            closing = await _closing(request, turn, piece)
        else:
            turn.text.append(piece.text)
    if not closing:
        raise ApiError(500, "the model server ended its answer early")
    whole = "".join(turn.text)
    if turn.chat:
        closing["message"]["content"] = whole
    else:
        closing["response"] = whole
    return _json(closing)


def _chunk(turn: Turn, text: str) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": turn.label, "created_at": _timestamp(time.time())}
    if turn.chat:
        chunk["message"] = {"role": "assistant", "content": text}
    else:
        chunk["response"] = text
    chunk["done"] = False
    return chunk


def _ns(milliseconds: float) -> int:
    return round(milliseconds * 1_000_000)


async def _closing(request: web.Request, turn: Turn, piece: Piece) -> dict[str, Any]:
    """The final object: why it stopped, llama.cpp's counts and times, our wall clock."""
    closing = _chunk(turn, "")
    closing["done"] = True
    closing["done_reason"] = piece.done
    if turn.prompt is not None:
        # Ollama's "context": the tokens of prompt and reply, to send back next time.
        whole = turn.prompt + "".join(turn.text)
        tokens = await _post_json(
            request.app[SESSION],
            turn.url.removesuffix("/completion") + "/tokenize",
            {"content": whole, "add_special": True, "parse_special": True},
        )
        closing["context"] = tokens["tokens"]
    timings = piece.timings or {}
    closing |= {
        "total_duration": round((time.perf_counter() - turn.started) * 1e9),
        "load_duration": max(1, round((turn.loaded - turn.started) * 1e9)),
        # llama.cpp counts only the prompt tokens it had to evaluate (cache_n were reused);
        # Ollama users read this field as the prompt's length, so report both together.
        "prompt_eval_count": int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0)),
        "prompt_eval_duration": _ns(float(timings.get("prompt_ms", 0.0))),
        "eval_count": int(timings.get("predicted_n", 0)),
        "eval_duration": _ns(float(timings.get("predicted_ms", 0.0))),
    }
    return closing


# --- Embeddings ----------------------------------------------------------------------------


def _embedding_model(backend: Backend, body: dict[str, Any]) -> tuple[Model, str]:
    model, label = model_for(backend, body)
    if model.chat:
        raise ApiError(400, f'"{label}" does not support embeddings; use "{backend.embed_model}"')
    return model, label


async def embed(request: web.Request) -> web.Response:
    """POST /api/embed: one normalized vector per input, via llama.cpp's /v1/embeddings."""
    started = time.perf_counter()
    body = await read_object(request)
    model, label = _embedding_model(request.app[BACKEND], body)
    given = body.get("input")
    if isinstance(given, str):
        texts = [given] if given else []
    elif isinstance(given, list) and all(isinstance(t, str) for t in given):
        texts = given
    elif given is None:
        texts = []
    else:
        raise ApiError(400, "invalid input type")
    truncate = _field(body, "truncate", bool, True)
    dimensions = _field(body, "dimensions", int, 0)
    check_keep_alive(body)
    if not texts:  # Ollama's "load the model" answer
        return _json({"model": label, "embeddings": []})
    if empty := [n for n, text in enumerate(texts) if not text]:
        raise ApiError(400, f"input {empty[0]} is an empty string; embeddings need some text")
    loaded = time.perf_counter()
    inputs = await _fit_context(request.app, model, texts, truncate)
    answer = await _post_json(
        request.app[SESSION],
        model.url + "/v1/embeddings",
        {"input": inputs, "encoding_format": "float"},
    )
    vectors = [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])]
    if 0 < dimensions < len(vectors[0]):
        vectors = [_normalize(v[:dimensions]) for v in vectors]
    return _json(
        {
            "model": label,
            "embeddings": vectors,
            "total_duration": round((time.perf_counter() - started) * 1e9),
            "load_duration": max(1, round((loaded - started) * 1e9)),
            "prompt_eval_count": int(answer.get("usage", {}).get("prompt_tokens", 0)),
        }
    )


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


async def _fit_context(
    app: web.Application, model: Model, texts: list[str], truncate: bool
) -> list[str | list[int]]:
    """Each text, or its tokens cut to the model's context when it is too long."""
    limit = await slot_context(app, model.url)
    fitted: list[str | list[int]] = []
    for text in texts:
        # A token covers at least one byte, so a short text cannot be too long: skip the
        # tokenizer for it (two special tokens may be added around it).
        if not limit or len(text.encode()) + 2 <= limit:
            fitted.append(text)
            continue
        session = app[SESSION]
        url = model.url + "/tokenize"
        tokens = (await _post_json(session, url, {"content": text, "add_special": True}))["tokens"]
        if len(tokens) <= limit:
            fitted.append(text)
            continue
        if not truncate:
            raise ApiError(400, "input exceeds maximum context length")
        plain = (await _post_json(session, url, {"content": text, "add_special": False}))["tokens"]
        # Keep the special token that closes the input ([SEP] for BERT), if one was added.
        closing = tokens[-1:] if plain and tokens[-1] != plain[-1] else []
        fitted.append(tokens[: limit - len(closing)] + closing)
    return fitted


async def embeddings(request: web.Request) -> web.Response:
    """POST /api/embeddings (the older endpoint): ``prompt`` → one raw, unnormalized vector."""
    body = await read_object(request)
    backend = request.app[BACKEND]
    name = body.get("model")
    if name and isinstance(name, str) and find_model(backend, name) is None:
        # This older endpoint words "not found" differently in Ollama too.
        raise ApiError(404, f'model "{name}" not found, try pulling it first')
    model, _label = _embedding_model(backend, body)
    prompt = _field(body, "prompt", str, "")
    check_keep_alive(body)
    if not prompt:
        return _json({"embedding": []})
    answer = await _post_json(
        request.app[SESSION],
        model.url + "/embedding",
        {"content": prompt, "embd_normalize": -1},  # Ollama does not normalize here
    )
    # llama.cpp answers [{"index": 0, "embedding": [[...pooled vector...]]}].
    vector = answer[0]["embedding"]
    return _json({"embedding": vector[0] if isinstance(vector[0], list) else vector})


# --- Model management: the models are bundled ----------------------------------------------

BUNDLED = (
    "this runtime serves only the models bundled with the kit ({models}); it cannot "
    "download, create, copy, push or delete models. To work with other models, install "
    "Ollama (https://ollama.com) and point labkit at it with LABKIT_BASE_URL."
)


async def pull(request: web.Request) -> web.Response:
    """POST /api/pull: a bundled model is already here (success); anything else cannot be."""
    body = await read_object(request)
    backend = request.app[BACKEND]
    name = body.get("model") or body.get("name")
    if not name or not isinstance(name, str):
        raise ApiError(400, "model is required")
    if find_model(backend, name) is None:
        return _bundled_error(backend)
    if _field(body, "stream", bool, True):
        return web.Response(body=_line({"status": "success"}), content_type="application/x-ndjson")
    return _json({"status": "success"})


async def bundled_only(request: web.Request) -> web.Response:
    """push, create, copy, delete, blobs: not possible here (501, with what to do)."""
    return _bundled_error(request.app[BACKEND])


def _bundled_error(backend: Backend) -> web.Response:
    models = ", ".join(m.name for m in all_models(backend))
    return error(501, BUNDLED.format(models=models))


# --- OpenAI's dialect (/v1), forwarded to llama.cpp -----------------------------------------


def _openai_model(model: Model) -> dict[str, Any]:
    created = int(model.path.stat().st_mtime)
    return {"id": model.name, "object": "model", "created": created, "owned_by": "library"}


async def openai_models(request: web.Request) -> web.Response:
    """GET /v1/models in OpenAI's shape, listing both models."""
    data = [_openai_model(m) for m in all_models(request.app[BACKEND])]
    return _json({"object": "list", "data": data})


async def openai_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one model, or OpenAI's 404."""
    name = request.match_info["model"]
    model = find_model(request.app[BACKEND], name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    return _json(_openai_model(model))


async def forward_openai(request: web.Request) -> web.StreamResponse:
    """Forward an OpenAI-style request, byte for byte, to the llama.cpp server of its model."""
    backend = request.app[BACKEND]
    body = await read_object(request)
    model, label = model_for(backend, body)
    wants_embeddings = request.path.endswith("/embeddings")
    if model.chat == wants_embeddings:
        what = "embeddings" if wants_embeddings else "completions"
        raise ApiError(400, f'"{label}" does not support {what}')
    session = request.app[SESSION]
    if body.get("tools") and request.path.endswith("/chat/completions"):
        return await tools.chat(
            session, model.url, body, label, "openai", tools.openai_sampling(body)
        )
    try:
        upstream = await _unless_client_leaves(
            request, session.post(model.url + request.path, json=body)
        )
    except ClientGone:
        return web.Response(status=499)
    try:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        # Pass bytes through as they come: streaming must stay streaming.
        async for chunk in upstream.content.iter_any():
            _check_connected(request)
            await response.write(chunk)
        await response.write_eof()
        return response
    except (ClientGone, ConnectionResetError):
        return web.Response(status=499)
    finally:
        upstream.close()  # a client that left: llama.cpp stops when the connection drops
