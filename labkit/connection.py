"""One runtime's address and how to reach it: the session, limits, retries, JSON requests, the log.

``Client`` (``labkit/client.py``) builds its verbs on this class. Each call is a ``Call``: a
``Deadline`` (``Timeout.total``) that covers every attempt, every pause between retries and
every byte read, and one line in the call log (``labkit/calllog.py``) when it ends, whether
with a ``Reply`` or an error. Answers larger than ``max_response_bytes`` are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from labkit.calllog import CallLog
from labkit.dialects import DIALECTS, Dialect, Format, Parsed, dialect_named
from labkit.errors import InvalidInput, InvalidModelOutput, LabkitError, ServerError
from labkit.models import match_model
from labkit.probe import KNOWN_RUNTIMES, identify
from labkit.reply import Reply, Timeout
from labkit.retry import NO_RETRY, RetryPolicy
from labkit.structured import parse_json, validate
from labkit.transport import (
    MAX_RESPONSE_BYTES,
    Deadline,
    auth_headers,
    base_url,
    error_text,
    http_error,
    read_body,
    transport_error,
    tries,
)

__all__ = ["Call", "Connection"]

T = TypeVar("T")
ERROR_BODY_BYTES = 64 * 1024  # an error message is short; more is not worth reading


class Connection:
    """Where a runtime is, which dialect it speaks, and how long and how much to wait for it."""

    def __init__(
        self,
        url: str,
        *,
        dialect: str | None = None,
        timeout: Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        runtime_name: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        log: CallLog | str | Path | None = None,
    ) -> None:
        self.url = base_url(url)
        if not urlsplit(self.url).scheme.startswith("http"):
            raise InvalidInput(f"{url!r} is not an http:// URL (example: http://127.0.0.1:11434).")
        if max_response_bytes < 1:
            raise InvalidInput(f"max_response_bytes must be positive, not {max_response_bytes}.")
        # A URL ending in /v1 is what OpenAI-style clients are given: take the hint.
        dialect = dialect or ("openai" if url.rstrip("/") != self.url else self._guess_dialect())
        self.dialect: Dialect = dialect_named(dialect)
        self.timeout = Timeout.of(timeout, Timeout())
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_response_bytes = max_response_bytes
        self.clock = clock  # what deadlines are measured with; tests pass a fake one
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
        self.api_key = api_key
        self.session.headers.update(auth_headers(api_key))  # for a runtime behind a gateway
        self.log = CallLog(log) if isinstance(log, (str, Path)) else log
        self._known_models: tuple[str, ...] | None = None
        self._versions: dict[str, str | None] = {}  # model -> digest, for the call log

    def _guess_dialect(self) -> str:
        port = urlsplit(self.url).port
        for known in KNOWN_RUNTIMES:
            if port == known.port:
                return known.dialect
        found = identify(self.url)
        # Nothing answers: OpenAI's dialect is the one most servers speak.
        return found[0] if found and found[0] in DIALECTS else "openai"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the open connections."""
        self.session.close()

    def models(
        self, *, timeout: Timeout | float | None = None, retry: RetryPolicy | None = None
    ) -> list[str]:
        """The names of the models the runtime has."""
        path = self.dialect.models_path
        data = self.call_json("GET", path, None, self.deadline(timeout), model=None, retry=retry)
        names = self.dialect.model_names(data)
        self._known_models = tuple(names)
        return names

    def deadline(self, timeout: Timeout | float | None) -> Deadline:
        """A new call's time budget: ``timeout`` (or the client's), from now."""
        return Deadline(Timeout.of(timeout, self.timeout), self.clock)

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: Deadline,
        *,
        model: str | None = None,
    ) -> requests.Response:
        """One HTTP request within ``deadline``; the body is left to read; failures raise."""
        url = self.url + path
        deadline.check(url)
        deadline.attempts += 1
        try:
            response = self.session.request(
                method, url, json=body, stream=True, timeout=deadline.socket_timeout()
            )
        except requests.RequestException as exc:
            deadline.check(url)  # a wait cut short by the deadline says so
            limits = deadline.limits
            raise transport_error(exc, self.url, path, limits, None, self.runtime_name) from exc
        if response.status_code >= 400:
            try:
                detail = error_text(read_body(response, url, ERROR_BODY_BYTES, deadline))
            except (requests.RequestException, LabkitError):
                detail = ""
            response.close()
            raise http_error(
                response,
                self.url,
                path,
                detail,
                dialect=self.dialect.name,
                model=model,
                available=self._available,
            )
        return response

    def _available(self) -> str:
        """The model names for an error message (never raises)."""
        try:
            return (
                ", ".join(self.models(timeout=Timeout(3.0, 10.0, 15.0), retry=NO_RETRY)) or "none"
            )
        except LabkitError:
            return "unknown (listing the models failed too)"

    def retrying(
        self, fn: Callable[[], T], deadline: Deadline, retry: RetryPolicy | None = None
    ) -> T:
        """``fn()`` retried per the policy within ``deadline``; the error says what was tried."""
        try:
            return (retry or self.retry).call(fn, remaining=deadline.remaining)
        except LabkitError as exc:
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
            # The deadline's own message already counts the attempts.
            if deadline.attempts > 1 and message and "(Timeout.total)" not in message:
                exc.args = (
                    f"{message} (Gave up after {tries(deadline.attempts)} in "
                    f"{deadline.elapsed():.0f} s.)",
                    *exc.args[1:],
                )
            raise

    def call_json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: Deadline,
        *,
        model: str | None,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """A request (retried per the policy) whose answer is one JSON object."""

        def once() -> dict[str, Any]:
            response = self.send(method, path, body, deadline, model=model)
            try:
                raw = read_body(response, self.url + path, self.max_response_bytes, deadline)
            except requests.RequestException as exc:
                deadline.check(self.url + path)
                limits = deadline.limits
                raise transport_error(exc, self.url, path, limits, None, self.runtime_name) from exc
            finally:
                response.close()
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ServerError(
                    f"The runtime's answer to {path} is not JSON; is {self.url} really "
                    f"a model server speaking the {self.dialect.name} dialect?",
                    status=response.status_code,
                    detail=raw[:300].decode("utf-8", "replace"),
                ) from exc
            if not isinstance(data, dict):
                raise ServerError(
                    f"The runtime's answer to {path} is not a JSON object.",
                    status=response.status_code,
                    detail=raw[:300].decode("utf-8", "replace"),
                )
            return data

        return self.retrying(once, deadline, retry)

    def model_version(self, model: str) -> str | None:
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


