"""The two dialects local model servers speak: how a request looks, how an answer reads.

Ollama has its own API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``);
LM Studio and llama.cpp's server speak OpenAI's (``/v1/chat/completions``,
``/v1/embeddings``, ``/v1/models``). Each class below turns the same settings into its
dialect's request body, and its dialect's answer back into the same fields: compare
``OllamaDialect.chat`` with ``OpenAIDialect.chat`` to see the differences side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from labkit.errors import BrokenStream, InvalidInput
from labkit.structured import Schema, check_schema
from labkit.transport import error_text

__all__ = [
    "DIALECTS",
    "Dialect",
    "Format",
    "Messages",
    "OllamaDialect",
    "OpenAIDialect",
    "Parsed",
    "Settings",
    "as_messages",
    "check_format",
    "dialect_named",
    "json_line",
]

Messages = str | Sequence[Mapping[str, Any]]
Format = str | Schema | None
DIALECTS = ("ollama", "openai")


@dataclass
class Parsed:
    """The fields of an answer, whichever dialect it came in."""

    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: dict[str, Any]
    finish_reason: str | None


@dataclass(frozen=True)
class Settings:
    """What the caller asked for besides the messages: format, sampling, length, options."""

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

    def _common(self, model: str, stream: bool, s: Settings) -> dict[str, Any]:
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
        self, model: str, messages: list[dict[str, Any]], stream: bool, s: Settings
    ) -> tuple[str, dict[str, Any]]:
        """The path and body of a chat request."""
        return self.chat_path, {**self._common(model, stream, s), "messages": messages}

    def generate(
        self, model: str, prompt: str, system: str | None, stream: bool, s: Settings
    ) -> tuple[str, dict[str, Any]]:
        """The path and body of a one-prompt request."""
        body = {**self._common(model, stream, s), "prompt": prompt}
        if system:
            body["system"] = system
        return self.generate_path, body

    def parse(self, data: dict[str, Any]) -> Parsed:
        """Read a (non-streamed, or the final streamed) answer."""
        message = data.get("message")
        text = message.get("content") if isinstance(message, dict) else data.get("response")
        return Parsed(
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
        chunk = json_line(line)
        if "error" in chunk:
            raise _failure(str(chunk["error"]))
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
        self, model: str, messages: list[dict[str, Any]], stream: bool, s: Settings
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
        self, model: str, prompt: str, system: str | None, stream: bool, s: Settings
    ) -> tuple[str, dict[str, Any]]:
        """A one-prompt request: a one-turn chat, which is what Ollama's generate does too.

        (``/v1/completions`` would skip the model's chat template and get raw continuation.)
        """
        return self.chat(model, as_messages(prompt, system), stream, s)

    def parse(self, data: dict[str, Any]) -> Parsed:
        """Read a (non-streamed, or the merged streamed) answer."""
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        return Parsed(
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
            raise _failure(error_text(line[6:].strip()))
        if not line.startswith(b"data:"):
            return "", False  # blank separators, comments (":"), event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "", True
        chunk = json_line(payload)
        if "error" in chunk:
            raise _failure(error_text(payload))
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


def dialect_named(name: str) -> Dialect:
    """The dialect called ``name`` ("ollama" or "openai")."""
    if name not in DIALECTS:
        raise InvalidInput(f"dialect must be 'ollama' or 'openai', not {name!r}.")
    return OllamaDialect() if name == "ollama" else OpenAIDialect()


def _failure(message: str) -> BrokenStream:
    """The runtime reported an error inside an already-started stream."""
    return BrokenStream(
        f"The runtime reported an error mid-stream: {message}", status=200, detail=message
    )


def json_line(line: bytes) -> dict[str, Any]:
    """One line of a stream as a JSON object; anything else means the stream is damaged."""
    try:
        chunk = json.loads(line)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        text = line.decode("utf-8", "replace")
        raise BrokenStream(
            f"The stream sent a line that is not a JSON object: {text[:120]!r}. The runtime or "
            "a proxy in between damaged the stream; try again.",
            status=200,
            detail=text[:500],
        )
    return chunk


def as_messages(messages: Messages, system: str | None) -> list[dict[str, Any]]:
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


def check_format(format: Format) -> None:
    """Raise InvalidInput unless ``format`` is None, "json" or a valid JSON schema."""
    if format is None or format == "json":
        return
    if isinstance(format, str):
        raise InvalidInput(f'format must be None, "json" or a JSON schema dict, not {format!r}.')
    check_schema(format)
