"""What reaches llama.cpp: the fields each route passes on, and the one check of their cost.

llama.cpp's server reads far more fields than Ollama's or OpenAI's APIs define, and some of
them multiply its work or its memory: ``n_probs: 49152`` makes every token carry the whole
vocabulary (1.4 GB of answer for 300 tokens, and the server's memory grew by 2 GB for good).
So the runtime passes on only the fields listed here and in ``docs/ollama-differences.md``
("What reaches llama.cpp"); any other field of a ``/v1`` request is dropped, as Ollama ignores
fields it does not know. ``limit_cost`` is the one check of what remains, for both dialects:
what multiplies work is refused with a 400 that names the field and its limit, and a token
budget beyond the context is cut to the context (llama.cpp stops there anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from labkit.runtime.common import TYPE_WORDS, ApiError, shown, slot_context, type_name
from labkit.runtime.embed import TOKEN_BYTES
from labkit.runtime.guard import check_schema_cost

__all__ = [
    "MAX_ALTERNATIVES",
    "MAX_CHOICES",
    "MAX_LOGIT_BIAS",
    "MAX_STOP",
    "MAX_STOP_CHARS",
    "OPENAI_FIELDS",
    "check_prompt_size",
    "limit_cost",
    "openai_fields",
    "text_bytes",
]

# Alternatives per token (top_logprobs, n_probs, completions' logprobs): OpenAI's own limit.
MAX_ALTERNATIVES = 20
# Choices per request (n, times the prompts of a list): llama.cpp has four slots for everyone.
MAX_CHOICES = 4
# Stop sequences are checked against the reply after every token.
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 300  # token biases per request

NUMBER = float
# Kinds beyond a plain type: checked by _check_kind.
STOP, PROMPT, INPUT, ANY = "stop", "prompt", "input", "any"

# Fields both generation routes of OpenAI's dialect pass on, with the kind each must be.
_GENERATION: dict[str, Any] = {
    "model": str,
    "stream": bool,
    "stream_options": dict,
    "max_tokens": int,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "seed": int,
    "stop": STOP,
    "n": int,
    "logit_bias": dict,
    # llama.cpp's own sampling fields, also Ollama's options under these names
    "top_k": int,
    "min_p": NUMBER,
    "typical_p": NUMBER,
    "repeat_penalty": NUMBER,
    "repeat_last_n": int,
    "n_probs": int,
    "post_sampling_probs": bool,
    "json_schema": ANY,
    "grammar": str,
}

# Per route: every field that reaches llama.cpp, and the kind it must be.
OPENAI_FIELDS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        **_GENERATION,
        "messages": list,
        "max_completion_tokens": int,
        "logprobs": bool,
        "top_logprobs": int,
        "response_format": dict,
        "tools": ANY,  # checked by the tool module, whose messages say what is wrong
        "tool_choice": ANY,
    },
    "/v1/completions": {**_GENERATION, "prompt": PROMPT, "logprobs": int, "best_of": int},
    "/v1/embeddings": {"model": str, "input": INPUT, "encoding_format": str},
}


def openai_fields(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The fields of an OpenAI-style request that llama.cpp may see, each of the right kind."""
    allowed = OPENAI_FIELDS[path]
    kept = {}
    for key, value in body.items():
        if key not in allowed or value is None:
            continue  # unknown fields are ignored, as Ollama and llama.cpp ignore them
        _check_kind(key, value, allowed[key])
        kept[key] = value
    options = kept.get("stream_options")
    if options is not None:  # one option only, which changes no cost
        kept["stream_options"] = {"include_usage": bool(options.get("include_usage"))}
    return kept


def _check_kind(key: str, value: Any, kind: Any) -> None:
    if kind == ANY:
        return
    if kind == STOP:
        ok = isinstance(value, str) or _all(value, str)
        _require(ok, key, "a string or a list of strings", value)
    elif kind in (PROMPT, INPUT):
        ok = isinstance(value, str) or _all(value, str) or _all(value, int)
        ok = ok or (isinstance(value, list) and all(_all(p, int) for p in value))
        _require(ok, key, "a string, a list of strings, or token ids", value)
    elif kind is NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, "a number", value)
    elif kind is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
    else:
        _require(isinstance(value, kind), key, TYPE_WORDS[kind], value)


def _all(value: Any, kind: type) -> bool:
    """True for a list whose items are all ``kind`` (booleans are no integers)."""
    return isinstance(value, list) and all(
        isinstance(item, kind) and not isinstance(item, bool) for item in value
    )


def _require(ok: bool, key: str, words: str, value: Any) -> None:
    if not ok:
        raise ApiError(400, f'"{key}" must be {words}, got {type_name(value)}')


def _too_many(name: str, what: str, given: int, limit: int, advice: str) -> ApiError:
    return ApiError(400, f'"{name}" asks for {given} {what}; the limit is {limit}: {advice}')


