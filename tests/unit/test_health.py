"""Health checks that need no runtime: a closed port, bad arguments, model names."""

from __future__ import annotations

import time

import pytest
from fake_server import Answer, FakeServer

from labkit import runtime
from labkit.errors import InvalidInput
from labkit.health import check_health, identify

MODEL = runtime.CHAT_MODEL


@pytest.mark.parametrize("dialect", ["ollama", "openai", "llamacpp"])
def test_down_against_a_closed_port(dialect: str) -> None:
    url = f"http://127.0.0.1:{runtime.free_port()}"
    began = time.perf_counter()
    report = check_health(url, dialect, MODEL)
    assert time.perf_counter() - began < 2
    assert report.status == "down"
    assert report.reasons == [f"{report.checks[0].name}: cannot connect to {url}"]


def test_bad_dialect_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="Unknown dialect 'grpc'"):
        check_health("http://127.0.0.1:1", "grpc")


def test_check_health_sends_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_API_KEY", "s3cret")
    listing = Answer(200, {"data": [{"id": MODEL}]})
    with FakeServer(listing) as fake:
        report = check_health(fake.url, "openai", MODEL)
        assert identify(fake.url) == ("openai", (MODEL,))
    assert report.status == "up"
    assert fake.seen and all(s.headers.get("Authorization") == "Bearer s3cret" for s in fake.seen)


def test_an_explicit_key_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_API_KEY", "from-env")
    with FakeServer(Answer(200, {"data": []})) as fake:
        check_health(fake.url, "openai", api_key="given")
    assert fake.seen[0].headers.get("Authorization") == "Bearer given"


def test_identify_tells_the_dialects_apart() -> None:
    ollama = [Answer(200, "Ollama is running"), Answer(200, {"models": [{"name": "a:1"}]})]
    with FakeServer(*ollama) as fake:
        assert identify(fake.url) == ("ollama", ("a:1",))
    with FakeServer(Answer(200, "<html>a web page</html>"), Answer(404, "no")) as fake:
        assert identify(fake.url) is None  # answers HTTP, but is no model server
