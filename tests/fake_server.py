"""A tiny HTTP server that misbehaves on cue — for fault tests only.

A real runtime will not fail on demand, so fault tests script this one instead: each request
it receives gets the next scripted action (an answer, a hang, a stream that breaks off...).
It binds 127.0.0.1 on a free port and stops (releasing any hang) when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    """A whole response at once."""

    status: int = 200
    body: Any = b""  # bytes, str, or anything JSON-able
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Accept the request and send nothing for ``seconds``."""

    seconds: float = 30.0


@dataclass
class Reset:
    """Drop the connection (TCP reset) before answering."""


@dataclass
class Lines:
    """A chunked stream, one chunk per line (or per given piece of bytes).

    ``end``: "done" ends the stream properly, "reset" drops the connection, "close" closes it
    without the final chunk, "hang" stops sending but keeps the connection open.
    """

    lines: list[bytes | str | float]  # a number is a pause of that many seconds
    end: str = "done"
    delay: float = 0.0  # seconds between chunks
    content_type: str = "application/x-ndjson"
    raw: bool = False  # True: send each item as it is (no newline added)


@dataclass
class Flood:
    """A chunked body that never ends: ``piece`` again and again, every ``delay`` seconds."""

    piece: bytes = b"x" * 65536
    delay: float = 0.0
    content_type: str = "application/json"


Action = Answer | Hang | Reset | Lines | Flood


@dataclass
class Seen:
    """A request the server received."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """Serves scripted actions in order; the last one repeats when the script runs out."""

    def __init__(self, *script: Action) -> None:
        self.script = list(script) or [Answer(500, {"error": "no scripted answer"})]
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_action(self, seen: Seen) -> Action:
        with self._lock:
            self.seen.append(seen)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    @property
    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        return [s.path for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # needed for chunked streams
    fake: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the socket was reset on purpose
            super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        action = self.fake.next_action(Seen(self.command, self.path, body, dict(self.headers)))
        self.close_connection = True
        if isinstance(action, Reset):
            self._reset()
        elif isinstance(action, Hang):
            self.fake.stop.wait(action.seconds)
        elif isinstance(action, Answer):
            self._answer(action)
        elif isinstance(action, Flood):
            self._flood(action)
        else:
            self._stream(action)

    def _answer(self, action: Answer) -> None:
        body = action.body
        if isinstance(body, str):
            data, kind = body.encode(), "text/plain"
        elif isinstance(body, bytes):
            data, kind = body, "text/plain"
        else:
            data, kind = json.dumps(body).encode(), "application/json"
        self.send_response(action.status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in action.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, action: Lines) -> None:
        self.send_response(200)
        self.send_header("Content-Type", action.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        for data in _encoded(action):
            pause = data if isinstance(data, float) else action.delay
            if self.fake.stop.wait(pause):
                return
            if isinstance(data, float):
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if action.end == "done":
            self.wfile.write(b"0\r\n\r\n")
        elif action.end == "reset":
            self._reset()
        elif action.end == "hang":
            self.fake.stop.wait(30)

    def _flood(self, action: Flood) -> None:
        self.send_response(200)
        self.send_header("Content-Type", action.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"%x\r\n%s\r\n" % (len(action.piece), action.piece)
        with contextlib.suppress(OSError):  # the client hung up: that is the point
            while not self.fake.stop.wait(action.delay):
                self.wfile.write(chunk)
                self.wfile.flush()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of a polite FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


def _encoded(action: Lines) -> Iterator[bytes | float]:
    for line in action.lines:
        if isinstance(line, (int, float)):
            yield float(line)
            continue
        data = line.encode() if isinstance(line, str) else line
        yield data if action.raw else data + b"\n"


# --- helpers to script the two dialects' streams -------------------------------------------------


def ollama_lines(
    pieces: list[str], *, done: bool = True, model: str = "m"
) -> list[bytes | str | float]:
    """An Ollama /api/chat stream: one JSON object per piece, then the final counters."""
    lines: list[bytes | str | float] = [
        json.dumps({"model": model, "message": {"role": "assistant", "content": p}, "done": False})
        for p in pieces
    ]
    if done:
        final = {
            "model": model,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": len(pieces),
            "eval_duration": 1_000_000 * len(pieces),
            "total_duration": 2_000_000 * len(pieces),
        }
        lines.append(json.dumps(final))
    return lines


def openai_lines(
    pieces: list[str], *, done: bool = True, model: str = "m"
) -> list[bytes | str | float]:
    """An OpenAI SSE stream: ``data:`` chunks, usage, then ``data: [DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({"model": model, "choices": [choice]}) + "\n"

    lines: list[bytes | str | float] = [chunk({"role": "assistant", "content": None})]
    lines += [chunk({"content": p}) for p in pieces]
    if done:
        lines.append(chunk({}, "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5}
        lines.append("data: " + json.dumps({"model": model, "choices": [], "usage": usage}) + "\n")
        lines.append("data: [DONE]\n")
    return lines


def stream_lines(
    dialect: str, pieces: list[str], *, done: bool = True
) -> list[bytes | str | float]:
    """A stream in the given dialect's shape."""
    return (ollama_lines if dialect == "ollama" else openai_lines)(pieces, done=done)


def refused_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Sleeps(list[float]):
    """A retry policy's sleep, replaced: it remembers each pause instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class FakeClock:
    """A clock that only moves when ``sleep`` is called: deadlines tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
