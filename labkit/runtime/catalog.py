"""The models: list (``/api/tags``), show, ps, version, and pull for the bundled models."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from labkit.runtime.common import (
    BACKEND,
    ApiError,
    Backend,
    error,
    field_of,
    json_answer,
    ndjson_line,
    read_object,
    server_props,
    slot_context,
    timestamp,
    type_name,
)
from labkit.runtime.gguf import GgufInfo, file_type, gguf_info, human_number

__all__ = [
    "BUNDLED",
    "VERSION",
    "Model",
    "all_models",
    "bundled_only",
    "details",
    "find_model",
    "model_entry",
    "model_for",
    "ps",
    "pull",
    "root",
    "show",
    "tags",
    "version",
]

VERSION = "0.12.0"  # the Ollama API version whose shapes this module follows


async def root(request: web.Request) -> web.Response:
    """Ollama's liveness answer."""
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    """GET /api/version."""
    return json_answer({"version": VERSION})


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

    Names are case-insensitive and may carry Ollama's default registry prefix. A bare family
    name ("smollm2") also finds the bundled tag: real Ollama would read it as
    "smollm2:latest", a different model that this runtime does not have.
    """
    wanted = requested.strip().lower()
    wanted = wanted.removeprefix("registry.ollama.ai/").removeprefix("library/")
    for model in all_models(backend):
        if wanted in (model.name, model.name.split(":")[0]):
            return model
    return None


def model_for(backend: Backend, body: dict[str, Any]) -> tuple[Model, str]:
    """The model a request names, and the name as written (Ollama echoes it back).

    Fails the way Ollama does when the request names no model, or one it does not have.
    """
    name = body.get("model") or body.get("name")  # older clients send "name"
    if name is None or name == "":
        raise ApiError(400, "model is required")
    if not isinstance(name, str):
        raise ApiError(400, f'"model" must be a string, got {type_name(name)}')
    model = find_model(backend, name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    return model, name


def details(info: GgufInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": human_number(info.parameter_count),
        "quantization_level": file_type(info),
    }


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
        "modified_at": timestamp(stat.st_mtime),
        "size": stat.st_size,
        "digest": _digest(model.path),
        "details": details(await gguf_info(model.path)),
    }


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models this runtime has, most recently modified first."""
    entries = [await model_entry(m) for m in all_models(request.app[BACKEND])]
    entries.sort(key=lambda entry: str(entry["modified_at"]), reverse=True)
    return json_answer({"models": entries})


async def show(request: web.Request) -> web.Response:
    """POST /api/show: details, metadata and a Modelfile, filled from the GGUF file."""
    body = await read_object(request)
    model, _ = model_for(request.app[BACKEND], body)
    verbose = field_of(body, "verbose", bool, False)
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
    return json_answer(
        {
            "license": license_text,
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,  # llama.cpp applies it: Jinja, not Go's template syntax
            "details": details(info),
            "model_info": model_info,
            "tensors": info.tensors,
            "capabilities": ["completion"] if model.chat else ["embedding"],
            "modified_at": timestamp(model.path.stat().st_mtime),
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
        entry |= {"expires_at": timestamp(forever), "size_vram": 0, "context_length": n_ctx}
        entries.append(entry)
    return json_answer({"models": entries})


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
    if field_of(body, "stream", bool, True):
        return web.Response(
            body=ndjson_line({"status": "success"}), content_type="application/x-ndjson"
        )
    return json_answer({"status": "success"})


async def bundled_only(request: web.Request) -> web.Response:
    """push, create, copy, delete, blobs: not possible here (501, with what to do)."""
    return _bundled_error(request.app[BACKEND])


def _bundled_error(backend: Backend) -> web.Response:
    models = ", ".join(m.name for m in all_models(backend))
    return error(501, BUNDLED.format(models=models))
