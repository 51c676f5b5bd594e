"""How labkit talks HTTP: the auth header, bounded reads, and failures turned into labkit errors.

Every request a learner's code makes through labkit is bounded three ways, so a broken or
hostile server cannot hang a notebook or fill its memory:

* ``Timeout.connect`` / ``Timeout.read``: how long to wait for the connection, and for each
  gap between bytes;
* ``Timeout.total``: the deadline of the whole call, retries and streaming included;
* ``max_bytes``: the most an answer (or a whole stream) may weigh.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from labkit.errors import (
    BrokenStream,
    InvalidInput,
    LabkitError,
    LabkitTimeout,
    ModelNotFound,
    ResponseTooLarge,
    RuntimeUnavailable,
    ServerBusy,
    ServerError,
)
from labkit.reply import Timeout

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Deadline",
    "auth_headers",
    "base_url",
    "error_text",
    "http_error",
    "parse_retry_after",
    "read_body",
    "read_lines",
    "transport_error",
    "tries",
]

# A chat reply is kilobytes and a batch of 32 embeddings ~250 KB of JSON; 32 MiB leaves room
# for long answers while a server that never stops sending is cut off long before memory is.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
CHUNK = 8192  # bytes per read: each read returns what has arrived, up to this much
Clock = Callable[[], float]


def base_url(url: str) -> str:
    """A runtime's own address from any URL of it: no trailing slash, no OpenAI ``/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def auth_headers(api_key: str | None = None) -> dict[str, str]:
    """The Authorization header for ``api_key`` or ``$LABKIT_API_KEY`` ({} when neither is set)."""
    key = api_key or os.environ.get("LABKIT_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class Deadline:
    """The end of one call's time budget (``Timeout.total``), read from an injectable clock."""

    def __init__(self, limits: Timeout, clock: Clock = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.start = clock()
        self.attempts = 0  # requests sent so far in this call, for the messages
        self.at = None if limits.total is None else self.start + limits.total

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline)."""
        return None if self.at is None else self.at - self.clock()

    def elapsed(self) -> float:
        """Seconds since the call began."""
        return self.clock() - self.start

    def check(self, url: str) -> None:
        """Raise LabkitTimeout if the deadline has passed."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise LabkitTimeout(
                f"The call to {url} ran past its deadline of {self.limits.total:g} s "
                f"(Timeout.total) after {tries(self.attempts)}. If the model is just slow, give it "
                f"longer: timeout=Timeout(total={2 * (self.limits.total or 0):g}); "
                "total=None removes the deadline."
            )

    def socket_timeout(self) -> tuple[float, float]:
        """(connect, read) for requests, neither past the deadline."""
        left = self.remaining()
        connect, read = self.limits.connect, self.limits.read
        if left is None:
            return connect, read
        left = max(left, 0.001)
        return min(connect, left), min(read, left)


def tries(attempts: int) -> str:
    """ "1 attempt" or "3 attempts", for messages."""
    return "1 attempt" if attempts == 1 else f"{attempts} attempts"


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives (each read returns at once with what is there)."""
    raw = response.raw
    while True:
        try:
            # Unpacked as it is read (gzip from a proxy), so the limit counts what it unpacks to.
            data = raw.read1(CHUNK, decode_content=True)
        except ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from exc
        except ProtocolError as exc:
            raise requests.ConnectionError(exc) from exc
        if not data:
            return
        yield data


def _too_large(url: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"The answer from {url} is larger than {limit:,} bytes, so labkit stopped reading. "
        "Is that really a model server? If you expect answers this big, raise the limit: "
        "Client(..., max_response_bytes=...).",
        status=200,
        detail=f"more than {limit} bytes",
    )


def read_body(response: requests.Response, url: str, limit: int, deadline: Deadline) -> bytes:
    """The whole body, or ResponseTooLarge past ``limit`` bytes / LabkitTimeout past the deadline."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(url, limit)
    body = bytearray()
    for data in _chunks(response):
        body += data
        if len(body) > limit:
            raise _too_large(url, limit)
        deadline.check(url)
    return bytes(body)


