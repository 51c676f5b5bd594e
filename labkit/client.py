"""One client for local model servers, whichever of the two common dialects they speak.

``Client`` offers the same verbs over Ollama's API and OpenAI's (see ``labkit/dialects.py``)::

    client = Client(find_runtime(start=True).url)       # the runtime labkit finds (or starts)
    client = Client.preset("lmstudio")                  # LM Studio on its default port
    reply = client.chat("Name three colours.", max_tokens=40)
    reply.text, reply.latency, reply.tokens_per_second
    for piece in (stream := client.stream("Tell me a story")):
        print(piece, end="")
    stream.reply.first_token                            # seconds until the first piece
    vectors = client.embed(["one text", "another"])     # numpy array, shape (2, dim)

Everything is plain HTTP with ``requests``. Failures become the errors in ``labkit.errors``;
busy or unreachable runtimes are retried (``labkit/retry.py``); every call is bounded in time
and size (``labkit/transport.py``) and can be logged (``labkit/calllog.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from labkit import discovery, health
from labkit.calllog import CallLog
from labkit.connection import Connection
from labkit.dialects import Format, Messages, Settings, as_messages, check_format
from labkit.errors import InvalidInput, InvalidModelOutput, LabkitError, ModelNotFound, ServerError
from labkit.models import match_model
from labkit.reply import Health, Reply, Timeout
from labkit.retry import NO_RETRY, RetryPolicy
from labkit.stream import Stream
from labkit.structured import parse_json, validate
from labkit.transport import MAX_RESPONSE_BYTES

__all__ = ["PRESETS", "Client"]

# name -> (base URL, dialect, what to start when nothing answers there)
PRESETS: dict[str, tuple[str, str, str]] = {
    "ollama": ("http://127.0.0.1:11434", "ollama", "Ollama"),
    "lmstudio": ("http://127.0.0.1:1234", "openai", "LM Studio's server"),
    "llamacpp": ("http://127.0.0.1:8080", "openai", "llama.cpp's llama-server"),
}


class Client(Connection):
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
        api_key: str | None = None,
        runtime_name: str | None = None,
        embed_url: str | None = None,
        start: bool = False,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        known: tuple[str, ...] | None = None
        if url is None:
            # Starting a server is a big step (memory, CPU): only when asked with start=True.
            found = discovery.find_runtime(start=start)
            url, dialect = found.url, dialect or found.dialect
            model, embed_model = model or found.chat_model, embed_model or found.embed_model
            known = found.models
        super().__init__(
            url,
            dialect=dialect,
            timeout=timeout,
            retry=retry,
            api_key=api_key,
            runtime_name=runtime_name,
            max_response_bytes=max_response_bytes,
            clock=clock,
        )
        self.model = model or None
        self.embed_model = embed_model or None
        # llama.cpp serves embeddings from a second server: $LABKIT_EMBED_URL names it.
        embed_url = discovery.embed_url_from_env() if embed_url is None else embed_url
        self.embed_url = embed_url.rstrip("/").removesuffix("/v1") or self.url
        self._embedder: Client | None = None
        self._known_models = known
        self._versions: dict[str, str | None] = {}  # model -> digest, for the call log
        self.log = CallLog(log) if isinstance(log, (str, Path)) else log

    @classmethod
    def preset(cls, name: str, **kwargs: Any) -> Client:
        """A client for Ollama, LM Studio or llama.cpp's server on their default ports."""
        if name not in PRESETS:
            raise InvalidInput(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        url, dialect, runtime_name = PRESETS[name]
        return cls(url, dialect=dialect, runtime_name=runtime_name, **kwargs)

    def __repr__(self) -> str:
        return f"Client({self.url!r}, dialect={self.dialect.name!r}, model={self.model!r})"

    def __enter__(self) -> Client:
        return self

    def close(self) -> None:
        """Close the open connections (and the embedding server's, if there is one)."""
        super().close()
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
        check_format(format)
        listed = as_messages(messages, system)
        model = model or self._default_model()
        settings = Settings(format, temperature, seed, max_tokens, options)
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
        check_format(format)
        if not isinstance(prompt, str):
            raise InvalidInput(f"generate() takes one prompt string, not {type(prompt).__name__}.")
        listed = as_messages(prompt, system)  # validates; also what the log records
        model = model or self._default_model()
        settings = Settings(format, temperature, seed, max_tokens, options)
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
        check_format(format)
        listed = as_messages(messages, system)
        model = model or self._default_model()
        settings = Settings(format, temperature, seed, max_tokens, options)
        path, body = self.dialect.chat(model, listed, True, settings)
        return Stream(self, path, body, model=model, prompt=listed, format=format, timeout=timeout)

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
        start, deadline, rows = time.perf_counter(), self.deadline(timeout), []
        try:
            for i in range(0, len(items), batch_size):
                batch = items[i : i + batch_size]
                path, body = self.dialect.embed(model, batch)
                data = self.call_json("POST", path, body, deadline, model=model)
                rows.extend(self._vectors(data, path, len(batch)))
            try:
                result = np.asarray(rows, dtype=np.float32)
            except ValueError as exc:  # rows of different lengths
                raise ServerError(
                    f"The runtime's embeddings from {self.dialect.embed_path} differ in length.",
                    status=200,
                ) from exc
        except LabkitError as exc:
            latency = time.perf_counter() - start
            self.log_call(
                self.dialect.embed_path, model, items, latency, deadline.attempts, error=exc
            )
            raise
        latency = time.perf_counter() - start
        self.log_call(
            self.dialect.embed_path,
            model,
            items,
            latency,
            deadline.attempts,
            texts=len(items),
            dim=int(result.shape[1]),
        )
        return result

    def _vectors(self, data: dict[str, Any], path: str, expected: int) -> list[list[float]]:
        try:
            vectors = self.dialect.embeddings(data)
        except (KeyError, TypeError) as exc:
            raise ServerError(
                f"The runtime's answer to {path} has no embeddings in the expected place.",
                status=200,
                detail=json.dumps(data)[:300],
            ) from exc
        if len(vectors) != expected:
            raise ServerError(
                f"Asked for {expected} embeddings, got {len(vectors)} from {path}.", status=200
            )
        return vectors

    def health(self, model: str | None = None) -> Health:
        """Whether the runtime answers, and (if named) whether it has ``model``; never raises."""
        report = health.check_health(
            self.url,
            self.dialect.name,
            model,
            timeout=min(self.timeout.read, 10.0),
            api_key=self.api_key,
        )
        available = None if model is None else report.status == "up"
        if report.status == "down":  # say what to do first; the checks' findings after
            reasons = "; ".join(report.reasons)
            detail = f"No runtime at {self.url} — run `labkit up` or start {self.runtime_name} ({reasons})."
            return Health(False, available, detail)
        return Health(True, available, str(report))

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
                max_response_bytes=self.max_response_bytes,
                clock=self.clock,
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
        start, deadline = time.perf_counter(), self.deadline(timeout)
        try:
            data = self.call_json("POST", path, body, deadline, model=model)
            if not self.dialect.has_text(data):
                raise ServerError(
                    f"The runtime's answer to {path} has no text where the "
                    f"{self.dialect.name} dialect puts it.",
                    status=200,
                    detail=json.dumps(data)[:300],
                )
        except LabkitError as exc:
            latency = time.perf_counter() - start
            self.log_call(path, model, prompt, latency, deadline.attempts, error=exc)
            raise
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
            attempts=deadline.attempts,
            schema=format if isinstance(format, Mapping) else None,
        )
        return self.finish(reply, path, model, prompt, format)

    def finish(self, reply: Reply, path: str, model: str, prompt: Any, format: Format) -> Reply:
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
        failed = reply.validation not in (None, "ok")
        self.log_call(
            path,
            model,
            prompt,
            reply.latency,
            reply.attempts,
            first_token=reply.first_token,
            reply_chars=len(reply.text),
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            validation=None if reply.validation is None else ("failed" if failed else "ok"),
            validation_error=reply.validation if failed else None,
            # A reply that failed validation is kept whole: it is the case to study and fix.
            reply=reply.text if failed else None,
        )
        return reply

    def log_call(
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
                    quick = self.deadline(Timeout(5.0, 5.0, 10.0))
                    data = self.call_json(
                        "GET", "/api/tags", None, quick, model=None, retry=NO_RETRY
                    )
                except LabkitError:
                    return None  # the log must never break a call; try again next time
                entries = {str(e.get("name", "")): e for e in data.get("models", [])}
                if (name := match_model(model, entries)) is not None:
                    self._versions[model] = str(entries[name].get("digest", ""))[:12] or None
        return self._versions[model]
