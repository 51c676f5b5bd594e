"""One request through the fault proxy: forwarded to the target, with its fault applied.

``FaultProxy`` (``proxy.py``) picks the rule; an ``Exchanger`` carries the request to the
target and back, and breaks the answer the way the rule's ``Fault`` says: an error status,
a hang or reset (before the answer, or after N chunks of a stream), a truncated or malformed
body, pauses before the first byte or between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from labkit.faults.rules import Exchange, Fault

__all__ = ["STREAM_TYPES", "Exchanger", "Upstream", "parse_body"]

STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
# Headers that describe one connection or the body's framing, not the message: the proxy
# re-frames bodies itself, so it must not copy these across.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
        "date",
        "server",
    }
)
_REASONS = {
    429: "too many requests, slow down",
    500: "internal server error",
    502: "bad gateway",
    503: "server busy, try again later",
    504: "gateway timeout",
}
_MARK = " (fault injected by labkit.faults)"


@dataclass(frozen=True)
class Upstream:
    """Where the proxy forwards to: the target's address, the session, the proxy's random source."""

    target: str
    session: aiohttp.ClientSession
    rng: random.Random


class Exchanger:
    """Carries one request through the proxy with its fault applied."""

    def __init__(
        self,
        upstream: Upstream,
        request: web.Request,
        raw: bytes,
        fault: Fault,
        exchange: Exchange,
        t0: float,
    ) -> None:
        self.upstream, self.request, self.raw = upstream, request, raw
        self.fault, self.exchange, self.t0 = fault, exchange, t0

    async def run(self) -> web.StreamResponse:
        """Apply the fault: an error, a cut, or the target's answer, changed as it says."""
        fault = self.fault
        pause = fault.delay + (self.upstream.rng.uniform(0, fault.jitter) if fault.jitter else 0.0)
        if pause:
            await asyncio.sleep(pause)
        if fault.after_chunks is None and fault.action in ("hang", "reset"):
            return await self._cut(fault.action)  # before any answer at all
        if fault.action == "status":
            return await self._error(fault.code, _REASONS.get(fault.code, "error") + _MARK)
        if fault.action == "not_found":
            return await self._not_found()
        return await self._forward()

    async def _forward(self) -> web.StreamResponse:
        session = self.upstream.session
        headers = {k: v for k, v in self.request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Accept-Encoding", None)  # keep streams uncompressed so lines can be cut
        url = self.upstream.target + self.request.path_qs
        try:
            upstream = await session.request(
                self.request.method, url, headers=headers, data=self.raw, allow_redirects=False
            )
        except aiohttp.ClientError as exc:
            self.exchange.error = f"target unreachable: {exc}"
            return await self._error(502, f"the proxy cannot reach {self.upstream.target}: {exc}")
        async with upstream:  # releases the connection to the target however this ends
            self.exchange.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            if upstream.content_type in STREAM_TYPES:
                sse = upstream.content_type == "text/event-stream"
                return await self._send_stream(response, _split(upstream, sse=sse))
            try:
                body = await upstream.read()
            except aiohttp.ClientError as exc:
                self.exchange.error = f"target failed mid-answer: {exc}"
                return await self._cut("reset")
            return await self._send_body(response, body)

    async def _send_body(self, response: web.StreamResponse, body: bytes) -> web.StreamResponse:
        """A whole (non-stream) body: 'after N chunks' faults cut it in half."""
        fault = self.fault
        if fault.action == "malformed":
            body = _corrupt(body)
        cut = fault.action in ("hang", "reset", "truncate")
        if not cut:
            response.content_length = len(body)
        await self._prepare(response)
        if cut:
            body = body[: len(body) // 2]
        if body:
            await self._write(response, body)
        if cut and fault.action != "truncate":
            return await self._cut(fault.action)
        await response.write_eof()
        return response

    async def _send_stream(
        self, response: web.StreamResponse, chunks: AsyncGenerator[bytes, None]
    ) -> web.StreamResponse:
        """Forward a stream chunk by chunk; the fault strikes after ``after_chunks`` chunks."""
        fault = self.fault
        cutting = fault.action in ("hang", "reset", "truncate")
        timed = cutting or fault.action == "malformed"
        at = fault.after_chunks
        await self._prepare(response)
        # A fault "after N chunks" must still strike if the stream has N chunks or fewer: the
        # final (done) chunk is held back until the next one shows it was not the last.
        held: bytes | None = None
        struck = False
        try:
            async for chunk in chunks:
                if not timed:
                    await self._send_chunk(response, chunk)
                    continue
                if held is not None:
                    if self.exchange.chunks == at and not struck:
                        struck = True
                        if cutting:
                            break
                        held = _corrupt(held)
                    await self._send_chunk(response, held)
                held = chunk
        except aiohttp.ClientError as exc:  # the target failed mid-stream: fail the same way
            self.exchange.error = f"target failed mid-stream: {exc}"
            return await self._cut("reset")
        finally:
            await chunks.aclose()
        if held is not None and fault.action == "malformed":
            await self._send_chunk(response, held if struck else _corrupt(held))
        if cutting:
            if fault.action != "truncate":
                return await self._cut(fault.action)
            self.exchange.error = f"stream truncated after {self.exchange.chunks} chunks"
        await response.write_eof()
        return response

    async def _send_chunk(self, response: web.StreamResponse, chunk: bytes) -> None:
        if self.exchange.chunks and self.fault.chunk_delay:
            await asyncio.sleep(self.fault.chunk_delay)
        await self._write(response, chunk)

    async def _prepare(self, response: web.StreamResponse) -> None:
        await response.prepare(self.request)
        if self.fault.first_byte:
            await asyncio.sleep(self.fault.first_byte)

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        if self.exchange.first_byte is None:
            self.exchange.first_byte = time.perf_counter() - self.t0
        try:
            await response.write(data)
        except ConnectionError as exc:
            # The client hung up; end quietly (an exception here would be logged as a crash).
            self.exchange.error = "client went away"
            raise asyncio.CancelledError from exc
        self.exchange.chunks += 1

    async def _error(self, status: int, message: str) -> web.StreamResponse:
        headers = {}
        if self.fault.retry_after is not None:
            headers["Retry-After"] = f"{self.fault.retry_after:g}"
        body = _error_body(self.request.path, status, message, code=None)
        return await self._answer(status, body, headers)

    async def _not_found(self) -> web.StreamResponse:
        body = self.exchange.body if isinstance(self.exchange.body, dict) else {}
        model = str(body.get("model") or "unknown")
        if self.request.path.startswith("/api/"):
            payload = {"error": f'model "{model}" not found, try pulling it first'}
        else:
            message = f"The model `{model}` does not exist or you do not have access to it."
            payload = _error_body(self.request.path, 404, message, code="model_not_found")
        return await self._answer(404, payload, {})

    async def _answer(
        self, status: int, payload: Any, headers: dict[str, str]
    ) -> web.StreamResponse:
        self.exchange.status = status
        data = json.dumps(payload).encode()
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/json"
        response.content_length = len(data)
        await self._prepare(response)
        await self._write(response, data)
        await response.write_eof()
        return response

    async def _cut(self, action: str) -> web.StreamResponse:
        """Hang (until the client leaves or the proxy stops), or reset the connection now."""
        forever = asyncio.get_running_loop().create_future()
        if action == "hang":
            self.exchange.error = "hung"
            await forever  # both the client leaving and the proxy stopping cancel this task
        self.exchange.error = "connection reset by the proxy"
        _reset(self.request)
        await forever  # the reset makes aiohttp cancel this task (handler_cancellation)
        raise AssertionError("unreachable")  # pragma: no cover


def _reset(request: web.Request) -> None:
    """Close the client's connection with a TCP reset (RST), not a polite FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger on, timeout 0: closing sends RST and drops anything unsent.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _split(upstream: aiohttp.ClientResponse, *, sse: bool) -> AsyncGenerator[bytes, None]:
    """The stream's chunks: one JSON line (NDJSON) or one event (server-sent events) each."""
    buffer, event = b"", b""
    async for data in upstream.content.iter_any():
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[: end + 1], buffer[end + 1 :]
            if not sse:
                if line.strip():
                    yield line
                continue
            event += line
            if not line.strip() and event.strip():  # a blank line ends an event
                yield event
                event = b""
    if (rest := event + buffer).strip():
        yield rest


def _corrupt(data: bytes) -> bytes:
    """The same bytes with the last visible character dropped: JSON that no longer parses."""
    body = data.rstrip()
    if not body:
        return b"{"
    return body[:-1] + data[len(body) :]


def parse_body(raw: bytes) -> Any:
    """A request body as JSON when it parses, else as text (None when empty)."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_body(path: str, status: int, message: str, *, code: str | None) -> dict[str, Any]:
    """An error body in the dialect the path belongs to (Ollama's or OpenAI's)."""
    if path.startswith("/api/"):
        return {"error": message}
    kind = {429: "rate_limit_error", 503: "unavailable_error", 404: "invalid_request_error"}
    return {
        "error": {
            "message": message,
            "type": kind.get(status, "server_error"),
            "param": None,
            "code": code or status,
        }
    }
