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
and size (``labkit/transport.py``) and can be logged (``labkit/connection.py`` writes one
line per call with ``labkit/calllog.py``). The keywords the verbs share are ``Ask``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from labkit import discovery
from labkit.calllog import CallLog
from labkit.connection import Call, Connection
from labkit.dialects import Format, Messages, Settings, as_messages, check_format
from labkit.errors import InvalidInput, ModelNotFound, ServerError
from labkit.probe import LLAMA_CPP, LM_STUDIO, OLLAMA, check_health
from labkit.reply import Health, Reply, Timeout
from labkit.retry import RetryPolicy
from labkit.stream import Stream
from labkit.transport import MAX_RESPONSE_BYTES, base_url

if TYPE_CHECKING:  # Python 3.11 has it in typing; this works on 3.10 too
    from typing_extensions import Unpack

__all__ = ["PRESETS", "Ask", "Client"]

# name -> (base URL, dialect, what to start when nothing answers there)
PRESETS: dict[str, tuple[str, str, str]] = {
    "ollama": (OLLAMA.url, OLLAMA.dialect, "Ollama"),
    "lmstudio": (LM_STUDIO.url, LM_STUDIO.dialect, "LM Studio's server"),
    "llamacpp": (LLAMA_CPP.url, LLAMA_CPP.dialect, "llama.cpp's llama-server"),
}


class Ask(TypedDict, total=False):
    """The keywords ``chat``, ``generate`` and ``stream`` take besides the prompt (all optional)."""

    model: str | None  # the client's model when None
    system: str | None  # a system message put first
    format: Format  # "json" or a JSON schema the reply must follow
    temperature: float | None
    seed: int | None
    max_tokens: int | None  # the most tokens to write (Ollama's num_predict)
    options: Mapping[str, Any] | None  # more runtime options, passed on as they are
    timeout: Timeout | float | None  # this call's timeout (the client's when None)


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
            log=log,
        )
        self.model = model or None
        self.embed_model = embed_model or None
        # llama.cpp serves embeddings from a second server: $LABKIT_EMBED_URL names it.
        embed_url = discovery.embed_url_from_env() if embed_url is None else embed_url
        self.embed_url = base_url(embed_url) or self.url
        self._embedder: Client | None = None
        self._known_models = known

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

    def chat(self, messages: Messages, **ask: Unpack[Ask]) -> Reply:
        """Send a conversation (or one prompt string) and wait for the whole answer."""
        model, listed, settings = self._open("chat", messages, ask)
        path, body = self.dialect.chat(model, listed, False, settings)
        return self._complete(path, body, model, listed, ask)

    def generate(self, prompt: str, **ask: Unpack[Ask]) -> Reply:
        """Send one prompt (no conversation) and wait for the whole answer."""
        if not isinstance(prompt, str):
            raise InvalidInput(f"generate() takes one prompt string, not {type(prompt).__name__}.")
        model, listed, settings = self._open("generate", prompt, ask)  # listed: for the log
        path, body = self.dialect.generate(model, prompt, ask.get("system"), False, settings)
        return self._complete(path, body, model, listed, ask)

    def stream(self, messages: Messages, **ask: Unpack[Ask]) -> Stream:
        """Like chat, but iterate over the answer's pieces as the model writes them."""
        model, listed, settings = self._open("stream", messages, ask)
        path, body = self.dialect.chat(model, listed, True, settings)
        timeout = ask.get("timeout")
        return Stream(
            self, path, body, model=model, prompt=listed, format=settings.format, timeout=timeout
        )

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
        call = Call(self, self.dialect.embed_path, model=model, prompt=items, timeout=timeout)
        rows: list[list[float]] = []
        with call.failures_logged():
            for i in range(0, len(items), batch_size):
                batch = items[i : i + batch_size]
                path, body = self.dialect.embed(model, batch)
                data = self.call_json("POST", path, body, call.deadline, model=model)
                rows.extend(self._vectors(data, path, len(batch)))
            try:
                result = np.asarray(rows, dtype=np.float32)
            except ValueError as exc:  # rows of different lengths
                raise ServerError(
                    f"The runtime's embeddings from {self.dialect.embed_path} differ in length.",
                    status=200,
                ) from exc
        call.log(texts=len(items), dim=int(result.shape[1]))
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
        report = check_health(
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

    # --- plumbing: default models, the verbs' shared opening -------------------------------

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

    def _open(
        self, verb: str, messages: Messages, ask: Ask
    ) -> tuple[str, list[dict[str, Any]], Settings]:
        """What every verb does first: check its keywords, list the messages, pick the model."""
        if unknown := sorted(set(ask) - Ask.__optional_keys__):
            close = get_close_matches(unknown[0], Ask.__optional_keys__, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidInput(
                f"{verb}() got the unknown keyword {unknown[0]!r}.{hint} It takes: "
                f"{', '.join(Ask.__annotations__)}."
            )
        format = ask.get("format")
        check_format(format)
        listed = as_messages(messages, ask.get("system"))
        model = ask.get("model") or self._default_model()
        settings = Settings(
            format,
            ask.get("temperature"),
            ask.get("seed"),
            ask.get("max_tokens"),
            ask.get("options"),
        )
        return model, listed, settings

    def _complete(
        self, path: str, body: dict[str, Any], model: str, prompt: list[dict[str, Any]], ask: Ask
    ) -> Reply:
        """A non-streamed chat or generate call: send, retry, parse, validate, log."""
        format, timeout = ask.get("format"), ask.get("timeout")
        call = Call(self, path, model=model, prompt=prompt, format=format, timeout=timeout)
        with call.failures_logged():
            data = self.call_json("POST", call.path, body, call.deadline, model=call.model)
            if not self.dialect.has_text(data):
                raise ServerError(
                    f"The runtime's answer to {call.path} has no text where the "
                    f"{self.dialect.name} dialect puts it.",
                    status=200,
                    detail=json.dumps(data)[:300],
                )
        return call.reply(self.dialect.parse(data), data)
