"""Tool calling for any model: the reply is constrained to one call of the offered tools.

A model trained for tools decides by itself whether to call one. The kit's small model was
never trained for it, so the runtime does the deciding and the model fills in the rest:

- when a request offers ``tools`` and the conversation does not end with a tool's result
  (and ``tool_choice`` is not ``"none"``), decoding is constrained to a JSON object
  ``{"name": <one of the tools>, "arguments": <that tool's parameters schema>}``;
- the object comes back as ``tool_calls``, shaped as each dialect does it: Ollama's
  ``message.tool_calls[].function.arguments`` is an object, OpenAI's is a JSON string with a
  call ``id`` and ``finish_reason: "tool_calls"``;
- once a tool's result is in the conversation, the model answers in plain text from it.

Earlier tool calls and results are written into the conversation as text, since a chat
template without tool support would drop them.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from labkit.runtime.guard import check_schema_cost

__all__ = [
    "ANSWER_FROM_RESULTS",
    "Tool",
    "ToolError",
    "call_schema",
    "chat",
    "must_call",
    "ollama_reply",
    "openai_reply",
    "openai_sampling",
    "parse_tools",
    "plain_messages",
    "tool_prompt",
]

# OpenAI's sampling fields that llama.cpp reads under the same names.
_OPENAI_SAMPLING = ("temperature", "top_p", "seed", "max_tokens", "stop", "repeat_penalty")


ANSWER_FROM_RESULTS = (
    "Answer the user's question in one or two plain sentences, using the function results "
    "in the conversation. Do not write JSON."
)


class ToolError(ValueError):
    """A request whose tools or tool messages cannot be used (answered with HTTP 400)."""


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]


def parse_tools(tools: Any) -> list[Tool]:
    """The ``tools`` of a request, checked: a list of ``{"type": "function", "function": ...}``."""
    if not isinstance(tools, list) or not tools:
        raise ToolError('"tools" must be a non-empty list of {"type": "function", ...} objects')
    parsed = []
    for number, tool in enumerate(tools):
        where = f"tools[{number}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise ToolError(f'{where} must be {{"type": "function", "function": {{...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ToolError(f"{where}.function needs a name")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ToolError(f"{where}.function.parameters must be a JSON schema object")
        description = function.get("description") or ""
        parsed.append(Tool(name, str(description), parameters))
    names = [tool.name for tool in parsed]
    if len(set(names)) != len(names):
        raise ToolError(f"tool names must be unique, got {names}")
    return parsed


def must_call(body: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    """True if this turn is a tool call: tools offered, no result to answer from yet."""
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return False
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise ToolError('"tool_choice" must be "auto", "none", "required" or a function')
    return not messages or messages[-1].get("role") != "tool"


def call_schema(tools: list[Tool], choice: Any = "auto") -> dict[str, Any]:
    """The JSON schema of one call: the tool's name and arguments that fit its parameters."""
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        wanted = (choice.get("function") or {}).get("name")
        tools = [tool for tool in tools if tool.name == wanted]
        if not tools:
            raise ToolError(f"tool_choice names {wanted!r}, which is not among the tools")
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_prompt(tools: list[Tool]) -> str:
    """A system message that tells the model which functions exist and what they take."""
    lines = ["You can call these functions. Choose the one that helps with the request:"]
    for tool in tools:
        about = f": {tool.description}" if tool.description else ""
        lines.append(f"- {tool.name}{about} Parameters: {json.dumps(tool.parameters)}")
    lines.append('Reply with {"name": ..., "arguments": {...}} for one call.')
    return "\n".join(lines)


def plain_messages(messages: Any) -> list[dict[str, str]]:
    """The conversation as role/content text, tool calls and tool results written out."""
    if not isinstance(messages, list):
        raise ToolError('"messages" must be a list')
    plain = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ToolError(f"messages[{number}] must be an object with a role")
        role, content = message["role"], message.get("content") or ""
        if not isinstance(content, str):
            raise ToolError(f"messages[{number}].content must be text")
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            written = [_call_text(call) for call in calls]
            content = (content + "\n" if content else "") + "\n".join(written)
        if role == "tool":
            name = message.get("tool_name") or message.get("name") or "the tool"
            role, content = "user", f"Result of {name}: {content}"
        plain.append({"role": role, "content": content})
    return plain


def _call_text(call: Any) -> str:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends the arguments as a JSON string
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    # Written as a sentence, not as JSON: a small model would copy JSON into its answer.
    return f"(I called {function.get('name')} with {json.dumps(arguments, ensure_ascii=False)}.)"


