"""OpenAI's dialect (``/v1/*``): forwarded to the llama.cpp server of the model, documented fields only."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from labkit.runtime import tools
from labkit.runtime.catalog import Model, all_models, find_model, model_for
from labkit.runtime.common import (
    BACKEND,
    SESSION,
    ApiError,
    ClientGone,
    check_connected,
    field_of,
    json_answer,
    read_object,
    shown,
    slot_context,
    type_name,
    unless_client_leaves,
    upstream_error,
)
from labkit.runtime.embed import fit_context
from labkit.runtime.fairshare import fair_turn, generation_turn
from labkit.runtime.fields import limit_cost, openai_fields

__all__ = [
    "forward_openai",
    "openai_model",
    "openai_models",
]


def _openai_model(model: Model) -> dict[str, Any]:
    created = int(model.path.stat().st_mtime)
    return {"id": model.name, "object": "model", "created": created, "owned_by": "library"}


async def openai_models(request: web.Request) -> web.Response:
    """GET /v1/models in OpenAI's shape, listing both models."""
    data = [_openai_model(m) for m in all_models(request.app[BACKEND])]
    return json_answer({"object": "list", "data": data})


async def openai_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one model, or OpenAI's 404."""
    name = request.match_info["model"]
    model = find_model(request.app[BACKEND], name)
    if model is None:
        raise ApiError(404, f"model '{shown(name)}' not found")
    return json_answer(_openai_model(model))


async def forward_openai(request: web.Request) -> web.StreamResponse:
    """Forward an OpenAI-style request to the llama.cpp server of its model."""
    backend = request.app[BACKEND]
    body = await read_object(request)
    model, label = model_for(backend, body)
    wants_embeddings = request.path.endswith("/embeddings")
    if model.chat == wants_embeddings:
        what = "embeddings" if wants_embeddings else "completions"
        raise ApiError(400, f'"{label}" does not support {what}')
    body = openai_fields(request.path, body)  # only what the kit documents reaches llama.cpp
    if wants_embeddings:
        body["input"] = await _fitted_input(request, model, body.get("input"))
        async with fair_turn(request, model.url):  # the learner's turn (fairshare.py)
            return await _forward(request, model.url + request.path, body)
    if body.get("tools"):
        # Tools are checked by the tool module (its messages say exactly what is wrong and it
        # bounds their cost); the rest of the request as any other.
        rest = {key: value for key, value in body.items() if key != "tools"}
        checked = await limit_cost(request.app, model.url, rest)
        async with generation_turn(request, model.url):  # the learner's turn (fairshare.py)
            return await tools.chat(
                request.app[SESSION],
                model.url,
                body,
                label,
                "openai",
                tools.openai_sampling(checked),
            )
    _check_tools(body.get("tools"))
    body = await limit_cost(request.app, model.url, body)
    async with generation_turn(request, model.url):  # the learner's turn (fairshare.py)
        return await _forward_generation(request, model.url + request.path, body)


async def _forward_generation(
    request: web.Request, url: str, body: dict[str, Any]
) -> web.StreamResponse:
    """Forward a completion; a non-streamed one is collected here from llama.cpp's stream."""
    if not field_of(body, "stream", bool, False) and "tools" not in body:
        # llama.cpp keeps decoding a non-streamed answer for a client that left; a streamed
        # one stops when we hang up. So ask for a stream and put the answer together here.
        return await _collected(request, url, body)
    return await _forward(request, url, body)


async def _forward(request: web.Request, url: str, body: dict[str, Any]) -> web.StreamResponse:
    """Pass the request on and llama.cpp's answer back, byte for byte."""
    session = request.app[SESSION]
    try:
        upstream = await unless_client_leaves(request, session.post(url, json=body))
    except ClientGone:
        return web.Response(status=499)
    try:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        # Pass bytes through as they come: streaming must stay streaming.
        async for chunk in upstream.content.iter_any():
            check_connected(request)
            await response.write(chunk)
        await response.write_eof()
        return response
    except (ClientGone, ConnectionResetError):
        return web.Response(status=499)
    finally:
        upstream.close()  # a client that left: llama.cpp stops when the connection drops


