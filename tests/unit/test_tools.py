"""Tool calling's pure parts: checking tools, the call schema, the conversation as text."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from labkit.runtime.tools import (
    ToolError,
    call_schema,
    must_call,
    ollama_reply,
    openai_reply,
    openai_sampling,
    parse_tools,
    plain_messages,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        ("get_weather", "non-empty list"),
        ([42], "tools\\[0\\] must be"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "tools\\[0\\] must be"),
        ([{"type": "function", "function": {"name": "  "}}], "needs a name"),
        ([{"type": "function", "function": {"name": "x", "parameters": "{}"}}], "JSON schema"),
        ([WEATHER, WEATHER], "unique"),
    ],
)
def test_bad_tools_are_refused_with_the_reason(tools: Any, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        parse_tools(tools)


def test_a_tool_without_parameters_takes_an_empty_object() -> None:
    (tool,) = parse_tools([TIME])
    assert tool.parameters == {"type": "object", "properties": {}} and tool.description == ""


def test_the_call_schema_accepts_exactly_the_offered_calls() -> None:
    tools = parse_tools([WEATHER, TIME])
    schema = call_schema(tools)
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Lisbon"}}, schema)
    jsonschema.validate({"name": "get_time", "arguments": {}}, schema)
    for wrong in (
        {"name": "get_weather", "arguments": {}},  # a required argument is missing
        {"name": "delete_files", "arguments": {}},
        {"name": "get_weather"},
        {"arguments": {"city": "Lisbon"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_tool_choice_can_force_one_function_and_must_name_an_offered_one() -> None:
    tools = parse_tools([WEATHER, TIME])
    forced = call_schema(tools, {"type": "function", "function": {"name": "get_time"}})
    assert forced["properties"]["name"] == {"const": "get_time"}
    with pytest.raises(ToolError, match="not among the tools"):
        call_schema(tools, {"type": "function", "function": {"name": "rm"}})


def test_a_call_is_due_until_a_tool_result_arrives() -> None:
    asked = [{"role": "user", "content": "Weather in Lisbon?"}]
    answered = [*asked, {"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "{}"}]
    assert must_call({"tools": [WEATHER]}, asked)
    assert not must_call({"tools": [WEATHER]}, answered)
    assert not must_call({"tools": [WEATHER], "tool_choice": "none"}, asked)
    with pytest.raises(ToolError, match="tool_choice"):
        must_call({"tool_choice": "sometimes"}, asked)


def test_calls_and_results_become_plain_text_in_both_dialects() -> None:
    openai_call = {"function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}
    ollama_call = {"function": {"name": "get_weather", "arguments": {"city": "Lisbon"}}}
    for call, result in ((openai_call, {"tool_call_id": "c1"}), (ollama_call, {})):
        plain = plain_messages(
            [
                {"role": "user", "content": "Weather in Lisbon?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": '{"sky": "sunny"}', "tool_name": "get_weather"}
                | result,
            ]
        )
        assert [m["role"] for m in plain] == ["user", "assistant", "user"]
        assert 'get_weather with {"city": "Lisbon"}' in plain[1]["content"]
        assert plain[2]["content"] == 'Result of get_weather: {"sky": "sunny"}'
    with pytest.raises(ToolError):
        plain_messages([{"role": "user", "content": ["not", "text"]}])
    with pytest.raises(ToolError):
        plain_messages("hello")


def test_replies_have_each_dialects_shape() -> None:
    call = {"name": "get_weather", "arguments": {"city": "Lisbon"}}
    usage = {"prompt_tokens": 9, "completion_tokens": 4}
    ollama = ollama_reply("m", "", call, usage)
    assert ollama["message"]["tool_calls"] == [{"function": call}] and ollama["done"]
    openai = openai_reply("m", "", call, usage)
    choice = openai["choices"][0]
    (made,) = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert made["id"].startswith("call_") and made["type"] == "function"
    assert json.loads(made["function"]["arguments"]) == call["arguments"]  # a JSON string
    plain = openai_reply("m", "Sunny.", None, usage)["choices"][0]
    assert plain["message"] == {"role": "assistant", "content": "Sunny."}
    assert plain["finish_reason"] == "stop"


def test_openai_sampling_passes_what_llama_cpp_reads() -> None:
    body = {"temperature": 0, "seed": 3, "max_completion_tokens": 9, "tools": [], "user": "x"}
    assert openai_sampling(body) == {"temperature": 0, "seed": 3, "max_tokens": 9}
