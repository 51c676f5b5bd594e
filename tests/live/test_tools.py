"""Tool calling through the kit's runtime, with the official clients and raw HTTP.

The bundled model was never trained to call tools; the runtime constrains its decoding to the
offered tools' schemas. Checks are on structure (a call of an offered tool, arguments that fit
its parameters, the dialect's shapes), never on wording.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import ollama
import pytest
import requests
from openai import OpenAI

from labkit import runtime

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather", "parameters": CITY},
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time", "parameters": CITY},
}
ASK = [{"role": "user", "content": "What is the weather in Lisbon?"}]
RESULT = json.dumps({"city": "Lisbon", "temp_c": 21, "sky": "sunny"})
QUICK: dict[str, Any] = {"temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def url(embedded: runtime.RuntimeRecord) -> str:
    return embedded.url


@pytest.fixture(scope="module")
def model(embedded: runtime.RuntimeRecord) -> str:
    return next(name for name in embedded.models if "minilm" not in name)


def test_openai_client_gets_a_call_and_answers_from_its_result(url: str, model: str) -> None:
    client = OpenAI(base_url=url + "/v1", api_key="local")
    first = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], max_tokens=80, **QUICK
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.id and call.type == "function" and call.function.name in {"get_weather", "get_time"}
    jsonschema.validate(json.loads(call.function.arguments), CITY)  # arguments: a JSON string
    messages: list[Any] = [*ASK, choice.message.model_dump(exclude_none=True)]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": RESULT})
    second = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER, TIME], max_tokens=60, **QUICK
    )
    final = second.choices[0]
    assert final.finish_reason in {"stop", "length"} and not final.message.tool_calls
    assert final.message.content and final.message.content.strip()


def test_ollama_client_with_a_python_function(url: str, model: str) -> None:
    def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: the city's name
        """
        return RESULT

    client = ollama.Client(host=url)
    options = {"temperature": 0, "seed": 1, "num_predict": 80}
    first = client.chat(model=model, messages=ASK, tools=[get_weather], options=options)
    (call,) = first.message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    jsonschema.validate(dict(call.function.arguments), CITY)
    messages: list[Any] = [*ASK, first.message]
    messages.append({"role": "tool", "tool_name": "get_weather", "content": RESULT})
    second = client.chat(model=model, messages=messages, tools=[get_weather], options=options)
    assert second.message.content.strip() and not second.message.tool_calls


def test_streamed_calls_in_both_dialects(url: str, model: str) -> None:
    # Temperature 0 and a seed: sampled freely, about 1 call in 100 rambles in its "city"
    # string until num_predict cuts it off, and the runtime rightly answers with an error.
    options = {"num_predict": 80, **QUICK}
    body = {"model": model, "messages": ASK, "tools": [WEATHER], "options": options}
    reply = requests.post(url + "/api/chat", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    parsed = [json.loads(line) for line in reply.text.splitlines()]
    assert parsed[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert parsed[-1]["done"] is True and not any(p["done"] for p in parsed[:-1])
    body = {"model": model, "messages": ASK, "tools": [WEATHER], "stream": True, "max_tokens": 80}
    reply = requests.post(url + "/v1/chat/completions", json=body | QUICK, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    delta_calls = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert delta_calls[0]["index"] == 0 and delta_calls[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_forces_a_function_or_none(url: str, model: str) -> None:
    forced = {"type": "function", "function": {"name": "get_time"}}
    body = {"model": model, "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": forced}
    reply = requests.post(url + "/v1/chat/completions", json=body | QUICK, timeout=60).json()
    assert reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    body = {"model": model, "messages": ASK, "tools": [WEATHER], "tool_choice": "none"}
    reply = requests.post(url + "/v1/chat/completions", json=body | QUICK, timeout=60).json()
    message = reply["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_bad_tools_get_a_400_that_says_why(url: str, model: str, path: str) -> None:
    for tools, reason in (
        ([{"type": "function", "function": {}}], "needs a name"),
        ([WEATHER, WEATHER], "unique"),
        ("get_weather", "must be a non-empty list"),
    ):
        body = {"model": model, "messages": ASK, "tools": tools, "stream": False}
        reply = requests.post(url + path, json=body, timeout=30)
        assert reply.status_code == 400, (tools, reply.text)
        error = reply.json()["error"]
        assert reason in (error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_tools_too_costly_to_follow_are_refused_like_any_schema(
    url: str, model: str, path: str
) -> None:
    """Tools become a grammar: a huge enum in their parameters must not stall everyone."""
    cities = [f"city-{n}" for n in range(1000)]
    costly = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"enum": cities}}},
        },
    }
    body = {"model": model, "messages": ASK, "tools": [costly], "stream": False}
    reply = requests.post(url + path, json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "tools" in (error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_call_cut_off_by_the_token_limit_is_an_error_not_half_a_call(
    url: str, model: str, path: str
) -> None:
    body = {"model": model, "messages": ASK, "tools": [WEATHER], "stream": False}
    body |= {"options": {"num_predict": 3}} if path == "/api/chat" else {"max_tokens": 3}
    reply = requests.post(url + path, json=body, timeout=30)
    assert reply.status_code == 500 and "cut off" in reply.text
    assert ("num_predict" if path == "/api/chat" else "max_tokens") in reply.text  # what to raise
