"""The client's argument checks and the pieces it is built from, without a runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_server import Answer, FakeServer

from labkit import Client, discovery
from labkit.errors import InvalidInput, InvalidModelOutput, RuntimeUnavailable
from labkit.retry import RetryPolicy
from labkit.structured import validate

DIALECTS = ["ollama", "openai"]
SHORT = {"temperature": 0.0, "seed": 7, "max_tokens": 16}
PERSON = {
    "title": "person",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_presets_and_bad_arguments() -> None:
    assert Client.preset("ollama").url == "http://127.0.0.1:11434"
    assert Client.preset("lmstudio").dialect.name == "openai"
    assert Client.preset("llamacpp").url.endswith(":8080")
    with pytest.raises(InvalidInput, match="ollama, lmstudio, llamacpp"):
        Client.preset("vllm")
    with pytest.raises(InvalidInput, match="dialect"):
        Client("http://127.0.0.1:1", dialect="anthropic")
    c = Client("http://127.0.0.1:1", dialect="ollama", model="m")
    with pytest.raises(InvalidInput, match="empty"):
        c.chat("   ")
    with pytest.raises(InvalidInput, match="role"):
        c.chat([{"content": "no role"}])
    with pytest.raises(InvalidInput, match="format"):
        c.chat("hi", format="yaml")
    with pytest.raises(InvalidInput, match="schema itself is invalid"):
        c.chat("hi", format={"type": "no-such-type"})


def test_validate_text() -> None:
    assert validate('```json\n{"a": 1}\n```') == {"a": 1}  # the fence small models like
    with pytest.raises(InvalidModelOutput, match="cut off") as err:
        validate('{"name": "Ada", "age": 3')
    assert err.value.raw == '{"name": "Ada", "age": 3'
    with pytest.raises(InvalidModelOutput, match="not valid JSON"):
        validate("Sure! Here is your JSON:")
    with pytest.raises(InvalidModelOutput, match=r"\$\.age.*integer"):
        validate('{"name": "Ada", "age": "three"}', PERSON)


def test_a_mistyped_keyword_names_the_one_meant() -> None:
    c = Client("http://127.0.0.1:1", dialect="ollama", model="m")  # nothing is sent
    for verb in (c.chat, c.generate, c.stream):
        with pytest.raises(
            InvalidInput, match=r"unknown keyword 'max_token'\. Did you mean 'max_tokens'"
        ):
            verb("hi", max_token=5)  # type: ignore[call-arg]


def test_client_without_a_url_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def find_runtime(*, start: bool = False) -> object:
        asked.append(start)
        raise RuntimeUnavailable("nothing running")

    monkeypatch.setattr(discovery, "find_runtime", find_runtime)
    with pytest.raises(RuntimeUnavailable):
        Client()
    with pytest.raises(RuntimeUnavailable):
        Client(start=True)
    assert asked == [False, True]  # only start=True asks for a server to be started


def test_find_runtime_does_not_start_one_unless_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))  # no record of an embedded runtime
    for variable in ("LABKIT_BASE_URL", "OLLAMA_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(discovery, "KNOWN_RUNTIMES", ())  # ignore runtimes on this machine
    started: list[object] = []
    monkeypatch.setattr(discovery.runtime, "up", lambda **kw: started.append(kw))
    with pytest.raises(RuntimeUnavailable, match="labkit up"):
        discovery.find_runtime()
    assert started == []


def test_the_key_is_sent_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_API_KEY", "s3cret")
    with FakeServer(Answer(200, {"models": [{"name": "m"}]})) as fake:
        assert Client(fake.url, dialect="ollama").models() == ["m"]
    assert fake.seen[0].headers.get("Authorization") == "Bearer s3cret"


@pytest.mark.parametrize("bad", [0, -5])
def test_a_response_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidInput, match="max_response_bytes"):
        Client("http://127.0.0.1:1", dialect="ollama", max_response_bytes=bad)


def test_retry_policy_rejects_bad_attempts() -> None:
    with pytest.raises(InvalidInput, match="attempts"):
        RetryPolicy(attempts=0)
