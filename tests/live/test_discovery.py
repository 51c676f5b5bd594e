"""Discovery against real servers: a second address for embeddings, a switch to Ollama's dialect."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit import Client, discovery, runtime


def test_embed_url_sends_embeddings_to_the_second_server(
    embedded: runtime.RuntimeRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chat on llama.cpp's chat server, embeddings from its embedding server, as a learner would."""
    monkeypatch.setenv("LABKIT_BASE_URL", embedded.llama_url)
    # The kit keeps its llama.cpp servers behind a key; a learner's own server may have one too.
    monkeypatch.setenv("LABKIT_API_KEY", embedded.api_key)
    monkeypatch.setenv("LABKIT_EMBED_URL", embedded.embed_url + "/v1/")
    for name in ("LABKIT_CHAT_MODEL", "LABKIT_EMBED_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    rt = discovery.find_runtime(start=False)
    assert (rt.dialect, rt.embed_url, rt.embed_model) == (
        "openai",
        embedded.embed_url,
        runtime.EMBED_MODEL,
    )
    assert rt.has_embeddings and "LABKIT_EMBED_URL" in str(rt)
    with Client() as client:
        vectors = client.embed(["one", "two"])
        assert vectors.shape == (2, 384)
        assert client.chat("Hi", max_tokens=3, temperature=0).text is not None

    monkeypatch.setenv("LABKIT_EMBED_URL", f"http://127.0.0.1:{runtime.free_port()}")
    dead = discovery.find_runtime(start=False)
    assert not dead.has_embeddings and dead.embed_url in dead.embeddings_help()


def test_an_openai_only_runtime_switches_to_the_kits_for_ollamas_api(
    embedded: runtime.RuntimeRecord,
    isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Work written for /api/* gets an Ollama-dialect runtime, started if none runs, and says so."""
    monkeypatch.setenv("LABKIT_BASE_URL", embedded.llama_url)  # speaks only /v1/*
    monkeypatch.setenv("LABKIT_API_KEY", embedded.api_key)  # the kit's llama.cpp wants its key
    monkeypatch.setenv("LABKIT_EMBED_URL", embedded.embed_url)
    monkeypatch.setattr(discovery, "KNOWN_RUNTIMES", ())  # nothing else runs here
    rt = discovery.use_ollama_dialect()
    assert rt.dialect == "ollama" and rt.url != embedded.llama_url
    record = runtime.read_record(isolated_home)
    assert record is not None and record.url == rt.url, "the kit's runtime was started for it"
    said = capsys.readouterr().out
    assert "speaks only OpenAI's dialect" in said and rt.url in said and "labkit down" in said
    # Every later lookup in this process agrees; the other runtime's embedding server is dropped.
    again = discovery.find_runtime(start=False)
    assert (again.url, again.embed_url) == (rt.url, "")
    assert discovery.use_ollama_dialect(say=False).url == rt.url
