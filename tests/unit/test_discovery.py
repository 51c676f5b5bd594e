"""Reading the runtime settings (OLLAMA_HOST as Ollama's client reads it, LABKIT_EMBED_URL), and
whose kit runtime answers on a known port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_server import Answer, FakeServer

from labkit import discovery
from labkit.errors import InvalidInput, RuntimeUnavailable
from labkit.probe import KnownRuntime
from labkit.runtime.identity import HEADER, Identity, folder_print


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


def _kit_runtime_at(identity: Identity, lookups: int = 1) -> FakeServer:
    """A fake kit runtime: each lookup asks GET /, GET /api/tags, then GET / for its identity."""
    header = {HEADER: identity.header()}
    root = Answer(200, "Ollama is running", headers=header)
    tags = Answer(200, {"models": [{"name": "smollm2:135m"}]}, headers=header)
    return FakeServer(*[root, tags, root] * lookups)


@pytest.fixture
def nothing_of_ours(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder with no runtime of its own, and no runtime named in the environment."""
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    for name in ("LABKIT_BASE_URL", "OLLAMA_HOST", "LABKIT_EMBED_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _on_ollamas_port(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    monkeypatch.setattr(discovery, "KNOWN_RUNTIMES", (KnownRuntime("Ollama", port, "ollama"),))


def test_another_users_kit_runtime_is_named_and_never_used(
    nothing_of_ours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = Identity("c0ffee", os.getuid() + 1, "ann", folder_print(Path("/home/ann")))
    with _kit_runtime_at(theirs, lookups=2) as fake:
        _on_ollamas_port(monkeypatch, fake.url)
        with pytest.raises(RuntimeUnavailable) as info:
            discovery.find_runtime(start=False)
        listed = discovery.running_runtimes()
    message = str(info.value)
    assert message.startswith("No runtime this folder may use is running.")
    assert f"Another user's kit runtime answers at {fake.url} (ann's)" in message
    assert f"LABKIT_BASE_URL={fake.url}" in message
    assert [(rt.name, rt.foreign) for rt in listed] == [("another user's kit runtime", True)]


def test_a_kit_runtime_shared_by_its_operator_is_used(
    nothing_of_ours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = Identity("beef", os.getuid() + 1, "labkit", folder_print(Path("/var/lib/x")), True)
    with _kit_runtime_at(shared) as fake:
        _on_ollamas_port(monkeypatch, fake.url)
        rt = discovery.find_runtime(start=False)
    assert (rt.url, rt.foreign, rt.name) == (fake.url, False, "shared kit runtime (run by labkit)")


def test_a_runtime_without_the_header_is_ollama(
    nothing_of_ours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, tags = Answer(200, "Ollama is running"), Answer(200, {"models": [{"name": "m:1"}]})
    with FakeServer(root, tags, root) as fake:
        _on_ollamas_port(monkeypatch, fake.url)
        rt = discovery.find_runtime(start=False)
    assert (rt.name, rt.foreign, rt.reason) == (
        "Ollama",
        False,
        f"found running on port {fake.url.rsplit(':', 1)[1]}",
    )


def test_an_identity_says_whose_runtime_it_is(tmp_path: Path) -> None:
    mine = Identity("1234", os.getuid(), "me", folder_print(tmp_path))
    assert Identity.parse(mine.header()) == mine
    assert Identity.parse(None) is None and Identity.parse("instance=1; uid=x") is None
    assert mine.relation("1234", tmp_path) == "own"  # the instance in this folder's record
    assert mine.relation(None, tmp_path) == "other"  # claims this folder, not in its record
    assert mine.relation(None, tmp_path / "elsewhere") == "folder"
    other_user = Identity("9", os.getuid() + 1, "ann", folder_print(tmp_path))
    assert other_user.relation(None, tmp_path) == "user"
    assert (
        Identity("9", os.getuid() + 1, "ops", "f", shared=True).relation(None, tmp_path) == "shared"
    )
    assert folder_print(tmp_path) == folder_print(tmp_path / "." / "")
    assert str(tmp_path) not in mine.header()