class Call:
    """One call from its start to its end: its deadline, its ``Reply``, its line in the call log."""

    def __init__(
        self,
        connection: Connection,
        path: str,
        *,
        model: str,
        prompt: Any,
        format: Format = None,
        timeout: Timeout | float | None = None,
    ) -> None:
        self.connection, self.path, self.model = connection, path, model
        self.prompt, self.format = prompt, format
        self.deadline = connection.deadline(timeout)
        self.start = time.perf_counter()
        self.first_token: float | None = None  # seconds to the first streamed piece
        self.reply_chars: int | None = None  # characters received so far (streams)

    def elapsed(self) -> float:
        """Seconds since the call began."""
        return time.perf_counter() - self.start

    def received(self, piece: str) -> None:
        """Note a streamed piece: when the first one came, and how much text has arrived."""
        if self.first_token is None:
            self.first_token = self.elapsed()
        self.reply_chars = (self.reply_chars or 0) + len(piece)

    @contextmanager
    def failures_logged(self) -> Iterator[None]:
        """Log a labkit error raised inside the block as this call's end, and let it go on."""
        try:
            yield
        except LabkitError as exc:
            self.log(error=exc)
            raise

    def reply(self, parsed: Parsed, raw: dict[str, Any], text: str | None = None) -> Reply:
        """The call's ``Reply``, checked against the format asked for and logged."""
        reply = Reply(
            text=parsed.text if text is None else text,
            model=parsed.model or self.model,
            dialect=self.connection.dialect.name,
            raw=raw,
            latency=self.elapsed(),
            first_token=self.first_token,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=parsed.completion_tokens,
            timings=parsed.timings,
            finish_reason=parsed.finish_reason,
            attempts=self.deadline.attempts,
            schema=self.format if isinstance(self.format, Mapping) else None,
        )
        if self.format is not None:
            try:
                if isinstance(self.format, Mapping):
                    validate(reply, self.format)
                else:
                    parse_json(reply.text)
                reply.validation = "ok"
            except InvalidModelOutput as exc:
                reply.validation = str(exc)  # the caller decides: reply.json() raises it
                if reply.finish_reason == "length" and "max_tokens" not in reply.validation:
                    reply.validation += " The reply was cut off at max_tokens: raise it."
        failed = reply.validation not in (None, "ok")
        self.reply_chars = len(reply.text)
        self.log(
            latency=reply.latency,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            validation=None if reply.validation is None else ("failed" if failed else "ok"),
            validation_error=reply.validation if failed else None,
            # A reply that failed validation is kept whole: it is the case to study and fix.
            reply=reply.text if failed else None,
        )
        return reply

    def log(self, **fields: Any) -> None:
        """The call's record in the connection's call log, if it has one."""
        connection = self.connection
        if connection.log is None:
            return
        fields.setdefault("latency", self.elapsed())
        connection.log.record(
            endpoint=self.path,
            dialect=connection.dialect.name,
            model=self.model,
            model_version=connection.model_version(self.model),
            # The messages as JSON: the same conversation always hashes the same.
            prompt=json.dumps(self.prompt, ensure_ascii=False, sort_keys=True),
            attempts=self.deadline.attempts,
            first_token=self.first_token,
            reply_chars=self.reply_chars,
            **fields,
        )