def openai_sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields of an OpenAI-style request that llama.cpp understands."""
    params = {key: body[key] for key in _OPENAI_SAMPLING if body.get(key) is not None}
    if "max_completion_tokens" in body and "max_tokens" not in params:
        params["max_tokens"] = body["max_completion_tokens"]
    return params


def ollama_reply(label: str, text: str, call: dict[str, Any] | None, usage: dict[str, Any]) -> Any:
    """A whole /api/chat answer, with ``tool_calls`` when the turn was a call."""
    message: dict[str, Any] = {"role": "assistant", "content": "" if call else text}
    if call:
        message["tool_calls"] = [{"function": call}]
    return {
        "model": label,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "message": message,
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": usage.get("prompt_tokens", 0),
        "eval_count": usage.get("completion_tokens", 0),
    }


def openai_reply(label: str, text: str, call: dict[str, Any] | None, usage: dict[str, Any]) -> Any:
    """A whole chat.completion, with ``tool_calls`` (arguments as a JSON string) for a call."""
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
    if call:
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
        ]
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": label,
        "choices": [choice],
        "usage": usage,
    }


def _openai_chunks(whole: dict[str, Any]) -> list[dict[str, Any]]:
    """The same answer as two stream chunks: the content or the call, then the finish."""
    message = whole["choices"][0]["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
    if message.get("tool_calls"):
        delta["tool_calls"] = [dict(call, index=0) for call in message["tool_calls"]]
    base = {key: whole[key] for key in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    first = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    finish = whole["choices"][0]["finish_reason"]
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    return [first, last]


async def chat(
    session: aiohttp.ClientSession,
    model_url: str,
    body: dict[str, Any],
    label: str,
    dialect: str,
    sampling: dict[str, Any],
) -> web.StreamResponse:
    """Answer a chat request that offers tools, in the dialect it came in."""
    # The tools become a grammar: the same cost limits as any schema, in either dialect.
    check_schema_cost(body.get("tools"), "tools")
    try:
        tools = parse_tools(body.get("tools"))
        messages = plain_messages(body.get("messages", []))
        calling = must_call(body, body.get("messages") or [])
        payload: dict[str, Any] = {**sampling, "messages": messages, "stream": False}
        if not calling and messages and messages[-1]["content"].startswith("Result of "):
            payload["messages"] = [{"role": "system", "content": ANSWER_FROM_RESULTS}, *messages]
        if calling:
            payload["messages"] = [{"role": "system", "content": tool_prompt(tools)}, *messages]
            schema = call_schema(tools, body.get("tool_choice", "auto"))
            payload["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    except ToolError as exc:
        return _error(dialect, 400, str(exc))
    async with session.post(model_url + "/v1/chat/completions", json=payload) as upstream:
        data = await upstream.json(content_type=None)
        if upstream.status != 200:
            found = data.get("error", data) if isinstance(data, dict) else data
            message = found.get("message", found) if isinstance(found, dict) else found
            return _error(dialect, upstream.status, str(message))
    text = data["choices"][0]["message"].get("content") or ""
    call = None
    if calling:
        try:
            call = json.loads(text)
        except ValueError:  # cut off by max_tokens: no call can be made from half of one
            limit = "options.num_predict" if dialect == "ollama" else "max_tokens"
            return _error(dialect, 500, f"the tool call was cut off: raise {limit}")
    usage = data.get("usage") or {}
    if dialect == "ollama":
        whole = ollama_reply(label, text, call, usage)
        if body.get("stream", True):  # Ollama streams unless told otherwise
            head = {key: whole[key] for key in ("model", "created_at")}
            first = {**head, "message": whole["message"], "done": False}
            last = {**whole, "message": {"role": "assistant", "content": ""}}
            ndjson = "".join(json.dumps(line) + "\n" for line in (first, last))
            return web.Response(text=ndjson, content_type="application/x-ndjson")
        return web.json_response(whole)
    whole = openai_reply(label, text, call, usage)
    if body.get("stream"):
        events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in _openai_chunks(whole))
        return web.Response(text=events + "data: [DONE]\n\n", content_type="text/event-stream")
    return web.json_response(whole)


def _error(dialect: str, status: int, message: str) -> web.Response:
    if dialect == "ollama":
        return web.json_response({"error": message}, status=status)
    kind = "invalid_request_error" if status == 400 else "api_error"
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)
