"""One client for local model servers, whichever of the two common dialects they speak.

Ollama has its own API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``);
LM Studio and llama.cpp's server speak OpenAI's (``/v1/chat/completions``,
``/v1/embeddings``, ``/v1/models``). ``Client`` offers the same verbs over both::

    client = Client()                                   # the runtime labkit finds
    client = Client.preset("lmstudio")                  # LM Studio on its default port
    reply = client.chat("Name three colours.", max_tokens=40)
    reply.text, reply.latency, reply.tokens_per_second
    for piece in (stream := client.stream("Tell me a story")):
        print(piece, end="")
    stream.reply.first_token                            # seconds until the first piece
    vectors = client.embed(["one text", "another"])     # numpy array, shape (2, dim)

Everything is plain HTTP with ``requests``: open this file to see the exact requests each
dialect gets. Failures become the errors in ``labkit.errors``; busy or unreachable runtimes
are retried (see ``labkit.retry``); every call can be logged (see ``labkit.calllog``).
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import requests
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from labkit import discovery
from labkit.calllog import CallLog
from labkit.errors import (
    InvalidModelOutput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
    RuntimeUnavailable,
    ServerError,
)
from labkit.retry import NO_RETRY, RetryPolicy, ServerBusy
from labkit.structured import InvalidInput, Schema, check_schema, parse_json, validate

Messages = str | Sequence[Mapping[str, Any]]
Format = str | Schema | None
Fallback = str | Callable[[LabkitError], str] | None

# name -> (base URL, dialect, what to start when nothing answers there)
PRESETS: dict[str, tuple[str, str, str]] = {
    "ollama": ("http://127.0.0.1:11434", "ollama", "Ollama"),
    "lmstudio": ("http://127.0.0.1:1234", "openai", "LM Studio's server"),
    "llamacpp": ("http://127.0.0.1:8080", "openai", "llama.cpp's llama-server"),
}
DIALECTS = ("ollama", "openai")
STREAM_CHUNK = 8192  # bytes per read; chunked responses still hand over each piece at once


@dataclass(frozen=True)
class Timeout:
    """How long to wait: ``connect`` for the connection, ``read`` for each gap between bytes."""

    connect: float = 30.0
    read: float = 120.0

    @classmethod
    def of(cls, value: Timeout | float | None, default: Timeout) -> Timeout:
        """A Timeout from a Timeout, a number of seconds (both limits) or None (the default)."""
        if value is None:
            return default
        if isinstance(value, Timeout):
            return value
        return cls(connect=float(value), read=float(value))


@dataclass
class Reply:
    """A model's answer with everything the runtime told about how it was made."""

    text: str
    model: str
    dialect: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    latency: float = 0.0  # seconds from sending the request to the end of the answer
    first_token: float | None = None  # seconds to the first piece (streams only)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, Any] = field(default_factory=dict, repr=False)  # the runtime's own
    finish_reason: str | None = None  # "stop", "length", ... as the runtime says it
    from_fallback: bool = False  # True: every attempt failed and this is the fallback text
    attempts: int = 1
    validation: str | None = None  # "ok" or what is wrong, when a format was asked for
    error: str | None = None  # why the fallback was used
    schema: Schema | None = field(default=None, repr=False)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed, from the runtime's own counters when it reports them."""
        t = self.timings
        if t.get("eval_count") and t.get("eval_duration"):  # Ollama: nanoseconds
            return float(t["eval_count"]) / (float(t["eval_duration"]) / 1e9)
        if t.get("predicted_per_second"):  # llama.cpp
            return float(t["predicted_per_second"])
        if t.get("predicted_n") and t.get("predicted_ms"):
            return float(t["predicted_n"]) / (float(t["predicted_ms"]) / 1000.0)
        # No counters: estimate from the clock (after the first piece, if we know when).
        decode = self.latency - (self.first_token or 0.0)
        if self.completion_tokens and decode > 0:
            return self.completion_tokens / decode
        return None

    def json(self, schema: Schema | None = None) -> Any:
        """The text parsed as JSON, checked against ``schema`` (or the one the call asked for)."""
        return validate(self, schema if schema is not None else self.schema)


@dataclass(frozen=True)
class Health:
    """Is the runtime up, and does it have the model?"""

    up: bool
    model_available: bool | None  # None when no model was asked about
    detail: str

    def __bool__(self) -> bool:
        return self.up and self.model_available is not False


# --- the two dialects: how a request looks, how an answer reads -------------------------------


@dataclass
class _Parsed:
    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: dict[str, Any]
    finish_reason: str | None


@dataclass(frozen=True)
class _Settings:
    format: Format
    temperature: float | None
    seed: int | None
    max_tokens: int | None
    options: Mapping[str, Any] | None