async def limit_cost(
    app: web.Application,
    url: str,
    payload: dict[str, Any],
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The payload for llama.cpp, refused (400) or cut where it would multiply work or memory.

    ``names`` maps llama.cpp's field names to the ones the client wrote (Ollama's options).
    """
    n_ctx = await slot_context(app, url)

    def name(key: str) -> str:
        return (names or {}).get(key, key)

    checked = dict(payload)
    check_prompt_size(text_bytes(payload), n_ctx)
    alternatives = [key for key in ("n_probs", "top_logprobs") if isinstance(payload.get(key), int)]
    if isinstance(payload.get("logprobs"), int) and not isinstance(payload["logprobs"], bool):
        alternatives.append("logprobs")  # /v1/completions: a number of alternatives
    for key in alternatives:
        if not 0 <= payload[key] <= MAX_ALTERNATIVES:
            raise _too_many(
                name(key),
                "alternatives per token",
                payload[key],
                MAX_ALTERNATIVES,
                "each one is sent with every token of the reply",
            )
    choices = int(payload.get("n", 1)) * _prompt_count(payload.get("prompt"))
    if not 1 <= choices <= MAX_CHOICES:
        where = "n" if "n" in payload else "prompt"
        raise _too_many(
            where, "choices", choices, MAX_CHOICES, "send several requests one after another"
        )
    if payload.get("best_of", 1) != 1:
        raise ApiError(400, '"best_of" is not supported here; the limit is 1')
    for key in ("n_predict", "max_tokens", "max_completion_tokens", "repeat_last_n"):
        value = payload.get(key)
        if isinstance(value, int) and n_ctx and value > n_ctx:
            checked[key] = n_ctx  # no reply (or penalty window) is longer than the context
    _check_stop(payload.get("stop"), name("stop"))
    _check_bias(payload.get("logit_bias"))
    _check_schemas(payload)
    return checked


def text_bytes(payload: dict[str, Any]) -> int:
    """The bytes of text a payload asks llama.cpp to read: messages and prompts."""
    texts: list[Any] = []
    messages = payload.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's parts: [{"type": "text", "text": ...}]
            texts += [part.get("text") for part in content if isinstance(part, dict)]
        else:
            texts.append(content)
    prompt = payload.get("prompt")
    texts += prompt if isinstance(prompt, list) else [prompt]
    return sum(len(text.encode()) for text in texts if isinstance(text, str))


def check_prompt_size(size: int, n_ctx: int) -> None:
    """Refuse a prompt far too long for the context before llama.cpp tokenizes it all."""
    if n_ctx and size > n_ctx * TOKEN_BYTES:
        raise ApiError(
            400,
            f"the prompt is {size} bytes, far more than the {n_ctx} tokens this model reads "
            "at once; shorten the prompt (or the conversation) to fit",
        )


def _prompt_count(prompt: Any) -> int:
    """How many completions a prompt asks for: one, or one per prompt of a list."""
    if isinstance(prompt, list) and prompt and not _all(prompt, int):
        return len(prompt)
    return 1


def _check_stop(stop: Any, name: str) -> None:
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(sequences) > MAX_STOP:
        raise _too_many(
            name, "stop sequences", len(sequences), MAX_STOP, "each is checked after every token"
        )
    for sequence in sequences:
        if isinstance(sequence, str) and len(sequence) > MAX_STOP_CHARS:
            raise ApiError(
                400,
                f'"{name}" holds a stop sequence of {len(sequence)} characters; the limit is '
                f"{MAX_STOP_CHARS}",
            )


def _check_bias(bias: Any) -> None:
    """OpenAI's ``logit_bias``: token ids (llama.cpp would tokenize any other key) to -100..100."""
    if not isinstance(bias, dict):
        return
    if len(bias) > MAX_LOGIT_BIAS:
        raise _too_many(
            "logit_bias", "token biases", len(bias), MAX_LOGIT_BIAS, "bias fewer tokens"
        )
    for key, value in bias.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not key.isdigit() or len(key) > 9 or not number or not -100 <= value <= 100:
            raise ApiError(
                400,
                f'"logit_bias" maps token ids to numbers from -100 to 100; got {shown(key, 20)!r}'
                f": {shown(repr(value), 20)}",
            )


def _check_schemas(payload: dict[str, Any]) -> None:
    """Schemas and grammars: the same limits as Ollama's ``format`` (``guard.py``)."""
    response_format = payload.get("response_format")
    if isinstance(response_format, dict):
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if schema is not None:
            check_schema_cost(schema, "response_format")
        if isinstance(response_format.get("schema"), dict):
            check_schema_cost(response_format["schema"], "response_format")
    for key in ("json_schema", "grammar"):
        if payload.get(key) is not None:
            check_schema_cost(payload[key], key)
