"""``/api/chat`` and ``/api/generate``: Ollama's requests asked of llama.cpp, answers translated back."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from labkit.runtime import tools
from labkit.runtime.catalog import Model, model_for
from labkit.runtime.checks import (
    chat_messages,
    check_capabilities,
    check_keep_alive,
    json_schema,
    sampling,
)
from labkit.runtime.common import (
    BACKEND,
    SESSION,
    ApiError,
    ClientGone,
    check_connected,
    field_of,
    json_answer,
    ndjson_line,
    post_json,
    read_object,
    slot_context,
    timestamp,
    unless_client_leaves,
    upstream_error,
)
from labkit.runtime.fairshare import generation_turn
from labkit.runtime.fields import limit_cost
from labkit.runtime.gguf import gguf_info

__all__ = [
    "Piece",
    "Turn",
    "chat",
    "generate",
    "relay",
]

# llama.cpp's names of the options whose cost is checked, as an Ollama client writes them.
OPTION_NAMES = {
    "n_predict": "options.num_predict",
    "stop": "options.stop",
    "repeat_last_n": "options.repeat_last_n",
}


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
        asked = {"messages": body.get("messages"), **sampling(body)}
        checked = await limit_cost(request.app, model.url, asked, OPTION_NAMES)
        del checked["messages"]
        async with generation_turn(request, model.url):  # the learner's turn (fairshare.py)
            return await tools.chat(request.app[SESSION], model.url, body, label, "ollama", checked)
    messages = chat_messages(body, label)
    stream = field_of(body, "stream", bool, True)
    keep_alive = check_keep_alive(body)
    check_capabilities(body, label)
    payload: dict[str, Any] = {"messages": messages, "stream": True, **sampling(body)}
    if (schema := json_schema(body)) is not None:
        payload["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    payload = await limit_cost(request.app, model.url, payload, OPTION_NAMES)
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
    prompt = field_of(body, "prompt", str, "")
    system = field_of(body, "system", str, "")
    raw = field_of(body, "raw", bool, False)
    context = field_of(body, "context", list, [])
    template = field_of(body, "template", str, "")
    stream = field_of(body, "stream", bool, True)
    keep_alive = check_keep_alive(body)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise ApiError(400, '"context" must be a list of token ids (integers)')
    if raw and (template or system or context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    if field_of(body, "suffix", str, ""):
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
    asked = {**payload, "prompt": f"{system}\n{prompt}" if system else prompt}
    payload = await limit_cost(request.app, model.url, asked, OPTION_NAMES)
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
    templated = await post_json(session, model.url + "/apply-template", {"messages": messages})
    if not context:
        return str(templated["prompt"])
    n_ctx = await slot_context(app, model.url)
    if n_ctx and len(context) > n_ctx:
        # More tokens than the model reads at once can never fit; detokenizing them would
        # only cost the model server memory.
        raise ApiError(
            400,
            f'"context" holds {len(context)} tokens; the limit is {n_ctx} (the context): '
            "start a new conversation, or send a shorter one",
        )
    vocabulary = (await gguf_info(model.path)).get("vocab_size")
    if vocabulary and not all(0 <= token < vocabulary for token in context):
        raise ApiError(400, f'"context" holds token ids outside 0..{vocabulary - 1}')
    earlier = await post_json(session, model.url + "/detokenize", {"tokens": context})
    return str(earlier["content"]) + str(templated["prompt"])


def _loaded(label: str, *, chat: bool, unload: bool) -> web.Response:
    """Ollama's answer to a request without input: the model is (un)loaded, nothing said."""
    answer: dict[str, Any] = {"model": label, "created_at": timestamp(time.time())}
    if chat:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer |= {"done": True, "done_reason": "unload" if unload else "load"}
    return json_answer(answer)


async def relay(request: web.Request, turn: Turn) -> web.StreamResponse:
    """Ask llama.cpp (always streaming) and answer the client as the turn wants."""
    async with generation_turn(request, turn.url):  # the learner's turn (fairshare.py)
        return await _relay(request, turn)


async def _relay(request: web.Request, turn: Turn) -> web.StreamResponse:
    session = request.app[SESSION]
    try:
        upstream = await unless_client_leaves(request, session.post(turn.url, json=turn.payload))
    except ClientGone:
        return web.Response(status=499)  # nginx's "client closed request"; nobody reads it
    try:
        if upstream.status != 200:
            raise ApiError(upstream.status, await upstream_error(upstream))
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


async def _stream_answer(
    request: web.Request, turn: Turn, pieces: AsyncIterator[Piece]
) -> web.StreamResponse:
    """Write one NDJSON line per piece of text, then the closing object."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        async for piece in pieces:
            check_connected(request)
            if piece.error:
                await response.write(ndjson_line({"error": piece.error}))
                break
            if piece.done:
                await response.write(ndjson_line(await _closing(request, turn, piece)))
            elif piece.text:
                turn.text.append(piece.text)
                await response.write(ndjson_line(_chunk(turn, piece.text)))
    except (ApiError, aiohttp.ClientError, ValueError) as exc:
        # The status line is gone already: Ollama reports a late failure as a last line.
        await response.write(ndjson_line({"error": str(exc)}))
    await response.write_eof()
    return response


async def _whole_answer(
    request: web.Request, turn: Turn, pieces: AsyncIterator[Piece]
) -> web.Response:
    """Collect the stream (watching for a client that leaves), then answer once."""
    closing: dict[str, Any] = {}
    async for piece in pieces:
        check_connected(request)
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
    return json_answer(closing)


def _chunk(turn: Turn, text: str) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": turn.label, "created_at": timestamp(time.time())}
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
        tokens = await post_json(
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
