"""Reading the runtime settings: OLLAMA_HOST as Ollama's client reads it, LABKIT_EMBED_URL."""

from __future__ import annotations

import pytest

from labkit import discovery
from labkit.errors import InvalidInput


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("example.com:56789", "http://example.com:56789"),
        ("0.0.0.0:8000", "http://127.0.0.1:8000"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("http://example.com:8000/", "http://example.com:8000"),
        ("https://models.example:443", "https://models.example:443"),
        ("localhost:1234/", "http://localhost:1234"),
        ("https://example.com:56789/path/", "https://example.com:56789/path"),
        ("[::1]", "http://[::1]:11434"),
        ("[::1]:11500", "http://[::1]:11500"),
        ("http://[::1]", "http://[::1]:80"),
        ("https://[0001:002:003:0004::1]:56789/path", "https://[0001:002:003:0004::1]:56789/path"),
        ("[::]:11434", "http://[::1]:11434"),
        ("  127.0.0.1:9000 ", "http://127.0.0.1:9000"),
    ],
)
def test_ollama_host_is_read_like_ollamas_client(value: str, url: str) -> None:
    assert discovery.ollama_host_url(value) == url


@pytest.mark.parametrize("value", ["::1", "::1:11434", "fe80::1", "example.com:port"])
def test_an_unreadable_ollama_host_says_how_to_write_it(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"OLLAMA_HOST.*\[::1\]:11434"):
        discovery.ollama_host_url(value)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", ""),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/v1", "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/v1/", "http://127.0.0.1:8081"),
    ],
)
def test_embed_url_is_read_without_v1(
    value: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABKIT_EMBED_URL", value)
    assert discovery.embed_url_from_env() == url


def test_embedding_model_comes_from_the_second_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABKIT_EMBED_MODEL_NAME", raising=False)
    monkeypatch.delenv("LABKIT_CHAT_MODEL", raising=False)
    chat_only = discovery.Runtime("custom", "http://a:1", "openai", "", ("/m/SmolLM2.gguf",))
    assert chat_only.chat_model == "/m/SmolLM2.gguf" and not chat_only.has_embeddings
    assert "--embeddings --pooling mean" in chat_only.embeddings_help()
    assert "LABKIT_EMBED_URL" in chat_only.embeddings_help()
    # llama.cpp names a model by its file; a server started for embeddings serves only that.
    both = discovery.Runtime(
        "custom", "http://a:1", "openai", "", ("/m/chat.gguf",), "http://b:2", ("/m/e.gguf",)
    )
    assert (both.chat_model, both.embed_model, both.embeddings_url) == (
        "/m/chat.gguf",
        "/m/e.gguf",
        "http://b:2",
    )
    dead = discovery.Runtime(
        "custom", "http://a:1", "openai", "", ("/m/chat.gguf",), "http://b:2", ()
    )
    assert not dead.has_embeddings and "http://b:2" in dead.embeddings_help()
    ollama = discovery.Runtime("Ollama", "http://a:1", "ollama", "", ("llama3.2:3b",))
    assert "ollama pull all-minilm" in ollama.embeddings_help()
