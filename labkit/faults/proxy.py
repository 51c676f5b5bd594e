"""A fault-injecting proxy: put it between a client and a runtime to see how the client copes.

The proxy forwards every HTTP request to the real runtime (the embedded one, Ollama, LM Studio,
a llama.cpp server) and passes the answer back, streams chunk by chunk. Rules make it misbehave
on purpose for chosen paths, on a schedule::

    with FaultProxy(target=rt.url) as proxy:
        proxy.add(Fault.status(503), path="/api/chat", times=2)   # first 2 fail, then pass
        client = Client(proxy.url, dialect="ollama")
        client.chat("Hi")
        [(r.path, r.status, r.fault) for r in proxy.requests]     # what the client really did

A rule (``labkit/faults/rules.py``) is a ``Fault`` (what goes wrong) plus a schedule
(``times``, ``every``, ``after``, ``duration``, ``chance``). Faults add up:
``Fault.latency(0.5) + Fault.status(503)``. One request's trip to the target and back, with
its fault applied, is in ``labkit/faults/exchange.py``.
Of the rules whose path matches, the first one whose schedule is due decides; a request no
rule takes passes untouched. ``proxy.requests`` records every exchange.

The proxy runs its own event loop in a background thread, listens on 127.0.0.1 only, and
leaves no thread or socket behind once stopped (hung requests are cut off at stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from labkit.errors import LabkitError
from labkit.faults.exchange import STREAM_TYPES, Exchanger, Upstream, parse_body
from labkit.faults.rules import Exchange, Fault, Rule, parse_rule

__all__ = ["STREAM_TYPES", "FaultProxy", "serve"]

# --- the proxy ---------------------------------------------------------------------------------


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``target`` and injects the faults you add."""

    def __init__(
        self,
        target: str | None = None,
        *,
        port: int = 0,
        seed: int | None = None,
        on_exchange: Callable[[Exchange], None] | None = None,
        stop_timeout: float = 2.0,
    ) -> None:
        if target is None:
            from labkit.discovery import find_runtime  # only when asked to find the runtime

            target = find_runtime(start=False).url
        self.target = target.rstrip("/")
        self.port = port
        self.on_exchange = on_exchange  # called (in the proxy's thread) when an exchange ends
        self.stop_timeout = stop_timeout
        self._rng = random.Random(seed)
        self._rules: list[Rule] = []
        self._log: list[Exchange] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        self._active: set[asyncio.Task[Any]] = set()

    # -- rules and records (called from any thread) --

    def add(
        self,
        fault: Fault | str,
        path: str = "*",
        *,
        method: str | None = None,
        times: int | None = None,
        every: int | None = None,
        after: int = 0,
        duration: float | None = None,
        chance: float | None = None,
    ) -> Rule:
        """Inject ``fault`` into requests on ``path`` per the schedule; returns the rule."""
        if isinstance(fault, str):
            fault = Fault.parse(fault)
        rule = Rule(fault, path, method, times, every, after, duration, chance)
        return self.add_rule(rule)

    def add_rule(self, rule: Rule) -> Rule:
        """Add a rule made elsewhere (e.g. by ``parse_rule``); rules are tried in order."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        """Stop applying ``rule``."""
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        """Remove every rule and forget every recorded exchange."""
        with self._lock:
            self._rules.clear()
            self._log.clear()

    @property
    def rules(self) -> list[Rule]:
        """The rules, in the order they are tried."""
        with self._lock:
            return list(self._rules)

    @property
    def requests(self) -> list[Exchange]:
        """Every exchange so far, oldest first (in-flight ones included)."""
        with self._lock:
            return list(self._log)

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no exchange is in flight; False if some still are after ``timeout``."""
        # A client can finish reading a few moments before the proxy has recorded the end.
        deadline = time.monotonic() + timeout
        while any(e.total is None for e in self.requests):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    @property
    def url(self) -> str:
        """The address clients should use instead of the runtime's."""
        if not self.port:
            raise LabkitError("The fault proxy is not started yet: use `with FaultProxy(...)`.")
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """Base URL for OpenAI-style clients."""
        return self.url + "/v1"

    # -- start and stop --

    def start(self) -> FaultProxy:
        """Start listening (returns self); ``url`` is valid from then on."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="labkit-fault-proxy", daemon=True
        )
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop: cut off requests in flight, close every socket, end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._stop(), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=self.stop_timeout + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> int:
        self._stopping = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),  # the client under test owns timeouts
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: when a client gives up, its request's task is cancelled too,
        # so a hung or slow exchange never outlives the connection it belongs to.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=self.stop_timeout
        )
        await self._runner.setup()
        # Bind the socket ourselves so port 0 (any free port) tells us which one we got.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            raise LabkitError(
                f"The fault proxy cannot listen on 127.0.0.1:{self.port} ({exc.strerror}). "
                "Pick another port, or 0 for any free one."
            ) from exc
        await web.SockSite(self._runner, sock).start()
        return int(sock.getsockname()[1])

    async def _stop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for task in list(self._active):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # A target given by host name resolves in the loop's thread pool; end those threads.
        loop = asyncio.get_running_loop()
        await loop.shutdown_default_executor()

    # -- one request --

    def _pick(self, method: str, path: str) -> Rule | None:
        """The first rule that matches and is due; every matching rule counts the request."""
        chosen = None
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path) and rule.due(self._rng) and chosen is None:
                    chosen = rule
            if chosen is not None:
                chosen.applied += 1
        return chosen

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        raw = await request.read()
        exchange = Exchange(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=dict(request.headers),
            body=parse_body(raw),
            started=time.time(),
        )
        rule = self._pick(request.method, request.path)
        fault = rule.fault if rule else Fault()
        exchange.fault = str(fault) if rule else None
        with self._lock:
            self._log.append(exchange)
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            assert self._session is not None
            upstream = Upstream(self.target, self._session, self._rng)
            return await Exchanger(upstream, request, raw, fault, exchange, t0).run()
        except asyncio.CancelledError:
            stopped = self._stopping is not None and self._stopping.is_set()
            reason = "the proxy stopped" if stopped else "the client went away"
            if exchange.error in (None, "hung"):
                exchange.error = f"{exchange.error}, then {reason}" if exchange.error else reason
            raise
        finally:
            exchange.total = time.perf_counter() - t0
            if task is not None:
                self._active.discard(task)
            if self.on_exchange is not None:
                with contextlib.suppress(Exception):  # a printing callback must not break serving
                    self.on_exchange(exchange)


def serve(
    target: str | None,
    rules: list[str],
    *,
    port: int = 0,
    say: Callable[[str], None] = print,
) -> None:
    """Run a proxy in the foreground, printing each exchange, until Ctrl+C."""
    parsed = [parse_rule(text) for text in rules]
    with FaultProxy(target, port=port, on_exchange=lambda ex: say(str(ex))) as proxy:
        for rule in parsed:
            proxy.add_rule(rule)
        say(f"Fault proxy on {proxy.url} -> {proxy.target}")
        for rule in parsed:
            say(f"  rule: {rule}")
        if not parsed:
            say("  no rules: every request passes untouched")
        say("Point your client at the proxy's address. Stop with Ctrl+C.")
        stop = threading.Event()
        try:
            stop.wait()
        except KeyboardInterrupt:
            say("Stopping the fault proxy.")