class OllamaDialect:
    """Ollama's own API: NDJSON streams, counters in nanoseconds."""

    name: ClassVar[str] = "ollama"
    chat_path: ClassVar[str] = "/api/chat"
    generate_path: ClassVar[str] = "/api/generate"
    embed_path: ClassVar[str] = "/api/embed"
    models_path: ClassVar[str] = "/api/tags"
    health_path: ClassVar[str] = "/"
    TIMING_KEYS: ClassVar[tuple[str, ...]] = (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    )

    def _common(self, model: str, stream: bool, s: _Settings) -> dict[str, Any]:
        options = dict(s.options or {})
        for key, value in (
            ("temperature", s.temperature),
            ("seed", s.seed),
            ("num_predict", s.max_tokens),  # Ollama's name for max_tokens
        ):
            if value is not None:
                options[key] = value
        body: dict[str, Any] = {"model": model, "stream": stream}  # Ollama streams by default
        if options:
            body["options"] = options
        if s.format is not None:
            body["format"] = s.format  # "json" or a JSON schema, as it is
        return body

    def chat(
        self, model: str, messages: list[dict[str, Any]], stream: bool, s: _Settings
    ) -> tuple[str, dict[str, Any]]:
        """The path and body of a chat request."""
        return self.chat_path, {**self._common(model, stream, s), "messages": messages}

    def generate(
        self, model: str, prompt: str, system: str | None, stream: bool, s: _Settings
    ) -> tuple[str, dict[str, Any]]:
        """The path and body of a one-prompt request."""
        body = {**self._common(model, stream, s), "prompt": prompt}
        if system:
            body["system"] = system
        return self.generate_path, body

    def parse(self, data: dict[str, Any]) -> _Parsed:
        """Read a (non-streamed, or the final streamed) answer."""
        message = data.get("message")
        text = message.get("content") if isinstance(message, dict) else data.get("response")
        return _Parsed(
            text=text or "",
            model=str(data.get("model", "")),
            prompt_tokens=data.get("prompt_eval_count"),
            completion_tokens=data.get("eval_count"),
            timings={k: data[k] for k in self.TIMING_KEYS if k in data},
            finish_reason=data.get("done_reason"),
        )

    def has_text(self, data: dict[str, Any]) -> bool:
        """True if a non-streamed answer has the field with the text."""
        return isinstance(data.get("message"), dict) or "response" in data

    def stream_line(self, line: bytes, meta: dict[str, Any]) -> tuple[str, bool]:
        """One NDJSON line: (text piece, is this the last line); metadata goes into ``meta``."""
        if not line.strip():
            return "", False
        chunk = _json_line(line)
        if "error" in chunk:
            raise _StreamFailure(str(chunk["error"]))
        message = chunk.get("message")
        piece = message.get("content") if isinstance(message, dict) else chunk.get("response")
        done = chunk.get("done") is True
        if done:
            meta.update(chunk)  # the last line carries the counters and done_reason
        else:
            meta.setdefault("model", chunk.get("model"))
        return piece or "", done

    def stream_complete(self, meta: dict[str, Any]) -> bool:
        """True if the stream reached its proper end."""
        return meta.get("done") is True

    def embed(self, model: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
        """The path and body of an embedding request (a whole batch at once)."""
        return self.embed_path, {"model": model, "input": texts}

    def embeddings(self, data: dict[str, Any]) -> list[list[float]]:
        """The vectors from an embedding answer, in input order."""
        vectors: list[list[float]] = data["embeddings"]
        return vectors

    def model_names(self, data: dict[str, Any]) -> list[str]:
        """Model names from /api/tags."""
        return [str(m["name"]) for m in data.get("models", [])]


class OpenAIDialect:
    """OpenAI's API as LM Studio and llama.cpp serve it: SSE streams ending in ``[DONE]``."""

    name: ClassVar[str] = "openai"
    chat_path: ClassVar[str] = "/v1/chat/completions"
    generate_path: ClassVar[str] = "/v1/chat/completions"
    embed_path: ClassVar[str] = "/v1/embeddings"
    models_path: ClassVar[str] = "/v1/models"
    health_path: ClassVar[str] = "/v1/models"
    # Ollama option names that have an OpenAI-style twin.
    RENAMED: ClassVar[dict[str, str]] = {"num_predict": "max_tokens"}

    def chat(
        self, model: str, messages: list[dict[str, Any]], stream: bool, s: _Settings
    ) -> tuple[str, dict[str, Any]]:
        """The path and body of a chat request."""
        # Extra options (repeat_penalty, top_k, ...) go top-level, where llama.cpp and
        # LM Studio read them.
        body: dict[str, Any] = {self.RENAMED.get(k, k): v for k, v in (s.options or {}).items()}
        body.update(model=model, messages=messages, stream=stream)
        for key, value in (
            ("temperature", s.temperature),
            ("seed", s.seed),
            ("max_tokens", s.max_tokens),
        ):
            if value is not None:
                body[key] = value
        if stream:
            # Ask for token counts at the end of the stream (otherwise streams report none).
            body["stream_options"] = {"include_usage": True}
        if s.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif isinstance(s.format, Mapping):
            name = str(s.format.get("title", "reply")).replace(" ", "_")[:64] or "reply"
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": dict(s.format), "strict": True},
            }
        return self.chat_path, body

    def generate(
        self, model: str, prompt: str, system: str | None, stream: bool, s: _Settings
    ) -> tuple[str, dict[str, Any]]:
        """A one-prompt request: a one-turn chat, which is what Ollama's generate does too.

        (``/v1/completions`` would skip the model's chat template and get raw continuation.)
        """
        return self.chat(model, _as_messages(prompt, system), stream, s)

    def parse(self, data: dict[str, Any]) -> _Parsed:
        """Read a (non-streamed, or the merged streamed) answer."""
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        return _Parsed(
            text=message.get("content") or "",
            model=str(data.get("model", "")),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            timings=dict(data.get("timings") or {}),  # llama.cpp's; others send none
            finish_reason=choice.get("finish_reason"),
        )

    def has_text(self, data: dict[str, Any]) -> bool:
        """True if a non-streamed answer has the field with the text."""
        choices = data.get("choices")
        return isinstance(choices, list) and bool(choices) and "message" in choices[0]

    def stream_line(self, line: bytes, meta: dict[str, Any]) -> tuple[str, bool]:
        """One SSE line: (text piece, is this the last line); metadata goes into ``meta``."""
        if line.startswith(b"error:"):  # llama.cpp reports some failures as an SSE error event
            raise _StreamFailure(_error_text(line[6:].strip()))
        if not line.startswith(b"data:"):
            return "", False  # blank separators, comments (":"), event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "", True
        chunk = _json_line(payload)
        if "error" in chunk:
            raise _StreamFailure(_error_text(payload))
        meta.setdefault("model", chunk.get("model"))
        for key in ("usage", "timings"):  # with include_usage, the last chunk has them
            if chunk.get(key):
                meta[key] = chunk[key]
        piece = ""
        for choice in chunk.get("choices") or []:
            piece += (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                meta["choices"] = [{"finish_reason": choice["finish_reason"]}]
        return piece, False

    def stream_complete(self, meta: dict[str, Any]) -> bool:
        """True if the stream reached its end (some servers stop after finish_reason)."""
        return "choices" in meta

    def embed(self, model: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
        """The path and body of an embedding request (a whole batch at once)."""
        return self.embed_path, {"model": model, "input": texts}

    def embeddings(self, data: dict[str, Any]) -> list[list[float]]:
        """The vectors from an embedding answer, in input order."""
        rows = sorted(data["data"], key=lambda row: row.get("index", 0))
        return [row["embedding"] for row in rows]

    def model_names(self, data: dict[str, Any]) -> list[str]:
        """Model ids from /v1/models."""
        return [str(m["id"]) for m in data.get("data", [])]


Dialect = OllamaDialect | OpenAIDialect


class _StreamFailure(Exception):
    """The runtime reported an error inside an already-started stream."""


def _json_line(line: bytes) -> dict[str, Any]:
    """One line of a stream as a JSON object; anything else means the stream is damaged."""
    try:
        chunk = json.loads(line)
    except ValueError as exc:
        raise _BadLine(line) from exc
    if not isinstance(chunk, dict):
        raise _BadLine(line)
    return chunk


class _BadLine(Exception):
    def __init__(self, line: bytes) -> None:
        super().__init__(line)
        self.line = line.decode("utf-8", "replace")


def _error_text(payload: bytes | str | dict[str, Any]) -> str:
    """The runtime's own error message from an Ollama or OpenAI error body."""
    data: Any = payload
    if isinstance(payload, (bytes, str)):
        try:
            data = json.loads(payload)
        except ValueError:
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
            return text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):  # OpenAI: {"error": {"message": ...}}
            return str(error.get("message") or error)
        return str(error)  # Ollama: {"error": "..."}
    return str(data)[:500]


def _as_messages(messages: Messages, system: str | None) -> list[dict[str, Any]]:
    """A chat message list from a plain string or a list of {"role", "content"} dicts."""
    if isinstance(messages, str):
        if not messages.strip():
            raise InvalidInput("The prompt is empty: give the model something to answer.")
        listed: list[dict[str, Any]] = [{"role": "user", "content": messages}]
    else:
        listed = []
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise InvalidInput(
                    f'Message {i} must be a dict like {{"role": "user", "content": "..."}}; '
                    f"got {message!r:.80}."
                )
            if message.get("content") is None:
                raise InvalidInput(f"Message {i} ({message['role']}) has no content.")
            listed.append(dict(message))
        if not listed:
            raise InvalidInput("No messages: pass a prompt string or a non-empty message list.")
    if system:
        listed.insert(0, {"role": "system", "content": system})
    return listed


def _check_format(format: Format) -> None:
    if format is None or format == "json":
        return
    if isinstance(format, str):
        raise InvalidInput(f'format must be None, "json" or a JSON schema dict, not {format!r}.')
    check_schema(format)


def _outcome(validation: str) -> str:
    """ "ok" or "failed", for the call log (the reply keeps the full message)."""
    return "ok" if validation == "ok" else "failed"


def _same_model(wanted: str, name: str) -> bool:
    """Ollama treats ``llama3`` and ``llama3:latest`` as one model."""
    return wanted == name or f"{wanted}:latest" == name or wanted == f"{name}:latest"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- the client -------------------------------------------------------------------------------


class Client:
    """Chat, stream, generate, embed and list models on one local runtime."""

    def __init__(
        self,
        url: str | None = None,
        *,
        dialect: str | None = None,
        model: str | None = None,
        embed_model: str | None = None,
        timeout: Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        log: CallLog | str | Path | None = None,
        fallback: Fallback = None,
        api_key: str | None = None,
        runtime_name: str | None = None,
        embed_url: str | None = None,
    ) -> None:
        known: tuple[str, ...] | None = None
        if url is None:
            found = discovery.find_runtime()
            url, dialect = found.url, dialect or found.dialect
            model, embed_model = model or found.chat_model, embed_model or found.embed_model
            known = found.models
        base = url.rstrip("/")
        self.url = base.removesuffix("/v1")
        if not urlsplit(self.url).scheme.startswith("http"):
            raise InvalidInput(f"{url!r} is not an http:// URL (example: http://127.0.0.1:11434).")
        # A URL ending in /v1 is what OpenAI-style clients are given: take the hint.
        dialect = dialect or ("openai" if base != self.url else self._guess_dialect())
        if dialect not in DIALECTS:
            raise InvalidInput(f"dialect must be 'ollama' or 'openai', not {dialect!r}.")
        self.dialect: Dialect = OllamaDialect() if dialect == "ollama" else OpenAIDialect()
        self.model = model or None
        self.embed_model = embed_model or None
        # llama.cpp serves embeddings from a second server: $LABKIT_EMBED_URL names it.
        embed_url = discovery.embed_url_from_env() if embed_url is None else embed_url
        self.embed_url = embed_url.rstrip("/").removesuffix("/v1") or self.url
        self._embedder: Client | None = None
        self._known_models = known
        self._versions: dict[str, str | None] = {}  # model -> digest, for the call log
        self.timeout = Timeout.of(timeout, Timeout())
        self.retry = retry if retry is not None else RetryPolicy()
        self.log = CallLog(log) if isinstance(log, (str, Path)) else log
        self.fallback = fallback
        # What to start when nothing answers, named in the error message.
        self.runtime_name = runtime_name or (
            "Ollama" if dialect == "ollama" else "your server (LM Studio, llama.cpp, ...)"
        )
        # One session: keeps the connection open between calls (no new TCP handshake each time).
        self.session = requests.Session()
        # Room for many calls at once (threads): requests keeps only 10 connections otherwise.
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))
        if urlsplit(self.url).hostname in ("127.0.0.1", "localhost", "::1"):
            self.session.trust_env = False  # a proxy from the environment must not see loopback
        api_key = api_key or os.environ.get("LABKIT_API_KEY")
        if api_key:  # a shared runtime behind an authenticating proxy (see deploy/)
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def preset(cls, name: str, **kwargs: Any) -> Client:
        """A client for Ollama, LM Studio or llama.cpp's server on their default ports."""
        if name not in PRESETS:
            raise InvalidInput(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        url, dialect, runtime_name = PRESETS[name]
        return cls(url, dialect=dialect, runtime_name=runtime_name, **kwargs)

    def _guess_dialect(self) -> str:
        port = urlsplit(self.url).port
        for _, known_port, dialect in discovery.KNOWN_RUNTIMES:
            if port == known_port:
                return dialect
        found = discovery.probe(self.url)
        # Nothing answers: OpenAI's dialect is the one most servers speak.
        return found[0] if found else "openai"

    def __repr__(self) -> str:
        return f"Client({self.url!r}, dialect={self.dialect.name!r}, model={self.model!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the open connections."""
        self.session.close()
        if self._embedder is not None:
            self._embedder.close()

    # --- verbs ----------------------------------------------------------------------------

    def chat(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        format: Format = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: Timeout | float | None = None,
    ) -> Reply:
        """Send a conversation (or one prompt string) and wait for the whole answer."""
        _check_format(format)
        listed = _as_messages(messages, system)
        model = model or self._default_model()
        settings = _Settings(format, temperature, seed, max_tokens, options)
        path, body = self.dialect.chat(model, listed, False, settings)
        return self._complete(
            path, body, model=model, prompt=listed, format=format, timeout=timeout
        )

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        system: str | None = None,
        format: Format = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: Timeout | float | None = None,
    ) -> Reply:
        """Send one prompt (no conversation) and wait for the whole answer."""
        _check_format(format)
        if not isinstance(prompt, str):
            raise InvalidInput(f"generate() takes one prompt string, not {type(prompt).__name__}.")
        listed = _as_messages(prompt, system)  # validates; also what the log records
        model = model or self._default_model()
        settings = _Settings(format, temperature, seed, max_tokens, options)
        path, body = self.dialect.generate(model, prompt, system, False, settings)
        return self._complete(
            path, body, model=model, prompt=listed, format=format, timeout=timeout
        )

    def stream(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        format: Format = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: Timeout | float | None = None,
    ) -> Stream:
        """Like chat, but iterate over the answer's pieces as the model writes them."""
        _check_format(format)
        listed = _as_messages(messages, system)
        model = model or self._default_model()
        settings = _Settings(format, temperature, seed, max_tokens, options)
        path, body = self.dialect.chat(model, listed, True, settings)
        return Stream(self, path, body, model=model, prompt=listed, format=format, timeout=timeout)

    def models(
        self, *, timeout: Timeout | float | None = None, retry: RetryPolicy | None = None
    ) -> list[str]:
        """The names of the models the runtime has."""
        path = self.dialect.models_path
        data = self._call("GET", path, None, model=None, timeout=timeout, retry=retry)
        names = self.dialect.model_names(data)
        self._known_models = tuple(names)
        return names

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        batch_size: int = 32,
        timeout: Timeout | float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embedding vectors, one row per text: a float32 array of shape (n, dim)."""
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise InvalidInput("embed() got no texts: pass a string or a non-empty list of them.")
        blank = [i for i, t in enumerate(items) if not isinstance(t, str) or not t.strip()]
        if blank:
            raise InvalidInput(
                f"Text(s) at position(s) {blank[:10]} are empty, blank or not strings: "
                "they have no meaning to embed. Drop them (or replace them) first."
            )
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, not {batch_size}.")
        if self.embed_url != self.url:
            return self._embed_client().embed(
                items, model=model or self.embed_model, batch_size=batch_size, timeout=timeout
            )
        model = model or self._default_embed_model()
        start, tries, rows = time.perf_counter(), _Tries(), []
        try:
            for i in range(0, len(items), batch_size):
                batch = items[i : i + batch_size]
                path, body = self.dialect.embed(model, batch)
                data = self._call("POST", path, body, model=model, timeout=timeout, tries=tries)
                try:
                    vectors = self.dialect.embeddings(data)
                except (KeyError, TypeError) as exc:
                    raise ServerError(
                        f"The runtime's answer to {path} has no embeddings in the expected place.",
                        status=200,
                        detail=json.dumps(data)[:300],
                    ) from exc
                if len(vectors) != len(batch):
                    raise ServerError(
                        f"Asked for {len(batch)} embeddings, got {len(vectors)} from {path}.",
                        status=200,
                    )
                rows.extend(vectors)
            try:
                result = np.asarray(rows, dtype=np.float32)
            except ValueError as exc:  # rows of different lengths
                raise ServerError(
                    f"The runtime's embeddings from {self.dialect.embed_path} differ in length.",
                    status=200,
                ) from exc
        except LabkitError as exc:
            latency = time.perf_counter() - start
            self._log_call(self.dialect.embed_path, model, items, latency, tries.count, error=exc)
            raise
        latency = time.perf_counter() - start
        self._log_call(
            self.dialect.embed_path,
            model,
            items,
            latency,
            tries.count,
            texts=len(items),
            dim=int(result.shape[1]),
        )
        return result

    def health(self, model: str | None = None) -> Health:
        """Whether the runtime answers, and (if named) whether it has ``model``; never raises."""
        quick = Timeout(connect=min(self.timeout.connect, 3.0), read=min(self.timeout.read, 10.0))
        where = f"The runtime at {self.url} ({self.dialect.name} dialect)"
        try:
            # Ollama answers GET / with "Ollama is running"; OpenAI-style servers have no such
            # page, so listing the models is their liveness check.
            self._send("GET", self.dialect.health_path, None, timeout=quick).close()
            names = self.models(timeout=quick, retry=NO_RETRY) if model else []
        except LabkitError as exc:
            return Health(False, None if model is None else False, str(exc))
        if model is None:
            return Health(True, None, f"{where} is up.")
        if any(_same_model(model, name) for name in names):
            return Health(True, True, f"{where} is up and has {model!r}.")
        return Health(
            True, False, f"{where} is up but has no {model!r} (it has: {', '.join(names)})."
        )

    # --- plumbing: defaults, requests, errors, logging -------------------------------------

    def _default_model(self) -> str:
        if self.model is None:
            self.model = self._pick_model(embedding=False)
        return self.model

    def _embed_client(self) -> Client:
        """The client of the embedding server at ``embed_url`` (made on first use)."""
        if self._embedder is None:
            self._embedder = Client(
                self.embed_url,
                embed_model=self.embed_model,
                timeout=self.timeout,
                retry=self.retry,
                log=self.log,
                embed_url="",
                runtime_name=f"the embedding server at {self.embed_url} ($LABKIT_EMBED_URL)",
            )
        return self._embedder

    def _default_embed_model(self) -> str:
        if self.embed_model is None:
            self.embed_model = self._pick_model(embedding=True)
        return self.embed_model

    def _pick_model(self, *, embedding: bool) -> str:
        names = self._known_models if self._known_models is not None else tuple(self.models())
        info = discovery.Runtime("", self.url, self.dialect.name, "", names)
        chosen = info.embed_model if embedding else info.chat_model
        if not chosen:
            kind = "embedding" if embedding else "chat"
            raise ModelNotFound(
                f"{self.url} has no {kind} model (it has: {', '.join(names) or 'none'}). "
                f"Pass {'embed_model' if embedding else 'model'}=... to Client().",
                status=404,
            )
        return chosen

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        timeout: Timeout | float | None,
        stream: bool = False,
        model: str | None = None,
    ) -> requests.Response:
        """One HTTP request; any failure comes back as a LabkitError."""
        limits = Timeout.of(timeout, self.timeout)
        try:
            response = self.session.request(
                method,
                self.url + path,
                json=body,
                stream=stream,
                timeout=(limits.connect, limits.read),
            )
        except requests.RequestException as exc:
            raise self._transport_error(exc, path, limits, pieces=None) from exc
        if response.status_code >= 400:
            try:
                detail = _error_text(response.content)
            except requests.RequestException:
                detail = ""
            response.close()
            raise self._http_error(response, path, detail, model)
        return response

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        model: str | None,
        timeout: Timeout | float | None,
        tries: _Tries | None = None,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """A request (retried per the policy) whose answer is one JSON object."""
        tries = tries if tries is not None else _Tries()
        retry = retry if retry is not None else self.retry

        def once() -> dict[str, Any]:
            tries.count += 1
            response = self._send(method, path, body, timeout=timeout, model=model)
            try:
                data = response.json()
            except ValueError as exc:
                raise ServerError(
                    f"The runtime's answer to {path} is not JSON; is {self.url} really "
                    f"a model server speaking the {self.dialect.name} dialect?",
                    status=response.status_code,
                    detail=response.text[:300],
                ) from exc
            if not isinstance(data, dict):
                raise ServerError(
                    f"The runtime's answer to {path} is not a JSON object.",
                    status=response.status_code,
                    detail=response.text[:300],
                )
            return data

        return retry.call(once)

    def _complete(
        self,
        path: str,
        body: dict[str, Any],
        *,
        model: str,
        prompt: list[dict[str, Any]],
        format: Format,
        timeout: Timeout | float | None,
    ) -> Reply:
        """A non-streamed chat or generate call: send, retry, parse, validate, log."""
        start, tries = time.perf_counter(), _Tries()
        try:
            data = self._call("POST", path, body, model=model, timeout=timeout, tries=tries)
            if not self.dialect.has_text(data):
                raise ServerError(
                    f"The runtime's answer to {path} has no text where the "
                    f"{self.dialect.name} dialect puts it.",
                    status=200,
                    detail=json.dumps(data)[:300],
                )
        except LabkitError as exc:
            return self._fail(exc, path, model, prompt, start, tries.count)
        parsed = self.dialect.parse(data)
        reply = Reply(
            text=parsed.text,
            model=parsed.model or model,
            dialect=self.dialect.name,
            raw=data,
            latency=time.perf_counter() - start,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=parsed.completion_tokens,
            timings=parsed.timings,
            finish_reason=parsed.finish_reason,
            attempts=tries.count,
            schema=format if isinstance(format, Mapping) else None,
        )
        return self._finish(reply, path, model, prompt, format)

    def _finish(self, reply: Reply, path: str, model: str, prompt: Any, format: Format) -> Reply:
        """Check the reply against the format asked for, log the call, hand it back."""
        if format is not None:
            try:
                if isinstance(format, Mapping):
                    validate(reply, format)
                else:
                    parse_json(reply.text)
                reply.validation = "ok"
            except InvalidModelOutput as exc:
                reply.validation = str(exc)  # the caller decides: reply.json() raises it
                if reply.finish_reason == "length" and "max_tokens" not in reply.validation:
                    reply.validation += " The reply was cut off at max_tokens: raise it."
        self._log_call(
            path,
            model,
            prompt,
            reply.latency,
            reply.attempts,
            first_token=reply.first_token,
            reply_chars=len(reply.text),
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            validation=None if reply.validation is None else _outcome(reply.validation),
            validation_error=None if reply.validation in (None, "ok") else reply.validation,
            # A reply that failed validation is kept whole: it is the case to study and fix.
            reply=None if reply.validation in (None, "ok") else reply.text,
        )
        return reply

    def _fail(
        self,
        exc: LabkitError,
        path: str,
        model: str,
        prompt: Any,
        start: float,
        attempts: int,
    ) -> Reply:
        """Every attempt failed: hand back the fallback reply if there is one, else raise."""
        latency = time.perf_counter() - start
        # A wrong model name or bad input is a mistake to fix, not an outage to paper over.
        if self.fallback is None or isinstance(exc, (ModelNotFound, InvalidInput)):
            self._log_call(path, model, prompt, latency, attempts, error=exc)
            raise exc
        text = self.fallback if isinstance(self.fallback, str) else self.fallback(exc)
        reply = Reply(
            text=text,
            model=model,
            dialect=self.dialect.name,
            latency=latency,
            from_fallback=True,
            attempts=attempts,
            error=f"{type(exc).__name__}: {exc}",
        )
        self._log_call(
            path,
            model,
            prompt,
            latency,
            attempts,
            error=exc,
            from_fallback=True,
            reply_chars=len(text),
        )
        return reply

    def _log_call(
        self, path: str, model: str, prompt: Any, latency: float, attempts: int, **fields: Any
    ) -> None:
        """One record in the call log, if the client has one."""
        if self.log is None:
            return
        # The messages as JSON: the same conversation always hashes the same.
        text = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
        self.log.record(
            endpoint=path,
            dialect=self.dialect.name,
            model=model,
            model_version=self._model_version(model),
            prompt=text,
            latency=latency,
            attempts=attempts,
            **fields,
        )

    def _model_version(self, model: str) -> str | None:
        """The model's digest from /api/tags (Ollama), looked up once per model; else None."""
        if model not in self._versions:
            self._versions[model] = None
            if self.dialect.name == "ollama":
                try:
                    data = self._call(
                        "GET", "/api/tags", None, model=None, timeout=5.0, retry=NO_RETRY
                    )
                except LabkitError:
                    return None  # the log must never break a call; try again next time
                for entry in data.get("models", []):
                    if _same_model(model, str(entry.get("name", ""))):
                        self._versions[model] = str(entry.get("digest", ""))[:12] or None
        return self._versions[model]

    def _transport_error(
        self, exc: requests.RequestException, path: str, limits: Timeout, pieces: int | None
    ) -> LabkitError:
        """Turn a connection-level failure into a labkit error that says what to do."""
        where = f"{self.url}{path}"
        during = "" if pieces is None else f" in the middle of the stream (after {pieces} pieces)"
        if isinstance(exc, requests.ConnectTimeout):
            return LabkitTimeout(
                f"Could not connect to {self.url} within {limits.connect:g} s (the connect "
                "timeout). Check the address and that the runtime is up; to wait longer pass "
                f"timeout=Timeout(connect={max(60.0, 2 * limits.connect):g})."
            )
        reason = exc.args[0] if exc.args else None
        if isinstance(exc, requests.ReadTimeout) or isinstance(reason, ReadTimeoutError):
            return LabkitTimeout(
                f"{where} sent nothing for {limits.read:g} s (the read timeout){during}. If the "
                "model is just slow (long answer, large model, busy CPU), raise it: "
                f"timeout=Timeout(read={max(300.0, 2 * limits.read):g}) on the call or the Client."
            )
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
            return InvalidInput(f"{self.url!r} is not a usable URL: {exc}")
        if isinstance(getattr(reason, "reason", None), NewConnectionError):
            return RuntimeUnavailable(
                f"No runtime at {self.url} — run `labkit up` or start {self.runtime_name}."
            )
        if pieces is not None:
            return _BrokenStream(
                f"The stream from {where} broke off after {pieces} pieces ({exc}). The runtime "
                "may have stopped or crashed: check `labkit status` and try again.",
                status=200,
                detail=str(exc),
            )
        return RuntimeUnavailable(
            f"The runtime at {self.url} dropped the connection before answering {path} ({exc}). "
            "It may be restarting or have crashed: check `labkit status` and try again."
        )

    def _http_error(
        self, response: requests.Response, path: str, detail: str, model: str | None
    ) -> ServerError:
        """Turn an HTTP error status into a labkit error carrying the runtime's own message."""
        status = response.status_code
        lowered = detail.lower()
        # Ollama says "model 'x' not found"; OpenAI-style servers "model_not_found" or
        # "The model `x` does not exist".
        missing = "not found" in lowered or "not_found" in lowered or "does not exist" in lowered
        if status in (400, 404) and model and "model" in lowered and missing:
            try:
                names = self.models(timeout=Timeout(3.0, 10.0), retry=NO_RETRY)
                available = ", ".join(names) or "none"
            except LabkitError:
                available = "unknown (listing the models failed too)"
            pull = f" (`ollama pull {model}`)" if self.dialect.name == "ollama" else ""
            return ModelNotFound(
                f"Model {model!r} is not available at {self.url}. Available models: {available}. "
                f"Use one of those, or install it first{pull}.",
                status=status,
                detail=detail,
            )
        if status in (401, 403):
            return ServerError(
                f"The runtime at {self.url} refused the request (HTTP {status}: {detail}). "
                "It wants an API key: pass Client(..., api_key=...) or set $LABKIT_API_KEY.",
                status=status,
                detail=detail,
            )
        if status == 404:
            other = "openai" if self.dialect.name == "ollama" else "ollama"
            return ServerError(
                f"{self.url} has no {path} endpoint (HTTP 404: {detail or 'not found'}). Does it "
                f"speak the {self.dialect.name} dialect? Try Client(..., dialect={other!r}).",
                status=status,
                detail=detail,
            )
        if status in (429, 503):
            wait = _retry_after(response.headers.get("Retry-After"))
            hint = f"; it asks to wait {wait:g} s" if wait is not None else ""
            return ServerBusy(
                f"The runtime at {self.url} is busy (HTTP {status}: {detail}){hint}. "
                "Try again in a moment, or send fewer requests at once.",
                status=status,
                detail=detail,
                retry_after=wait,
            )
        return ServerError(
            f"The runtime at {self.url} answered HTTP {status} to {path}: {detail}",
            status=status,
            detail=detail,
        )


