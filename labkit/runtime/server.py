"""The embedded runtime process: llama.cpp for chat and embeddings, Ollama's dialect in front.

Run by ``labkit up`` as ``python -m labkit.runtime.server --port N --state-dir DIR --log FILE``;
not meant to be imported by notebooks. It writes ``runtime.json`` once everything answers, and
removes it when it stops. Every answer carries the ``X-Labkit-Runtime`` header
(``identity.py``), so discovery can tell this folder's runtime from another folder's or user's;
``--shared`` marks a runtime meant for everyone on the machine (the systemd unit's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from labkit import runtime
from labkit.errors import RuntimeStartError
from labkit.runtime import limits
from labkit.runtime.identity import HEADER, Identity, new_identity

if TYPE_CHECKING:
    from aiohttp import web

PROMPT_CACHE_MIB = 128  # about three full 2048-token contexts of the chat model
HEADER_TIMEOUT = 15.0  # seconds a connection may take to send a whole request head


def start_llama(model: Path, alias: str, *, embedding: bool, threads: int, api_key: str) -> Any:
    """Start one llama.cpp server on a free loopback port; returns the xllamacpp.Server."""
    import xllamacpp  # imported here: only the runtime process needs the native library

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {alias}  # a set: a model may have several names
    params.port = 0  # let the OS pick; nobody talks to llama.cpp directly but the dialect
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # Waiting threads sleep rather than spin: alone it costs nothing measurable (3 chats in
    # 1.69 s against 1.67 s), and beside notebooks and a second server on the same cores it
    # stops a spinning thread from taking the core another one needs (6-7 s against 9 s).
    params.cpuparams.poll = params.cpuparams_batch.poll = 0
    params.endpoint_metrics = True
    # Only the front may use llama.cpp: it alone sends the key, and no web page gets a CORS
    # answer (a browser cannot send the key without one).
    params.api_keys = [api_key]
    params.cors_origins = ""
    params.cors_credentials = False
    # llama.cpp keeps finished prompts in RAM to reuse them, up to 8 GB by default: memory a
    # long-running runtime takes and never gives back. A few contexts' worth is plenty here.
    params.cache_ram_mib = 0 if embedding else PROMPT_CACHE_MIB
    if embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        # Four slots of 512 tokens (MiniLM's maximum); a whole input must fit one batch.
        params.n_ctx = 2048
        params.n_parallel = 4
        params.n_batch = 2048
        params.n_ubatch = 512
    else:
        # Four slots share the context: 2048 tokens each, enough for the course's prompts.
        params.n_ctx = 8192
        params.n_parallel = 4
        # A seeded temperature-0 request gets the same reply whatever else runs. On the CPU,
        # llama.cpp's flash attention adds a token's attention up in an order that depends on
        # the batch around it (a lone sequence past 512 tokens is split across threads, a
        # prompt chunk is tiled), and a prompt taken partly from the cache, from another
        # request's slot or from RAM, gives other last bits than one computed whole; either
        # changed replies. Without both, each token's sums run in one fixed order, for a few
        # percent of throughput with fresh prompts (bench/determinism.py); repeated prompts
        # are read again each time. LABKIT_DETERMINISTIC=0 keeps llama.cpp's own choices.
        choice = os.environ.get("LABKIT_DETERMINISTIC", "1").strip()
        if choice not in ("0", "1"):
            raise RuntimeStartError(
                f"LABKIT_DETERMINISTIC={choice!r} is not a setting: use 1 (the default, "
                "replies that repeat) or 0 (llama.cpp's flash attention and prompt cache)"
            )
        if choice == "1":
            params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.cache_prompt = False  # the default of every request; /v1 cannot override it
            params.cache_ram_mib = 0  # nothing to keep: no prompt is reused
    return xllamacpp.Server(params)


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    """Poll llama.cpp's /health until it says ok."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/health", timeout=2).ok:
                return
        time.sleep(0.05)
    raise RuntimeStartError(f"llama.cpp at {url} did not become healthy in {timeout:.0f} s")


class ConnectionCap:
    """Holds the front's client connections under a cap, so llama.cpp's always find descriptors.

    At the cap, a new connection closes the longest-idle one (no request in flight), as nginx
    reuses its keep-alive connections; when every connection is busy, the new one is closed.
    """

    def __init__(self, cap: int, say: limits.RateLimited) -> None:
        self.cap, self.say = cap, say
        self.idle: OrderedDict[asyncio.BaseTransport, None] = OrderedDict()  # oldest first
        self.busy: dict[asyncio.BaseTransport, int] = {}  # requests in flight per connection

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; False if it must be closed at once."""
        if len(self.idle) + len(self.busy) >= self.cap:
            if not self.idle:
                self.say("cap-busy", f"{self.cap} connections, all busy: refused a new one")
                return False
            oldest, _ = self.idle.popitem(last=False)
            oldest.close()
            self.say("cap-idle", f"{self.cap} connections (the cap): closed the longest-idle")
        self.idle[transport] = None
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        """Forget a connection that ended."""
        self.idle.pop(transport, None)
        self.busy.pop(transport, None)

    def started(self, transport: asyncio.BaseTransport) -> None:
        """A request began on ``transport``."""
        if transport in self.idle or transport in self.busy:
            self.idle.pop(transport, None)
            self.busy[transport] = self.busy.get(transport, 0) + 1

    def ended(self, transport: asyncio.BaseTransport) -> None:
        """A request on ``transport`` ended: with none left, it is idle (and newest)."""
        if (left := self.busy.get(transport, 0) - 1) > 0:
            self.busy[transport] = left
        elif transport in self.busy:
            del self.busy[transport]
            self.idle[transport] = None

    def protocol(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that counts what ``make`` serves."""
        return lambda: _Counted(make(), self)

    def middleware(self) -> Any:
        """An aiohttp middleware that marks a connection busy while a request runs on it."""
        from aiohttp import web

        @web.middleware
        async def busy(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            transport = request.transport
            if transport is None:
                return await handler(request)
            self.started(transport)
            try:
                return await handler(request)
            finally:
                self.ended(transport)

        return busy


class _Counted(asyncio.Protocol):
    """An aiohttp connection, told to the cap when it opens and closes."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self.inner, self.cap = inner, cap
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.cap.opened(transport):
            transport.abort()  # type: ignore[attr-defined]  # a socket's transport has abort
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.cap.closed(self.transport)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def quiet_errors(loop: asyncio.AbstractEventLoop, say: limits.RateLimited) -> None:
    """Errors that repeat (failed accepts when descriptors run out) log one line a second."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", "error"))
        key = f"{message}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        if exc is None or isinstance(exc, OSError):
            say(key, f"{message}: {exc}" if exc else message)
            return
        allowed, held = say.allow(key)
        if allowed:  # a bug: its traceback, once a second at most
            loop.default_exception_handler({**context, "message": message + say.held_note(held)})

    loop.set_exception_handler(handle)

    class _Once(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            kind = type(record.exc_info[1]).__name__ if record.exc_info else ""
            allowed, held = say.allow(f"{record.name}|{record.msg}|{kind}")
            if allowed and held:
                record.msg = f"{record.msg}{say.held_note(held)}"
            return allowed

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Once())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


