"""A fair share of llama.cpp's slots: waiting requests are served in turn per learner.

llama.cpp decodes a few requests at once (its slots) and queues the rest in arrival order, so
one learner who sends eight requests makes everyone who comes after wait for all eight. The
front therefore lets at most as many requests into each llama.cpp server as it has slots and
keeps the others itself, in one queue per learner. When a slot frees, it goes to the waiting
learner with the fewest requests in flight; among equals, to the one whose last turn was
longest ago (round-robin). Within one learner, requests keep their arrival order.

A request cannot be stopped to make room, so the front keeps room instead: every other
learner who asked within ``RECENT_SECONDS`` keeps one slot free for their next request. A
learner holds at most the slots less one per such learner (always at least one), so a light
learner who comes back starts at once instead of waiting for a long answer to end. Alone, a
learner may use every slot.

A learner is named by the ``X-Labkit-Learner`` header, which the class server's nginx sets
from the learner's token (replacing whatever the client sent); without it, by the client's
address. On one machine that is one learner, and everything is served in arrival order, as
llama.cpp alone would. ``LABKIT_FAIR_SHARE=off`` (read when the runtime starts serving) turns the queues
off, leaving the order to llama.cpp.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from labkit.runtime.common import LOAD, ApiError, server_props

__all__ = [
    "DEFAULT_SLOTS",
    "LEARNER_HEADER",
    "MAX_LEARNER_CHARS",
    "RECENT_SECONDS",
    "ClientLeft",
    "FairShare",
    "enabled",
    "fair_turn",
    "generation_turn",
    "learner_of",
]

LEARNER_HEADER = "X-Labkit-Learner"
MAX_LEARNER_CHARS = 128  # a login name fits many times; longer is no name
# A class works in bursts: a learner who asked half a minute ago is likely to ask again. A
# longer window keeps slots free for longer for learners who may not come back.
RECENT_SECONDS = 30.0
DEFAULT_SLOTS = 4  # what the runtime gives each llama.cpp server (server.py)
POLL_SECONDS = 0.1  # how often a waiting request checks that its client is still there


class ClientLeft(Exception):
    """The client went away while its request waited for a slot."""


class FairShare:
    """Admits at most ``slots`` requests at once; waiting ones are served in turn per learner."""

    def __init__(
        self,
        slots: int,
        *,
        recent: float = RECENT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a scheduler needs at least one slot, got {slots}")
        self.slots = slots
        self.recent = recent
        self.clock = clock
        self.running: dict[str, int] = {}  # learner -> requests in flight
        self.queues: dict[str, deque[asyncio.Future[None]]] = {}  # learner -> waiting, oldest first
        self.last_turn: dict[str, int] = {}  # learner -> number of their latest admission
        self.seen: dict[str, float] = {}  # learner -> clock() of their latest request
        self._turns = itertools.count()

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return sum(self.running.values())

    def waiting(self, learner: str | None = None) -> int:
        """Requests waiting for a slot (one learner's, or everyone's)."""
        if learner is not None:
            return len(self.queues.get(learner, ()))
        return sum(len(queue) for queue in self.queues.values())

    def cap(self, learner: str) -> int:
        """Slots ``learner`` may hold now: one fewer for each other learner about, at least one."""
        return self._cap(learner, self._active())

    def _active(self) -> set[str]:
        """Learners with requests in flight or waiting, or who asked recently."""
        now = self.clock()
        active = {name for name, when in self.seen.items() if now - when < self.recent}
        return active | self.running.keys() | self.queues.keys()

    def _cap(self, learner: str, active: set[str]) -> int:
        return max(1, self.slots - len(active - {learner}))

    async def acquire(self, learner: str, gone: Callable[[], bool] | None = None) -> None:
        """Wait for a slot in ``learner``'s turn; ``ClientLeft`` if ``gone()`` turns true first.

        A request that stops waiting (its client left, or its task was cancelled) leaves the
        queue and holds no slot.
        """
        self._forget_old()
        self.seen[learner] = self.clock()
        admitted = asyncio.get_running_loop().create_future()
        self.queues.setdefault(learner, deque()).append(admitted)
        self._dispatch()
        try:
            while not admitted.done():
                await asyncio.wait({admitted}, timeout=POLL_SECONDS if gone else None)
                if not admitted.done() and gone is not None and gone():
                    raise ClientLeft
        except BaseException:
            if admitted.done() and not admitted.cancelled():
                self.release(learner)  # admitted just as it stopped waiting: give it back
            else:
                self._leave(learner, admitted)
            raise

    def release(self, learner: str) -> None:
        """Free one of ``learner``'s slots and hand it to the next learner in turn."""
        count = self.running.get(learner, 0) - 1
        if count < 0:
            raise RuntimeError(f"{learner!r} released a slot it did not hold")
        if count:
            self.running[learner] = count
        else:
            del self.running[learner]
        self._dispatch()

    @contextlib.asynccontextmanager
    async def turn(
        self, learner: str, gone: Callable[[], bool] | None = None
    ) -> AsyncIterator[None]:
        """Hold one slot for the block, after waiting for ``learner``'s turn."""
        await self.acquire(learner, gone)
        try:
            yield
        finally:
            self.release(learner)

    def _dispatch(self) -> None:
        """Admit waiting requests while slots are free, each to the learner whose turn it is."""
        while self.in_flight < self.slots:
            active = self._active()
            candidates = [
                name for name in self.queues if self.running.get(name, 0) < self._cap(name, active)
            ]
            if not candidates:
                return
            # Fewest in flight first, then longest since the last turn (never: first of all);
            # min keeps the earliest among equals, and queues are kept in order of arrival.
            learner = min(
                candidates,
                key=lambda name: (self.running.get(name, 0), self.last_turn.get(name, -1)),
            )
            queue = self.queues[learner]
            admitted = queue.popleft()
            if not queue:
                del self.queues[learner]
            self.running[learner] = self.running.get(learner, 0) + 1
            self.last_turn[learner] = next(self._turns)
            admitted.set_result(None)

    def _leave(self, learner: str, admitted: asyncio.Future[None]) -> None:
        queue = self.queues.get(learner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(admitted)
            if not queue:
                del self.queues[learner]
        admitted.cancel()
        # The learner's place may have kept the cap down: someone else may fit now.
        self._dispatch()

    def _forget_old(self) -> None:
        """Drop learners not seen for a while, so memory stays bounded by the recent ones."""
        now = self.clock()
        old = [name for name, when in self.seen.items() if now - when >= self.recent]
        for name in old:
            if name not in self.running and name not in self.queues:
                del self.seen[name]
                self.last_turn.pop(name, None)


def enabled() -> bool:
    """False when ``LABKIT_FAIR_SHARE`` is ``off`` (llama.cpp's arrival order instead)."""
    value = os.environ.get("LABKIT_FAIR_SHARE", "on").strip().lower()
    return value not in ("off", "0", "false", "no")


def learner_of(request: web.BaseRequest) -> str:
    """Who sent ``request``: the learner header if present, else the client's address."""
    named = request.headers.get(LEARNER_HEADER, "").strip()
    if named:
        return "learner:" + named[:MAX_LEARNER_CHARS]
    return "address:" + (request.remote or "local")


# One scheduler per llama.cpp server (by its address) for each application; None when off.
_SCHEDULERS: weakref.WeakKeyDictionary[web.Application, dict[str, FairShare | None]] = (
    weakref.WeakKeyDictionary()
)


async def _scheduler(app: web.Application, url: str) -> FairShare | None:
    parts = urlsplit(url)
    server = f"{parts.scheme}://{parts.netloc}"  # the server, whatever path was asked
    found = _SCHEDULERS.setdefault(app, {})
    if server not in found:
        slots = DEFAULT_SLOTS
        with contextlib.suppress(aiohttp.ClientError, ValueError, TypeError, ApiError):
            props = await server_props(app, server)
            slots = int(props.get("total_slots", DEFAULT_SLOTS)) or DEFAULT_SLOTS
        # Another request may have made it while this one read the props.
        found.setdefault(server, FairShare(slots) if enabled() else None)
    return found[server]


@contextlib.asynccontextmanager
async def fair_turn(request: web.Request, url: str) -> AsyncIterator[None]:
    """Hold a slot of the llama.cpp server at ``url`` for the block, in the learner's turn."""
    scheduler = await _scheduler(request.app, url)
    if scheduler is None:
        yield
        return
    learner = learner_of(request)

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    try:
        await scheduler.acquire(learner, gone)
    except ClientLeft as exc:
        # Nobody reads this answer: it only ends the request without a traceback.
        raise ApiError(499, "the client closed the request while it waited for a slot") from exc
    try:
        yield
    finally:
        scheduler.release(learner)


@contextlib.asynccontextmanager
async def generation_turn(request: web.Request, url: str) -> AsyncIterator[None]:
    """A slot for one generation, counted as running while the block does (see ``Load``)."""
    async with fair_turn(request, url):
        with request.app[LOAD].generation():
            yield
