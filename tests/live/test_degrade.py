"""Graceful degradation: the reply cache, the fallback wrapper, and both around the live client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labkit import Client, Timeout, runtime
from labkit.degrade import (
    ReplyCache,
    with_fallback,
)
from labkit.errors import RuntimeUnavailable, ServerError
from labkit.faults import Fault, FaultProxy
from labkit.retry import RetryPolicy

MODEL = runtime.CHAT_MODEL
QUESTION = "Name one colour."
SETTINGS: dict[str, Any] = {"temperature": 0, "seed": 1, "max_tokens": 8}


# --- the cache ---------------------------------------------------------------------------------


# --- around the live client, through the fault proxy ------------------------------------------------


def no_sleep(seconds: float) -> None:
    """The retry policy's pause, skipped: these tests are about what comes back, not when."""


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_live_client_degrades_to_cache_then_fallback(
    embedded: runtime.RuntimeRecord, dialect: str, tmp_path: Path
) -> None:
    cache = ReplyCache(tmp_path / "replies.jsonl")
    with FaultProxy(embedded.url) as proxy:
        client = Client(proxy.url, dialect=dialect, model=MODEL, retry=RetryPolicy(sleep=no_sleep))
        with client:
            ask = with_fallback(client.chat, cache=cache)
            live = ask(QUESTION, **SETTINGS)
            assert live.source == "live" and live.text and live.value.text == live.text
            proxy.add(Fault.status(503))
            cached = ask(QUESTION, **SETTINGS)
            assert (cached.source, cached.text) == ("cache", live.text)
            assert isinstance(cached.error, ServerError) and cached.error.status == 503
            assert ask("Name one animal.", **SETTINGS).source == "fallback"
        assert len(proxy.requests) == 1 + 3 + 3  # one live call, then two calls of 3 attempts

    # A new process (a new cache object on the same file) still has the answer, and a runtime
    # that is gone altogether is handled the same way.
    gone = Client(
        f"http://127.0.0.1:{runtime.free_port()}",
        dialect=dialect,
        model=MODEL,
        timeout=Timeout(connect=1, read=5),
        retry=RetryPolicy(sleep=no_sleep),
    )
    with gone:
        again = with_fallback(gone.chat, cache=ReplyCache(tmp_path / "replies.jsonl"))
        # The client's key includes the model it uses, not its address: the same request.
        answer = again(QUESTION, **SETTINGS)
    assert (answer.source, answer.text) == ("cache", live.text)
    assert isinstance(answer.error, RuntimeUnavailable)
