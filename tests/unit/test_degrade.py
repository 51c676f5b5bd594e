"""Graceful degradation without a runtime: the reply cache, keys, and the fallback wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labkit import runtime
from labkit.degrade import (
    DEFAULT_FALLBACK,
    Degraded,
    ReplyCache,
    cache_key,
    call_key,
    with_fallback,
)
from labkit.errors import InvalidInput, LabkitError, ModelNotFound, RuntimeUnavailable, ServerError

MODEL = runtime.CHAT_MODEL
QUESTION = "Name one colour."
SETTINGS: dict[str, Any] = {"temperature": 0, "seed": 1, "max_tokens": 8}


class Flaky:
    """A stand-in callable whose failure is switched on and off by the test."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.calls = 0

    def __call__(self, prompt: str, **options: Any) -> str:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return f"answer to {prompt}"


def test_equal_requests_share_a_key_and_any_difference_splits_them() -> None:
    messages = [{"role": "user", "content": "hi"}]
    key = cache_key(MODEL, messages, {"temperature": 0, "seed": 1})
    assert key == cache_key(MODEL, messages, {"seed": 1, "temperature": 0})  # order-free
    assert len(key) == 64
    others = {
        cache_key("other:1b", messages, {"temperature": 0, "seed": 1}),
        cache_key(MODEL, [{"role": "user", "content": "hi!"}], {"temperature": 0, "seed": 1}),
        cache_key(MODEL, messages, {"temperature": 0.7, "seed": 1}),
        cache_key(MODEL, messages, None),
    }
    assert key not in others and len(others) == 4


def test_cache_in_memory_forgets_the_oldest() -> None:
    cache = ReplyCache(max_entries=2)
    cache.put("a", "first")
    cache.put("b", "second")
    cache.put("c", "third")
    assert len(cache) == 2 and "a" not in cache
    assert (cache.get("b"), cache.get("c"), cache.get("a")) == ("second", "third", None)
    with pytest.raises(LabkitError, match="max_entries"):
        ReplyCache(max_entries=0)


def test_cache_persists_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "replies.jsonl"
    cache = ReplyCache(path)
    cache.put("k1", "one", model=MODEL)
    cache.put("k1", "one")  # unchanged: not written again
    cache.put("k2", "two")
    cache.put("k1", "uno")  # a newer answer wins on reload
    with path.open("a") as out:
        out.write('{"key": "k3", "te')  # a line cut short by a crash
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[0])["model"] == MODEL
    again = ReplyCache(path)
    assert (again.get("k1"), again.get("k2"), again.get("k3")) == ("uno", "two", None)


def test_live_then_cache_then_fallback() -> None:
    flaky, cache = Flaky(), ReplyCache()
    ask = with_fallback(flaky, cache=cache)
    live = ask("q1", temperature=0)
    assert (live.text, live.source, live.error, live.degraded) == (
        "answer to q1",
        "live",
        None,
        False,
    )
    assert live.value == "answer to q1"

    flaky.fail = ServerError("busy", status=503)
    cached = ask("q1", temperature=0)
    assert (cached.text, cached.source, cached.degraded) == ("answer to q1", "cache", True)
    assert cached.error is flaky.fail
    assert ask("q1", temperature=0.5).source == "fallback"  # other options: another request
    fallback = ask("q2")
    assert (fallback.text, fallback.source) == (DEFAULT_FALLBACK, "fallback")
    assert str(fallback) == DEFAULT_FALLBACK
    assert flaky.calls == 4  # the live call is always tried first


def test_without_a_cache_every_failure_falls_back() -> None:
    flaky = Flaky()
    ask = with_fallback(flaky, fallback=lambda exc: f"Down: {type(exc).__name__}")
    assert ask("q").source == "live"
    flaky.fail = RuntimeUnavailable("gone")
    assert ask("q") == Degraded("Down: RuntimeUnavailable", "fallback", flaky.fail)


def test_bugs_are_not_papered_over() -> None:
    flaky = Flaky()
    flaky.fail = TypeError("a bug")
    with pytest.raises(TypeError):
        with_fallback(flaky)("q")


def test_as_a_decorator_with_its_own_key() -> None:
    cache = ReplyCache()
    state = {"down": False}

    @with_fallback(cache=cache, key=lambda city: city.lower(), fallback="No forecast.")
    def forecast(city: str) -> str:
        if state["down"]:
            raise RuntimeUnavailable("no runtime")
        return f"Sunny in {city}"

    assert forecast("Paris").source == "live"
    state["down"] = True
    assert forecast("PARIS").text == "Sunny in Paris"  # the key ignores case
    assert forecast("Oslo").text == "No forecast."
    assert forecast.__name__ == "forecast"


def test_call_keys_follow_model_prompt_options_and_verb() -> None:
    class FakeClient:
        model = "m1"

        def chat(self, messages: Any, **options: Any) -> None: ...

        def generate(self, prompt: str, **options: Any) -> None: ...

    client = FakeClient()
    chat = call_key(client.chat, ("hi",), {"temperature": 0})
    assert chat == call_key(client.chat, (), {"messages": "hi", "temperature": 0})
    assert chat != call_key(client.generate, ("hi",), {"temperature": 0})
    assert chat != call_key(client.chat, ("hi",), {"temperature": 0, "model": "m2"})
    assert chat != call_key(client.chat, ("hi",), {"temperature": 1})
    client.model = "m2"
    assert chat != call_key(client.chat, ("hi",), {"temperature": 0})


@pytest.mark.parametrize(
    "mistake",
    [InvalidInput("The prompt is empty."), ModelNotFound("No model 'x'.", status=404)],
)
def test_mistakes_to_fix_are_not_hidden_behind_the_fallback(mistake: LabkitError) -> None:
    flaky = Flaky()
    flaky.fail = mistake
    cache = ReplyCache()
    ask = with_fallback(flaky, cache=cache)
    with pytest.raises(type(mistake)):
        ask("q")
    assert len(cache) == 0
