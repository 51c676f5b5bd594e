"""labkit's client against the live runtime, every verb in both dialects.

LLM output is not deterministic, so these check structure and behaviour (fields, types,
counts, valid JSON), with temperature 0 and a fixed seed, never the wording.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from labkit import Client, Health, Reply, Stream, Timeout, discovery
from labkit.calllog import CallLog, read_log, summarize
from labkit.errors import (
    InvalidInput,
    InvalidModelOutput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
)
from labkit.retry import NO_RETRY
from labkit.structured import validate

DIALECTS = ["ollama", "openai"]
SHORT = {"temperature": 0.0, "seed": 7, "max_tokens": 16}
PERSON = {
    "title": "person",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module", params=DIALECTS)
def client(request: pytest.FixtureRequest, rt: discovery.Runtime) -> Iterator[Client]:
    """A client for the live runtime in one dialect (the embedded runtime speaks both)."""
    with Client(rt.url, dialect=request.param, model=rt.chat_model) as c:
        yield c


def check_reply(reply: Reply, client: Client) -> None:
    """The fields every real reply has."""
    assert isinstance(reply.text, str) and reply.text.strip()
    assert reply.dialect == client.dialect.name and reply.model == client.model
    assert reply.latency > 0 and reply.attempts == 1
    assert isinstance(reply.prompt_tokens, int) and reply.prompt_tokens > 0
    assert isinstance(reply.completion_tokens, int) and 0 < reply.completion_tokens <= 16
    assert reply.finish_reason in ("stop", "length")
    assert reply.tokens_per_second is not None and reply.tokens_per_second > 0
    assert reply.timings, "the runtime's own timings are kept"


def test_chat_with_a_string(client: Client) -> None:
    reply = client.chat("Name one colour.", **SHORT)  # type: ignore[arg-type]
    check_reply(reply, client)
    assert reply.first_token is None  # not streamed
    if client.dialect.name == "ollama":
        assert {"eval_count", "eval_duration", "total_duration"} <= set(reply.timings)
        assert reply.raw["done"] is True
    else:
        assert "predicted_n" in reply.timings  # llama.cpp's timings
        assert reply.raw["usage"]["completion_tokens"] == reply.completion_tokens


def test_chat_with_messages_and_system(client: Client) -> None:
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    plain = client.chat(history, **SHORT)  # type: ignore[arg-type]
    # Long enough to outweigh the default system prompt some chat templates add.
    system = "You answer questions about names, briefly and politely, in one word. " * 4
    with_system = client.chat(history, system=system, **SHORT)  # type: ignore[arg-type]
    check_reply(plain, client)
    check_reply(with_system, client)
    assert with_system.prompt_tokens > plain.prompt_tokens + 40  # type: ignore[operator]


def test_generate(client: Client) -> None:
    system = "Complete the sentence."
    reply = client.generate("The sky is", system=system, **SHORT)  # type: ignore[arg-type]
    check_reply(reply, client)


def test_stream_yields_pieces_then_a_full_reply(client: Client) -> None:
    stream = client.stream("Count from one to ten in words.", **SHORT)  # type: ignore[arg-type]
    assert isinstance(stream, Stream)
    pieces = list(stream)
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
    reply = stream.reply
    check_reply(reply, client)
    assert reply.text == "".join(pieces) == stream.text
    assert reply.first_token is not None and 0 < reply.first_token < reply.latency
    # Token counts exist for both dialects (OpenAI's via stream_options.include_usage).
    assert reply.completion_tokens is not None and reply.completion_tokens >= len(pieces) - 1


def test_stream_reply_reads_the_rest(client: Client) -> None:
    stream = client.stream("Say hello.", **SHORT)  # type: ignore[arg-type]
    first = next(stream)
    assert stream.reply.text.startswith(first)


def test_stream_closed_early_has_no_reply(client: Client) -> None:
    with client.stream("Tell me a long story.", temperature=0.0, max_tokens=64) as stream:
        next(stream)
    assert stream.text
    with pytest.raises(LabkitError, match="stopped before its end"):
        _ = stream.reply


def test_models(client: Client, rt: discovery.Runtime) -> None:
    names = client.models()
    assert rt.chat_model in names and rt.embed_model in names


def test_health(client: Client, rt: discovery.Runtime) -> None:
    health = client.health()
    assert health == Health(True, None, health.detail) and health.detail.startswith("up")
    assert client.health(rt.chat_model).model_available is True
    assert client.health(rt.chat_model.split(":")[0]).model_available is True  # a bare name
    missing = client.health("no-such-model:1b")
    assert missing.up and missing.model_available is False and not missing
    assert rt.chat_model in missing.detail  # says what it has instead


def test_embed(client: Client, rt: discovery.Runtime) -> None:
    texts = ["The cat sat on the mat.", "A dog barked.", "The cat sat on the mat.", "Stocks fell."]
    vectors = client.embed(texts, model=rt.embed_model)
    assert vectors.dtype == np.float32 and vectors.shape[0] == 4 and vectors.shape[1] >= 32
    assert np.isfinite(vectors).all()
    # Same text, same vector, up to float rounding: llama.cpp sums in a different order
    # depending on what else shares the batch.
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-3)
    one_by_one = client.embed(texts, model=rt.embed_model, batch_size=1)
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-3)
    single = client.embed("A dog barked.", model=rt.embed_model)
    assert single.shape == (1, vectors.shape[1])


def test_embed_uses_the_runtimes_embedding_model(client: Client) -> None:
    assert client.embed(["hello"]).shape[0] == 1


@pytest.mark.parametrize("bad", [[], "", ["ok", "   "], ["ok", None]])
def test_embed_rejects_empty_input(client: Client, bad: object) -> None:
    with pytest.raises(InvalidInput, match=r"empty|no texts"):
        client.embed(bad)  # type: ignore[arg-type]


def test_unknown_model_names_the_available_ones(client: Client, rt: discovery.Runtime) -> None:
    with pytest.raises(ModelNotFound) as err:
        client.chat("hi", model="no-such-model:1b", max_tokens=4)
    assert err.value.status == 404 and "no-such-model" in err.value.detail
    assert rt.chat_model in str(err.value)


@pytest.fixture(scope="module")
def person(client: Client) -> Reply:
    """A reply constrained to the PERSON schema."""
    return client.chat("Invent a person.", format=PERSON, temperature=0.0, seed=7, max_tokens=48)


def test_json_schema_output(person: Reply) -> None:
    reply = person
    assert reply.validation == "ok"
    person = reply.json()
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert validate(reply, PERSON) == person


def test_json_schema_output_streamed(client: Client) -> None:
    stream = client.stream(
        "Invent a person.", format=PERSON, temperature=0.0, seed=7, max_tokens=48
    )
    text = "".join(stream)
    assert stream.reply.validation == "ok" and validate(text, PERSON) == stream.reply.json()


def test_json_mode(client: Client) -> None:
    schema_free = client.chat(
        'Reply with a JSON object {"colour": <a colour>}.',
        format="json",
        temperature=0.0,
        seed=7,
        max_tokens=40,
    )
    assert schema_free.validation is not None
    if schema_free.finish_reason == "stop":  # JSON mode guarantees JSON unless cut off
        assert isinstance(schema_free.json(), (dict, list))


def test_validation_failure_says_which_field(person: Reply) -> None:
    reply = person
    stricter = {**PERSON, "required": ["name", "age", "email"]}
    with pytest.raises(InvalidModelOutput, match="'email' is a required property") as err:
        validate(reply, stricter)
    assert err.value.raw == reply.text
    properties = {"name": {"type": "string"}, "age": {"type": "string"}}
    wrong_type = {**PERSON, "properties": properties}
    with pytest.raises(InvalidModelOutput, match=r"at \$\.age"):
        validate(reply, wrong_type)


def test_cut_off_structured_reply_fails_validation(client: Client, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    logged = Client(client.url, dialect=client.dialect.name, model=client.model, log=log)
    reply = logged.chat("Invent a person.", format=PERSON, temperature=0.0, seed=7, max_tokens=4)
    assert reply.finish_reason == "length"
    assert reply.validation is not None and "cut off" in reply.validation
    with pytest.raises(InvalidModelOutput) as err:
        reply.json()  # checks against the schema the call asked for
    assert err.value.raw == reply.text
    (record,) = read_log(log.path)
    assert record["validation"] == "failed" and "cut off" in record["validation_error"]
    assert summarize([record])["validation_failures"] == 1


def test_official_openai_client_gives_the_same_kind_of_answer(rt: discovery.Runtime) -> None:
    official = openai.OpenAI(base_url=rt.url + "/v1", api_key="labkit", max_retries=0)
    messages = [{"role": "user", "content": "Invent a person."}]
    theirs = official.chat.completions.create(
        model=rt.chat_model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0.0,
        seed=7,
        max_tokens=48,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    ours = Client(rt.url, dialect="openai", model=rt.chat_model).chat(
        messages, format=PERSON, temperature=0.0, seed=7, max_tokens=48
    )
    their_text = theirs.choices[0].message.content or ""
    assert set(validate(their_text, PERSON)) == set(ours.json()) == {"name", "age"}
    assert theirs.usage is not None and ours.prompt_tokens == theirs.usage.prompt_tokens
    assert theirs.choices[0].finish_reason == ours.finish_reason == "stop"


def test_timeout_per_call_against_the_live_runtime(rt: discovery.Runtime) -> None:
    impatient = Client(rt.url, dialect="ollama", model=rt.chat_model, retry=NO_RETRY)
    with pytest.raises(LabkitTimeout, match="read timeout"):
        impatient.chat("Write a poem.", max_tokens=64, timeout=Timeout(connect=5, read=0.001))
    assert impatient.chat("Hi", max_tokens=4).text  # the client's own timeout still applies


def test_call_log_records_live_calls(client: Client, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    client = Client(client.url, dialect=client.dialect.name, model=client.model, log=log)
    client.chat("Name one colour.", **SHORT)  # type: ignore[arg-type]
    list(client.stream("Name one colour.", **SHORT))  # type: ignore[arg-type]
    client.chat("Invent a person.", format=PERSON, temperature=0.0, seed=7, max_tokens=48)
    client.embed(["one", "two"])
    with pytest.raises(ModelNotFound):
        client.chat("hi", model="no-such-model:1b")
    chat, stream, structured, embed, failed = read_log(log.path)
    assert chat["endpoint"] == client.dialect.chat_path and chat["dialect"] == client.dialect.name
    assert chat["prompt_sha256"] == stream["prompt_sha256"]  # same messages, same hash
    assert "Name one colour." in chat["prompt"]
    assert chat["first_token_s"] is None and 0 < stream["first_token_s"] < stream["latency_s"]
    for record in (chat, stream):
        assert record["prompt_tokens"] > 0 and 0 < record["completion_tokens"] <= 16
        assert record["reply_chars"] > 0 and record["attempts"] == 1 and record["error"] is None
    assert structured["validation"] == "ok" and structured["reply"] is None
    if client.dialect.name == "ollama":  # Ollama's /api/tags carries a digest per model
        assert isinstance(chat["model_version"], str) and len(chat["model_version"]) == 12
    assert embed["endpoint"] == client.dialect.embed_path and embed["texts"] == 2
    assert failed["error"] == "ModelNotFound" and failed["model"] == "no-such-model:1b"
    summary = summarize(read_log(log.path))
    assert summary["calls"] == 5 and summary["errors"] == 1 and summary["validated"] == 1
    assert summary["latency_p50"] is not None and summary["latency_p50"] > 0


def test_call_log_keeps_the_reply_that_failed_validation(client: Client, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    client = Client(client.url, dialect=client.dialect.name, model=client.model, log=log)
    # Two tokens cannot hold the object the schema asks for: validation must fail.
    reply = client.chat("Invent a person.", format=PERSON, temperature=0.0, seed=7, max_tokens=2)
    assert reply.validation != "ok"
    (record,) = read_log(log.path)
    assert record["validation"] == "failed" and record["reply"] == reply.text
    assert "Invent a person." in record["prompt"]


def test_client_finds_the_runtime_on_its_own(rt: discovery.Runtime) -> None:
    found = Client()
    assert found.url == rt.url and found.dialect.name == rt.dialect
    assert found.model == rt.chat_model and found.embed_model == rt.embed_model
    assert found.chat("Hi", max_tokens=4).text


def test_client_guesses_the_dialect_and_model(rt: discovery.Runtime) -> None:
    guessed = Client(rt.url)
    assert guessed.dialect.name == rt.dialect  # asked the runtime
    assert guessed.chat("Hi", max_tokens=4).model == rt.chat_model  # its first chat model
    openai_style = Client(rt.url + "/v1/")  # the URL an OpenAI client would be given
    assert openai_style.url == rt.url and openai_style.dialect.name == "openai"
    assert openai_style.embed(["hi"]).shape[0] == 1  # its embedding model
