"""A streamed answer: the pieces as the model writes them, and the whole ``Reply`` at the end.

Nothing is sent until you start iterating. Retries happen only before the first piece:
once text has reached you, a failure is raised rather than starting over. A stream is bounded
like every call (``Timeout.total``, ``max_response_bytes``): a server that drips bytes
forever is cut off at the deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests

from labkit.connection import Call, Connection
from labkit.dialects import Format
from labkit.errors import BrokenStream
from labkit.reply import Reply, Timeout
from labkit.transport import Deadline, read_lines, transport_error

__all__ = ["Stream"]


class Stream:
    """The pieces of an answer as they arrive; ``.reply`` has the whole answer at the end."""

    def __init__(
        self,
        connection: Connection,
        path: str,
        body: dict[str, Any],
        *,
        model: str,
        prompt: list[dict[str, Any]],
        format: Format,
        timeout: Timeout | float | None,
    ) -> None:
        self.connection, self.path, self.body, self.model = connection, path, body, model
        self.prompt, self.format, self.timeout = prompt, format, timeout
        self.pieces: list[str] = []
        self._call: Call | None = None
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
    def first_token(self) -> float | None:
        """Seconds from sending the request to the first piece (None before it arrives)."""
        return None if self._call is None else self._call.first_token

    @property
    def reply(self) -> Reply:
        """The whole answer with its metadata (reads the rest of the stream if needed)."""
        if self._reply is None:
            for _ in self:
                pass
        if self._reply is None:
            raise BrokenStream(
                "This stream stopped before its end (closed, or it failed), so it has no "
                "reply; stream.text holds what arrived.",
                status=200,
                detail="no reply",
            )
        return self._reply

    def close(self) -> None:
        """Stop reading (the runtime stops generating when the connection closes)."""
        self._closed = True
        if self._run is not None and hasattr(self._run, "close"):
            self._run.close()

    def _pieces(self) -> Iterator[str]:
        connection = self.connection
        call = self._call = Call(
            connection,
            self.path,
            model=self.model,
            prompt=self.prompt,
            format=self.format,
            timeout=self.timeout,
        )
        deadline = call.deadline
        meta: dict[str, Any] = {}
        response: requests.Response | None = None

        def first_piece() -> tuple[requests.Response, Iterator[bytes], str]:
            # Everything up to the first piece of text may be retried, so it is one step.
            meta.clear()
            self._ended = False
            response = connection.send("POST", self.path, self.body, deadline, model=self.model)
            where = connection.url + self.path
            lines = read_lines(response, where, connection.max_response_bytes, deadline)
            try:
                return response, lines, self._next_piece(lines, meta, deadline)
            except BaseException:
                response.close()
                raise

        try:
            with call.failures_logged():
                response, lines, piece = connection.retrying(first_piece, deadline)
                while piece:
                    call.received(piece)
                    self.pieces.append(piece)
                    yield piece
                    piece = self._next_piece(lines, meta, deadline)
        finally:
            if response is not None:
                response.close()
        self._reply = call.reply(connection.dialect.parse(meta), dict(meta), self.text)

    def _next_piece(self, lines: Iterator[bytes], meta: dict[str, Any], deadline: Deadline) -> str:
        """Read lines until one carries text; "" at the proper end of the stream."""
        connection, dialect = self.connection, self.connection.dialect
        where = connection.url + self.path
        while not self._ended:
            try:
                line = next(lines)
            except StopIteration:
                if not dialect.stream_complete(meta):
                    raise BrokenStream(
                        f"The stream from {where} ended without its closing message after "
                        f"{len(self.pieces)} pieces: the answer is cut short. The runtime may "
                        "have crashed; check `labkit status` and try again.",
                        status=200,
                        detail="truncated stream",
                    ) from None
                break
            except requests.RequestException as exc:
                deadline.check(where)  # a read cut short by the deadline says so
                started = len(self.pieces) or None  # before any text, it may be retried
                raise transport_error(
                    exc,
                    connection.url,
                    self.path,
                    deadline.limits,
                    started,
                    connection.runtime_name,
                ) from exc
            try:
                piece, done = dialect.stream_line(line, meta)
            except BrokenStream as exc:
                raise BrokenStream(
                    f"{exc} (from {where}, after {len(self.pieces)} pieces)",
                    status=200,
                    detail=exc.detail,
                ) from exc
            if done:
                self._ended = True
            if piece:
                return piece
        return ""