async def serve(port: int, state_dir: Path, threads: int, *, shared: bool = False) -> None:
    """Start everything, publish the record, and serve until SIGTERM or SIGINT."""
    from aiohttp import web

    from labkit.runtime.app import create_app
    from labkit.runtime.common import Backend

    say = limits.RateLimited(_line)
    quiet_errors(asyncio.get_running_loop(), say)
    chat_path, embed_path = runtime.chat_model_path(), runtime.embed_model_path()
    lock = runtime.hold_lock(state_dir)  # one runtime per folder; held until this process ends
    identity = new_identity(state_dir, shared=shared)
    key = secrets.token_urlsafe(32)
    chat = start_llama(chat_path, runtime.CHAT_MODEL, embedding=False, threads=threads, api_key=key)
    embed = start_llama(
        embed_path, runtime.EMBED_MODEL, embedding=True, threads=threads, api_key=key
    )
    for server in (chat, embed):
        wait_healthy(server.listening_address)

    backend = Backend(
        llama_url=chat.listening_address,
        embed_url=embed.listening_address,
        chat_model=runtime.CHAT_MODEL,
        embed_model=runtime.EMBED_MODEL,
        chat_model_path=chat_path,
        embed_model_path=embed_path,
        api_key=key,
    )
    soft, _ = limits.raise_open_files()
    cap = ConnectionCap(limits.connection_cap(soft, limits.open_descriptors()), say)
    app = create_app(backend)
    app.middlewares.append(cap.middleware())
    app.on_response_prepare.append(_identified(identity))
    # keepalive_timeout also closes a new connection that sends no whole request in time:
    # a client that sends half its headers and waits does not hold a connection for long.
    app_runner = web.AppRunner(app, access_log=None, keepalive_timeout=HEADER_TIMEOUT)
    await app_runner.setup()
    assert app_runner.server is not None  # set up just above
    try:
        listener = await asyncio.get_running_loop().create_server(
            cap.protocol(app_runner.server), "127.0.0.1", port, backlog=128, reuse_address=True
        )
    except OSError as exc:
        raise RuntimeStartError(f"Cannot listen on 127.0.0.1:{port}: {exc}") from exc

    record = runtime.RuntimeRecord(
        pid=os.getpid(),
        url=f"http://127.0.0.1:{port}",
        llama_url=chat.listening_address,
        embed_url=embed.listening_address,
        models=[runtime.CHAT_MODEL, runtime.EMBED_MODEL],
        log=str(runtime.log_path(state_dir)),
        started=time.time(),
        api_key=key,
        instance=identity.instance,
    )
    # The fallback first: whoever reads runtime.json can count on the lock file already
    # holding the same record, should runtime.json be damaged a moment later.
    runtime.publish_lock(lock, record)
    runtime.write_record(record, state_dir)
    print(f"labkit runtime ready at {record.url} ({cap.cap} connections at most)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(OSError):
            if (runtime.read_record(state_dir) or record).pid == record.pid:
                runtime.record_path(state_dir).unlink(missing_ok=True)
        listener.close()
        await app_runner.cleanup()
        del chat, embed  # the llama.cpp servers stop when their objects go
        lock.close()
    print("labkit runtime stopped", flush=True)


def _identified(identity: Identity) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: every answer names this runtime (see identity.py)."""
    value = identity.header()

    async def name(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[HEADER] = value

    return name


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the runtime process."""
    parser = argparse.ArgumentParser(prog="python -m labkit.runtime.server")
    parser.add_argument("--port", type=int, default=runtime.DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=runtime.home())
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 2))
    parser.add_argument("--log", type=Path, help="write output here, rotated by size")
    parser.add_argument("--shared", action="store_true", help="a runtime for every user here")
    args = parser.parse_args(argv)
    finish = None
    if args.log:
        try:
            finish = limits.rotate_output(args.log)
        except OSError as exc:  # the output still goes where it went: the log, unrotated
            print(f"labkit runtime: cannot rotate {args.log} ({exc.strerror})", flush=True)
    try:
        asyncio.run(serve(args.port, args.state_dir, args.threads, shared=args.shared))
    except RuntimeStartError as exc:
        print(f"labkit runtime failed to start: {exc}", flush=True)
        return 1
    finally:
        if finish is not None:
            finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