def _check_tools(tools: Any) -> None:
    """Refuse (400) tools that are not functions with a name before llama.cpp sees them."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, f'"tools" must be a list, got {type_name(tools)}')
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not name:
            raise ApiError(
                400,
                f'tools[{number}] must be {{"type": "function", "function": {{"name": ..., '
                '"parameters": {...}}}',
            )


async def _fitted_input(request: web.Request, model: Model, given: Any) -> Any:
    """The input, each text cut to the model's context as Ollama's /v1/embeddings does."""
    if isinstance(given, str) and given:
        return (await fit_context(request.app, model, [given], truncate=True))[0]
    if isinstance(given, list) and given and all(isinstance(t, str) and t for t in given):
        return await fit_context(request.app, model, given, truncate=True)
    lists = [given] if _token_list(given) else given if isinstance(given, list) else []
    limit = await slot_context(request.app, model.url)
    for number, tokens in enumerate(lists):
        if _token_list(tokens) and limit and len(tokens) > limit:
            raise ApiError(
                400,
                f"input {number} is {len(tokens)} tokens; the limit is {limit} tokens per "
                "input (the model's context): cut the list, or send the text, which is cut "
                "to fit",
            )
    return given  # other mistakes (bad token ids, empty lists): llama.cpp answers those


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in value
    )


async def _collected(request: web.Request, url: str, body: dict[str, Any]) -> web.Response:
    """Ask llama.cpp for a stream and answer once with the whole reply, in OpenAI's shape."""
    session = request.app[SESSION]
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    try:
        upstream = await unless_client_leaves(request, session.post(url, json=payload))
    except ClientGone:
        return web.Response(status=499)
    try:
        if upstream.status != 200:
            raise ApiError(upstream.status, await upstream_error(upstream))
        return json_answer(await _assemble(request, upstream))
    except (ClientGone, ConnectionResetError):
        return web.Response(status=499)
    finally:
        upstream.close()  # mid-answer, this is what stops llama.cpp for a client that left


async def _assemble(request: web.Request, upstream: Any) -> dict[str, Any]:
    """The non-streamed answer built from llama.cpp's chunks."""
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, list[Any]] = {}
    finish: dict[int, str | None] = {}
    last: dict[str, Any] = {}
    chat = True
    async for line in upstream.content:
        check_connected(request)
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        if not isinstance(event, dict):
            continue  # llama.cpp opens a stream of several prompts with "data: null"
        if "error" in event:
            raise ApiError(500, str(event["error"]))
        last = event
        for choice in event.get("choices") or []:
            index = int(choice.get("index", 0))
            chat = "delta" in choice
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            texts.setdefault(index, []).append(piece or "")
            finish[index] = choice.get("finish_reason") or finish.get(index)
            found = choice.get("logprobs")
            if isinstance(found, dict) and isinstance(found.get("content"), list):
                logprobs.setdefault(index, []).extend(found["content"])
    if not last:
        raise ApiError(500, "the model server ended its answer early")
    choices = []
    for index in sorted(texts):
        text = "".join(texts[index])
        whole: dict[str, Any] = {"finish_reason": finish.get(index), "index": index}
        found = {"content": logprobs[index]} if index in logprobs else None
        if chat:
            whole["message"] = {"role": "assistant", "content": text}
            if found:
                whole["logprobs"] = found
        else:
            whole |= {"text": text, "logprobs": found}
        choices.append(whole)
    answer: dict[str, Any] = {
        key: last[key] for key in ("created", "model", "system_fingerprint") if key in last
    }
    answer |= {"choices": choices, "object": "chat.completion" if chat else "text_completion"}
    answer |= {key: last[key] for key in ("usage", "id", "timings") if key in last}
    return answer
