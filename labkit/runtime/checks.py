"""Checking a generation request the way Ollama does: options, formats, capabilities, messages."""

from __future__ import annotations

import json
import re
from typing import Any

from labkit.runtime.common import ApiError, field_of, type_name
from labkit.runtime.guard import check_schema_cost

__all__ = [
    "chat_messages",
    "check_capabilities",
    "check_keep_alive",
    "json_schema",
    "sampling",
]

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
    raise ApiError(400, f"Unsupported type: '{type_name(value)}' for keep_alive")


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
    options = field_of(body, "options", dict, {})
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
    if kind is int and not -(2**31) <= value < 2**31:
        # Ollama's options are 32-bit; a bigger number (1e400 is infinite) is no option at all.
        raise ApiError(400, f'option "{key}" must be an integer between -2^31 and 2^31-1')
    return int(value) if kind is int else float(value)


def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema that ``format`` asks for: "json" means any JSON object."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "object"}  # Ollama's JSON grammar starts with an object too
    if isinstance(value, dict):
        check_schema_cost(value)
        return value
    shown = json.dumps(value)
    raise ApiError(400, f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


def check_capabilities(body: dict[str, Any], label: str) -> None:
    """Refuse, as Ollama does, what the bundled model cannot do: tools, thinking, images."""
    think = body.get("think")
    if isinstance(think, str):
        raise ApiError(400, f'think value "{think}" is not supported for this model')
    if think is not None and not isinstance(think, bool):
        raise ApiError(400, f'"think" must be a boolean, got {type_name(think)}')
    if think:
        raise ApiError(400, f'"{label}" does not support thinking')
    tools = field_of(body, "tools", list, [])
    if tools:
        raise ApiError(400, f'"{label}" does not support tools')
    if field_of(body, "images", list, []):
        raise ApiError(400, f'"{label}" does not support images (it is not a vision model)')
    if body.get("logprobs"):
        raise ApiError(400, "logprobs are not supported by this runtime")


def chat_messages(body: dict[str, Any], label: str) -> list[dict[str, str]]:
    """The conversation as llama.cpp wants it: role and content of each message."""
    messages = field_of(body, "messages", list, [])
    checked = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with a role and a content")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ApiError(400, f'{where} needs a "role" ("system", "user", "assistant", ...)')
        content = field_of(message, "content", str, "")
        if field_of(message, "images", list, []):
            raise ApiError(400, f'"{label}" does not support images (it is not a vision model)')
        checked.append({"role": role, "content": content})
    return checked