def read_lines(
    response: requests.Response, url: str, limit: int, deadline: Deadline
) -> Iterator[bytes]:
    """The body's lines as they arrive, bounded like ``read_body`` (the limit counts them all)."""
    # Only each new read is searched for line ends, and a partial line grows in place: the work
    # is linear in the body's size even when a server sends megabytes without a newline.
    pending, seen = bytearray(), 0
    for data in _chunks(response):
        seen += len(data)
        if seen > limit:
            raise _too_large(url, limit)
        deadline.check(url)
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            pending += data
            continue
        pending += data[: cut + 1]
        # Lines end in \n, \r\n or a lone \r (all allowed in event streams); a \r\n split
        # across two reads yields one extra empty line, which both dialects skip.
        lines = bytes(pending).splitlines()
        pending = bytearray(data[cut + 1 :])
        yield from lines
    if pending:
        yield bytes(pending)


def parse_retry_after(value: str | None) -> float | None:
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


def error_text(payload: bytes | str | dict[str, Any]) -> str:
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


def transport_error(
    exc: requests.RequestException,
    url: str,
    path: str,
    limits: Timeout,
    pieces: int | None,
    runtime_name: str,
) -> LabkitError:
    """Turn a connection-level failure into a labkit error that says what to do."""
    where = f"{url}{path}"
    during = "" if pieces is None else f" in the middle of the stream (after {pieces} pieces)"
    if isinstance(exc, requests.ConnectTimeout):
        return LabkitTimeout(
            f"Could not connect to {url} within {limits.connect:g} s (the connect "
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
        return InvalidInput(f"{url!r} is not a usable URL: {exc}")
    if isinstance(getattr(reason, "reason", None), NewConnectionError):
        return RuntimeUnavailable(f"No runtime at {url} — run `labkit up` or start {runtime_name}.")
    if pieces is not None:
        return BrokenStream(
            f"The stream from {where} broke off after {pieces} pieces ({exc}). The runtime "
            "may have stopped or crashed: check `labkit status` and try again.",
            status=200,
            detail=str(exc),
        )
    return RuntimeUnavailable(
        f"The runtime at {url} dropped the connection before answering {path} ({exc}). "
        "It may be restarting or have crashed: check `labkit status` and try again."
    )


def http_error(
    response: requests.Response,
    url: str,
    path: str,
    detail: str,
    *,
    dialect: str,
    model: str | None,
    available: Callable[[], str],
) -> ServerError:
    """Turn an HTTP error status into a labkit error carrying the runtime's own message."""
    status = response.status_code
    lowered = detail.lower()
    # Ollama says "model 'x' not found"; OpenAI-style servers "model_not_found" or
    # "The model `x` does not exist".
    missing = "not found" in lowered or "not_found" in lowered or "does not exist" in lowered
    if status in (400, 404) and model and "model" in lowered and missing:
        pull = f" (`ollama pull {model}`)" if dialect == "ollama" else ""
        return ModelNotFound(
            f"Model {model!r} is not available at {url}. Available models: {available()}. "
            f"Use one of those, or install it first{pull}.",
            status=status,
            detail=detail,
        )
    if status in (401, 403):
        return ServerError(
            f"The runtime at {url} refused the request (HTTP {status}: {detail}). "
            "It wants an API key: pass Client(..., api_key=...) or set $LABKIT_API_KEY.",
            status=status,
            detail=detail,
        )
    if status == 404:
        other = "openai" if dialect == "ollama" else "ollama"
        return ServerError(
            f"{url} has no {path} endpoint (HTTP 404: {detail or 'not found'}). Does it "
            f"speak the {dialect} dialect? Try Client(..., dialect={other!r}).",
            status=status,
            detail=detail,
        )
    if status in (429, 503):
        wait = parse_retry_after(response.headers.get("Retry-After"))
        hint = f"; it asks to wait {wait:g} s" if wait is not None else ""
        return ServerBusy(
            f"The runtime at {url} is busy (HTTP {status}: {detail}){hint}. "
            "Try again in a moment, or send fewer requests at once.",
            status=status,
            detail=detail,
            retry_after=wait,
        )
    return ServerError(
        f"The runtime at {url} answered HTTP {status} to {path}: {detail}",
        status=status,
        detail=detail,
    )
