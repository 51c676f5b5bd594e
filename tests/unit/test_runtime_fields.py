"""What the runtime lets through to llama.cpp, and the one cost check, without a runtime."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from labkit.runtime import fields
from labkit.runtime.common import PROPS, ApiError, ndjson_line, shown

URL = "http://llama.invalid"
N_CTX = 2048


def _limit(payload: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    app = web.Application()
    app[PROPS] = {URL: {"default_generation_settings": {"n_ctx": N_CTX}}}  # no server asked
    return asyncio.run(fields.limit_cost(app, URL, payload, names))


def _refused(payload: dict[str, Any], names: dict[str, str] | None = None) -> str:
    with pytest.raises(ApiError) as caught:
        _limit(payload, names)
    assert caught.value.status == 400
    return caught.value.message


def test_unknown_openai_fields_are_dropped_and_known_ones_kept() -> None:
    body = {
        "model": "m",
        "messages": [],
        "temperature": 0,
        "samplers": ["top_k"],
        "dry_sequence_breakers": ["x"] * 10_000,
        "n_cmpl": 50,
        "user": "ada",
        "stream_options": {"include_usage": True, "extra": [1] * 100},
    }
    kept = fields.openai_fields("/v1/chat/completions", body)
    assert kept == {
        "model": "m",
        "messages": [],
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    assert set(fields.openai_fields("/v1/embeddings", {"input": "a", "n_probs": 5})) == {"input"}


def test_every_field_passed_on_is_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs/runtime-fields.md").read_text()
    for allowed in fields.OPENAI_FIELDS.values():
        for name in allowed:
            assert f"`{name}`" in text, f"{name} reaches llama.cpp but is not documented"


@pytest.mark.parametrize(
    ("path", "field", "value", "words"),
    [
        ("/v1/chat/completions", "temperature", "hot", "a number"),
        ("/v1/chat/completions", "top_logprobs", 2.5, "an integer"),
        ("/v1/chat/completions", "logprobs", 5, "a boolean"),
        ("/v1/completions", "prompt", [["a"]], "token ids"),
        ("/v1/completions", "stop", [1], "a list of strings"),
        ("/v1/embeddings", "input", {"a": 1}, "a list of strings"),
        ("/v1/chat/completions", "n", True, "an integer"),
    ],
)
def test_fields_of_the_wrong_kind_are_refused_by_name(
    path: str, field: str, value: Any, words: str
) -> None:
    with pytest.raises(ApiError) as caught:
        fields.openai_fields(path, {field: value})
    assert caught.value.status == 400
    assert f'"{field}"' in caught.value.message and words in caught.value.message


@pytest.mark.parametrize(
    ("payload", "field", "limit"),
    [
        ({"n_probs": 49152}, "n_probs", "20"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
        ({"prompt": "a", "logprobs": 100}, "logprobs", "20"),
        ({"n": 5}, "n", "4"),
        ({"prompt": ["a"] * 5}, "prompt", "4"),
        ({"prompt": ["a", "b"], "n": 3}, "n", "4"),
        ({"best_of": 2}, "best_of", "1"),
        ({"stop": ["x"] * 17}, "stop", "16"),
        ({"stop": "y" * 257}, "stop", "256"),
        ({"logit_bias": {str(n): 1 for n in range(301)}}, "logit_bias", "300"),
        ({"json_schema": {"enum": list(range(300))}}, "json_schema", "256"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"enum": list(range(300))}},
                }
            },
            "response_format",
            "256",
        ),
        ({"messages": [{"role": "user", "content": "x" * (N_CTX * 32 + 1)}]}, "prompt", "2048"),
        ({"prompt": ["x" * (N_CTX * 20)] * 2}, "prompt", "2048"),
    ],
)
def test_what_multiplies_work_is_refused_naming_the_field_and_the_limit(
    payload: dict[str, Any], field: str, limit: str
) -> None:
    message = _refused(payload)
    assert field in message and limit in message, message


@pytest.mark.parametrize("bias", [{"hello": 5}, {"12": 500}, {"12": "5"}, {"1" * 40: 1}])
def test_logit_bias_maps_token_ids_to_numbers_in_range(bias: dict[str, Any]) -> None:
    assert "-100 to 100" in _refused({"logit_bias": bias})


def test_the_limits_themselves_are_accepted() -> None:
    worst = {
        "messages": [{"role": "user", "content": "x" * (N_CTX * 32)}],
        "logprobs": True,
        "top_logprobs": 20,
        "n_probs": 20,
        "n": 4,
        "stop": ["y" * 256] * 16,
        "logit_bias": {str(n): 1 for n in range(300)},
        "json_schema": {"enum": list(range(256))},
    }
    assert _limit(worst) == worst
    assert _limit({"prompt": ["a", "b"], "n": 2})["n"] == 2
    assert _limit({"prompt": list(range(3000))})  # token ids are one prompt, llama.cpp's to judge


def test_token_budgets_beyond_the_context_are_cut_to_it() -> None:
    cut = _limit({"max_tokens": 10**9, "n_predict": 5000, "repeat_last_n": 2**31 - 1})
    assert cut == {"max_tokens": N_CTX, "n_predict": N_CTX, "repeat_last_n": N_CTX}
    assert _limit({"n_predict": -1, "max_tokens": 16}) == {"n_predict": -1, "max_tokens": 16}


def test_ollama_options_are_named_as_the_client_wrote_them() -> None:
    names = {"stop": "options.stop"}
    assert '"options.stop"' in _refused({"stop": ["x"] * 20}, names)


def test_shown_cuts_long_names_and_escapes_lone_surrogates() -> None:
    name = "m" * 100_000
    assert len(shown(name)) < 120 and "100000 characters" in shown(name)
    assert shown("\ud800") == "\\ud800"
    assert json.loads(ndjson_line({"error": "bad \ud800"})) == {"error": "bad \ud800"}