@dataclass
class _Tries:
    count: int = 0


class _BrokenStream(ServerError):
    """The stream stopped part-way (connection dropped or cut short)."""


# --- streams ----------------------------------------------------------------------------------


class Stream:
    """The pieces of an answer as they arrive; ``.reply`` has the whole answer at the end.

    Nothing is sent until you start iterating. Retries happen only before the first piece:
    once text has reached you, a failure is raised rather than starting over.
    """

    def __init__(
        self,
        client: Client,
        path: str,
        body: dict[str, Any],
        *,
        model: str,
        prompt: list[dict[str, Any]],
        format: Format,
        timeout: Timeout | float | None,
    ) -> None:
        self.client, self.path, self.body, self.model = client, path, body, model
        self.prompt, self.format, self.timeout = prompt, format, timeout
        self.pieces: list[str] = []
        self.first_token: float | None = None
        self._reply: Reply | None = None
        self._run: Iterator[str] | None = None
        self._ended = False  # the runtime sent its closing message
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        if self._run is None:
            self._run = self._pieces()
        return next(self._run)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self.pieces)

    @property
    def reply(self) -> Reply:
        """The whole answer with its metadata (reads the rest of the stream if needed)."""
        if self._reply is None:
            for _ in self:
                pass
        if self._reply is None:
            raise LabkitError(
                "This stream stopped before its end (closed, or it failed), so it has no "
                "reply; stream.text holds what arrived."
            )
        return self._reply

    def close(self) -> None:
        """Stop reading (the runtime stops generating when the connection closes)."""
        self._closed = True
        if self._run is not None and hasattr(self._run, "close"):
            self._run.close()

    @property
    def _where(self) -> str:
        return self.client.url + self.path

    def _pieces(self) -> Iterator[str]:
        client, dialect = self.client, self.client.dialect
        limits = Timeout.of(self.timeout, client.timeout)
        start = time.perf_counter()
        meta: dict[str, Any] = {}
        attempts = 0

        def first_piece() -> tuple[requests.Response, Iterator[bytes], str]:
            # Everything up to the first piece of text may be retried, so it is one step.
            nonlocal attempts
            attempts += 1
            meta.clear()
            self._ended = False
            response = client._send(
                "POST", self.path, self.body, timeout=limits, stream=True, model=self.model
            )
            lines = response.iter_lines(chunk_size=STREAM_CHUNK)
            try:
                return response, lines, self._next_piece(lines, meta, limits)
            except BaseException:
                response.close()
                raise

        try:
            response, lines, piece = client.retry.call(first_piece)
        except LabkitError as exc:
            reply = client._fail(exc, self.path, self.model, self.prompt, start, attempts)
            self._reply = reply
            self.pieces.append(reply.text)
            yield reply.text
            return
        try:
            while piece:
                if self.first_token is None:
                    self.first_token = time.perf_counter() - start
                self.pieces.append(piece)
                yield piece
                piece = self._next_piece(lines, meta, limits)
        except LabkitError as exc:
            latency = time.perf_counter() - start
            client._log_call(
                self.path,
                self.model,
                self.prompt,
                latency,
                attempts,
                error=exc,
                first_token=self.first_token,
                reply_chars=len(self.text),
            )
            raise
        finally:
            response.close()
        parsed = dialect.parse(meta)
        reply = Reply(
            text=self.text,
            model=parsed.model or self.model,
            dialect=dialect.name,
            raw=dict(meta),
            latency=time.perf_counter() - start,
            first_token=self.first_token,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=parsed.completion_tokens,
            timings=parsed.timings,
            finish_reason=parsed.finish_reason,
            attempts=attempts,
            schema=self.format if isinstance(self.format, Mapping) else None,
        )
        self._reply = client._finish(reply, self.path, self.model, self.prompt, self.format)

    def _next_piece(self, lines: Iterator[bytes], meta: dict[str, Any], limits: Timeout) -> str:
        """Read lines until one carries text; "" at the proper end of the stream."""
        client, dialect, where = self.client, self.client.dialect, self._where
        while not self._ended:
            try:
                line = next(lines)
            except StopIteration:
                if not dialect.stream_complete(meta):
                    raise _BrokenStream(
                        f"The stream from {where} ended without its closing message after "
                        f"{len(self.pieces)} pieces: the answer is cut short. The runtime may "
                        "have crashed; check `labkit status` and try again.",
                        status=200,
                        detail="truncated stream",
                    ) from None
                break
            except requests.RequestException as exc:
                started = len(self.pieces) or None  # before any text, it may be retried
                raise client._transport_error(exc, self.path, limits, started) from exc
            try:
                piece, done = dialect.stream_line(line, meta)
            except _BadLine as exc:
                raise ServerError(
                    f"The stream from {where} sent a line that is not a JSON object after "
                    f"{len(self.pieces)} pieces: {exc.line[:120]!r}. The runtime or a proxy "
                    "in between damaged the stream; try again.",
                    status=200,
                    detail=exc.line[:500],
                ) from exc
            except _StreamFailure as exc:
                raise ServerError(
                    f"The runtime reported an error mid-stream from {where}: {exc}",
                    status=200,
                    detail=str(exc),
                ) from exc
            if done:
                self._ended = True
            if piece:
                return piece
        return ""
