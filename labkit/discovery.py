"""Which local runtime am I using, and why?

The search order: an explicit setting (``LABKIT_BASE_URL``, or ``OLLAMA_HOST`` as Ollama's
own client reads it) → a running Ollama → LM Studio → a llama.cpp server → the kit's
embedded runtime, started when asked (``find_runtime(start=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from labkit import runtime
from labkit.errors import RuntimeUnavailable
from labkit.health import identify

__all__ = [
    "KNOWN_RUNTIMES",
    "PROBE_TIMEOUT",
    "Runtime",
    "find_runtime",
    "ollama_host_url",
    "probe",
    "running_runtimes",
]

PROBE_TIMEOUT = 1.0  # seconds; a local server that is up answers in milliseconds

# (name, default port, native dialect) in the order they are tried.
KNOWN_RUNTIMES = (
    ("Ollama", 11434, "ollama"),
    ("LM Studio", 1234, "openai"),
    ("llama.cpp server", 8080, "openai"),
)

_EMBEDDING_HINTS = ("embed", "minilm", "bge", "e5-", "gte", "nomic")


@dataclass(frozen=True)
class Runtime:
    """A runtime that answered: where it is, which dialect it speaks, and why it was chosen."""

    name: str
    url: str
    dialect: str  # "ollama" or "openai"
    reason: str
    models: tuple[str, ...] = field(default=())

    @property
    def openai_url(self) -> str:
        """Base URL for OpenAI-compatible clients (``openai.OpenAI(base_url=...)``)."""
        return self.url + "/v1"

    @property
    def chat_model(self) -> str:
        """The model to chat with: ``$LABKIT_CHAT_MODEL`` or the first non-embedding model."""
        chat = [m for m in self.models if not _is_embedding(m)]
        return os.environ.get("LABKIT_CHAT_MODEL") or (chat[0] if chat else "")

    @property
    def embed_model(self) -> str:
        """The embedding model: ``$LABKIT_EMBED_MODEL_NAME`` or the first embedding model."""
        embed = [m for m in self.models if _is_embedding(m)]
        return os.environ.get("LABKIT_EMBED_MODEL_NAME") or (embed[0] if embed else "")

    def __str__(self) -> str:
        models = ", ".join(self.models) or "no models"
        return f"{self.name} at {self.url} ({self.dialect} dialect; {models}) — {self.reason}"


def _is_embedding(model: str) -> bool:
    return any(hint in model.lower() for hint in _EMBEDDING_HINTS)


def ollama_host_url(value: str) -> str:
    """Turn an ``OLLAMA_HOST`` value (``host``, ``host:port``, ``http://host:port``) into a URL."""
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # a bind-all address; connect over loopback
        host = "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 11434)
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[str, tuple[str, ...]] | None:
    """Ask ``url`` what it is: ``(dialect, models)``, or None if no model server answers."""
    return identify(url, timeout=timeout)


def find_runtime(*, start: bool = False) -> Runtime:
    """The runtime notebooks should use, following the search order in this module's doc.

    With nothing running, ``start=True`` starts the kit's embedded runtime; otherwise this
    raises RuntimeUnavailable (a server takes memory and CPU, so it starts only when asked).
    """
    embedded = runtime.read_record()
    for variable in ("LABKIT_BASE_URL", "OLLAMA_HOST"):
        if value := os.environ.get(variable):
            url = value.rstrip("/") if variable == "LABKIT_BASE_URL" else ollama_host_url(value)
            url = url.removesuffix("/v1")
            found = probe(url)
            if found is None:
                raise RuntimeUnavailable(
                    f"${variable} points at {url}, but no model server answers there. "
                    f"Start your runtime, or unset {variable} to let labkit find one."
                )
            return Runtime("custom", url, found[0], f"set by ${variable}", found[1])

    for name, port, _ in KNOWN_RUNTIMES:
        url = f"http://127.0.0.1:{port}"
        if (found := probe(url)) is None:
            continue
        if embedded and embedded.url == url:
            return _embedded(embedded, found, "the kit's embedded runtime is running")
        return Runtime(name, url, found[0], f"found running on port {port}", found[1])

    if embedded and (found := probe(embedded.url)):
        return _embedded(embedded, found, "the kit's embedded runtime is running")
    if not start:
        raise RuntimeUnavailable(
            "No local runtime is running. Run `labkit up` in a terminal, or start Ollama, "
            "LM Studio or a llama.cpp server."
        )
    record = runtime.up(say=False)
    found = probe(record.url) or ("ollama", tuple(record.models))
    return _embedded(record, found, "no other runtime was running, so labkit started its own")


def _embedded(
    record: runtime.RuntimeRecord, found: tuple[str, tuple[str, ...]], why: str
) -> Runtime:
    return Runtime("embedded (llama.cpp + Ollama API)", record.url, found[0], why, found[1])


def running_runtimes() -> list[Runtime]:
    """Every known runtime answering on its default port, plus the embedded one."""
    embedded = runtime.read_record()
    found: list[Runtime] = []
    for name, port, _ in KNOWN_RUNTIMES:
        url = f"http://127.0.0.1:{port}"
        if embedded and embedded.url == url:
            continue
        if answer := probe(url):
            found.append(Runtime(name, url, answer[0], f"answers on port {port}", answer[1]))
    if embedded and (answer := probe(embedded.url)):
        found.append(_embedded(embedded, answer, f"started by labkit, pid {embedded.pid}"))
    return found
