"""``/api/embed`` and ``/api/embeddings``: vectors from llama.cpp's embedding server."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from labkit.runtime.catalog import Model, find_model, model_for
from labkit.runtime.checks import check_keep_alive
from labkit.runtime.common import (
    BACKEND,
    LOAD,
    SESSION,
    ApiError,
    Backend,
    check_connected,
    field_of,
    json_answer,
    post_json,
    read_object,
    shown,
    slot_context,
)
from labkit.runtime.fairshare import fair_turn
from labkit.runtime.vectors import cache_for

__all__ = [
    "EMBED_BATCH",
    "TOKEN_BYTES",
    "embed",
    "embeddings",
    "fit_context",
]

EMBED_BATCH = 16  # inputs per request to llama.cpp
# Ordinary text averages 3 to 5 bytes a token; 32 is a margin only long runs of blank space
# exceed (SmolLM2 has an 81-byte token of spaces), so more text than this cannot fit.
TOKEN_BYTES = 32


def _embedding_model(backend: Backend, body: dict[str, Any]) -> tuple[Model, str]:
    model, label = model_for(backend, body)
    if model.chat:
        raise ApiError(400, f'"{label}" does not support embeddings; use "{backend.embed_model}"')
    return model, label


async def embed(request: web.Request) -> web.Response:
    """POST /api/embed: one normalized vector per input, via llama.cpp's /v1/embeddings.

    Texts embedded before come from the runtime's cache (``vectors.py``). As in Ollama,
    ``prompt_eval_count`` is the number of tokens of every input, cached or not.
    """
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
    truncate = field_of(body, "truncate", bool, True)
    dimensions = field_of(body, "dimensions", int, 0)
    check_keep_alive(body)
    if not texts:  # Ollama's "load the model" answer
        return json_answer({"model": label, "embeddings": []})
    if empty := [n for n, text in enumerate(texts) if not text]:
        raise ApiError(400, f"input {empty[0]} is an empty string; embeddings need some text")
    loaded = time.perf_counter()
    vectors: list[list[float]] = []
    tokens = 0
    # In batches, so other requests get their turn in between and a client that leaves
    # stops the work within one batch.
    load = request.app[LOAD]
    cache = cache_for(model.url)
    for start in range(0, len(texts), EMBED_BATCH):
        check_connected(request)
        batch_started = time.perf_counter()
        inputs = await fit_context(request.app, model, texts[start : start + EMBED_BATCH], truncate)
        found = [cache.get(model.name, given) for given in inputs]
        todo = [n for n, entry in enumerate(found) if entry is None]
        if todo:  # else every text was embedded before: nothing for llama.cpp to do
            async with fair_turn(request, model.url):  # the learner's turn (fairshare.py)
                answer = await post_json(
                    request.app[SESSION],
                    model.url + "/v1/embeddings",
                    {"input": [inputs[n] for n in todo], "encoding_format": "float"},
                )
            data = sorted(answer["data"], key=lambda d: d["index"])
            counts = await _token_counts(request.app, model, [inputs[n] for n in todo], answer)
            for n, item, count in zip(todo, data, counts, strict=True):
                found[n] = (item["embedding"], count)
                cache.put(model.name, inputs[n], item["embedding"], count)
        for entry in found:
            if entry is not None:
                vectors.append(entry[0])
                tokens += entry[1]
        if todo and load.generating and start + EMBED_BATCH < len(texts):
            # Someone waits for generated tokens, and both share the CPU: rest as long as
            # the batch took, so a long embedding takes at most half of it meanwhile.
            await asyncio.sleep(time.perf_counter() - batch_started)
    if 0 < dimensions < len(vectors[0]):
        vectors = [_normalize(v[:dimensions]) for v in vectors]
    return json_answer(
        {
            "model": label,
            "embeddings": vectors,
            "total_duration": round((time.perf_counter() - started) * 1e9),
            "load_duration": max(1, round((loaded - started) * 1e9)),
            "prompt_eval_count": tokens,
        }
    )


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


async def _token_counts(
    app: web.Application, model: Model, inputs: list[str | list[int]], answer: dict[str, Any]
) -> list[int]:
    """The tokens of each input of one answered batch (llama.cpp reports only their sum)."""
    if len(inputs) == 1:
        return [int(answer.get("usage", {}).get("prompt_tokens", 0))]

    async def count(given: str | list[int]) -> int:
        if isinstance(given, list):  # already tokens: a text cut to the context
            return len(given)
        return len(await _tokenize(app, model, given, special=True))

    return list(await asyncio.gather(*(count(given) for given in inputs)))


async def _tokenize(app: web.Application, model: Model, text: str, *, special: bool) -> list[int]:
    """``text`` as the model's tokens (with the special ones it adds around an input, if asked)."""
    url = model.url + "/tokenize"
    answer = await post_json(app[SESSION], url, {"content": text, "add_special": special})
    return list(answer["tokens"])


async def fit_context(
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
        # Whatever fits the context lies in the first few KB: tokenizing megabytes only to
        # drop them costs the model server memory it never gives back.
        head = text.encode()[: limit * TOKEN_BYTES].decode(errors="ignore")
        if head != text and not truncate:
            raise ApiError(400, "input exceeds maximum context length")
        text = head
        tokens = await _tokenize(app, model, text, special=True)
        if len(tokens) <= limit:
            fitted.append(text)
            continue
        if not truncate:
            raise ApiError(400, "input exceeds maximum context length")
        plain = await _tokenize(app, model, text, special=False)
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
        raise ApiError(404, f'model "{shown(name)}" not found, try pulling it first')
    model, _label = _embedding_model(backend, body)
    prompt = field_of(body, "prompt", str, "")
    check_keep_alive(body)
    if not prompt:
        return json_answer({"embedding": []})
    content = (await fit_context(request.app, model, [prompt], truncate=True))[0]
    async with fair_turn(request, model.url):  # the learner's turn (fairshare.py)
        answer = await post_json(
            request.app[SESSION],
            model.url + "/embedding",
            {"content": content, "embd_normalize": -1},  # Ollama does not normalize here
        )
    # llama.cpp answers [{"index": 0, "embedding": [[...pooled vector...]]}].
    vector = answer[0]["embedding"]
    return json_answer({"embedding": vector[0] if isinstance(vector[0], list) else vector})
