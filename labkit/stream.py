"""A streamed answer: the pieces as the model writes them, and the whole ``Reply`` at the end.

Nothing is sent until you start iterating. Retries happen only before the first piece:
once text has reached you, a failure is raised rather than starting over. A stream is bounded
like every call (``Timeout.total``, ``max_response_bytes``): a server that drips bytes
forever is cut off at the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import requests

from labkit.dialects import Format
from labkit.errors import BrokenStream, LabkitError
from labkit.reply import Reply, Timeout
from labkit.transport import Deadline, read_lines, transport_error

if TYPE_CHECKING:  # only for the type hints: client.py imports this module
    from labkit.client import Client

__all__ = ["Stream"]


class Stream:
    """The pieces of an answer as they arrive; ``.reply`` has the whole answer at the end."""

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
        client, dialect = self.client, self.client.dialect
        deadline = client.deadline(self.timeout)
        start = time.perf_counter()
        meta: dict[str, Any] = {}
        response: requests.Response | None = None

        def first_piece() -> tuple[requests.Response, Iterator[bytes], str]:
            # Everything up to the first piece of text may be retried, so it is one step.
            meta.clear()
            self._ended = False
            response = client.send("POST", self.path, self.body, deadline, model=self.model)
            where = client.url + self.path
            lines = read_lines(response, where, client.max_response_bytes, deadline)
            try:
                return response, lines, self._next_piece(lines, meta, deadline)
            except BaseException:
                response.close()
                raise

        try:
            try:
                response, lines, piece = client.retrying(first_piece, deadline)
            except LabkitError as exc:
                client.log_call(
                    self.path, self.model, self.prompt, time.perf_counter() - start,
                    deadline.attempts, error=exc,
                )  # fmt: skip
                raise
            while piece:
                if self.first_token is None:
                    self.first_token = time.perf_counter() - start
                self.pieces.append(piece)
                yield piece
                piece = self._next_piece(lines, meta, deadline)
        except LabkitError as exc:
            if self.pieces:  # failures before the first piece were logged above
                client.log_call(
                    self.path, self.model, self.prompt, time.perf_counter() - start,
                    deadline.attempts, error=exc, first_token=self.first_token,
                    reply_chars=len(self.text),
                )  # fmt: skip
            raise
        finally:
            if response is not None:
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
            attempts=deadline.attempts,
            schema=self.format if isinstance(self.format, Mapping) else None,
        )
        self._reply = client.finish(reply, self.path, self.model, self.prompt, self.format)

    def _next_piece(self, lines: Iterator[bytes], meta: dict[str, Any], deadline: Deadline) -> str:
        """Read lines until one carries text; "" at the proper end of the stream."""
        client, dialect = self.client, self.client.dialect
        where = client.url + self.path
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
                    exc, client.url, self.path, deadline.limits, started, client.runtime_name
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
