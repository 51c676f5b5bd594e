"""The runtime's fair share of slots, without a model: order, leaving clients, the cap, identity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from labkit.runtime import fairshare
from labkit.runtime.common import PROPS, ApiError
from labkit.runtime.fairshare import ClientLeft, FairShare, fair_turn, learner_of


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bench:
    """Requests as tasks: each takes a slot when admitted and holds it until ``finish``."""

    def __init__(self, scheduler: FairShare) -> None:
        self.scheduler = scheduler
        self.admitted: list[str] = []  # "learner#n" in the order they got a slot
        self.holding: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.count = 0

    def send(self, learner: str, gone: Callable[[], bool] | None = None) -> str:
        self.count += 1
        name = f"{learner}#{self.count}"
        done = self.holding[name] = asyncio.Event()

        async def request() -> None:
            async with self.scheduler.turn(learner, gone):
                self.admitted.append(name)
                await done.wait()

        self.tasks[name] = asyncio.get_running_loop().create_task(request())
        return name

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def finish(self, name: str) -> None:
        self.holding[name].set()
        await self.tasks[name]
        await self.settle()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_at_most_slots_run_and_one_learner_keeps_arrival_order() -> None:
    async def scenario() -> None:
        bench = Bench(FairShare(2))
        names = [bench.send("ada") for _ in range(5)]
        await bench.settle()
        assert bench.admitted == names[:2]
        assert bench.scheduler.in_flight == 2 and bench.scheduler.waiting("ada") == 3
        for name in names:
            await bench.finish(name)
        assert bench.admitted == names  # one learner: arrival order, as before
        assert bench.scheduler.in_flight == 0 and bench.scheduler.waiting() == 0

    run(scenario)


def test_a_light_learner_goes_before_a_heavy_learners_queue() -> None:
    async def scenario() -> None:
        clock = Clock()
        bench = Bench(FairShare(4, clock=clock))
        heavy = [bench.send("heavy") for _ in range(8)]
        await bench.settle()
        assert bench.admitted == heavy[:4]  # alone, the heavy learner uses every slot
        light = [bench.send(name) for name in ("bo", "cy", "di")]
        await bench.settle()
        assert bench.admitted == heavy[:4]  # nothing is taken away from a running request
        await bench.finish(heavy[0])
        await bench.finish(heavy[1])
        await bench.finish(heavy[2])
        # Each freed slot went to a light learner (none in flight), in order of arrival.
        assert bench.admitted == heavy[:4] + light
        assert bench.scheduler.waiting("heavy") == 4

    run(scenario)


def test_equals_take_turns() -> None:
    async def scenario() -> None:
        bench = Bench(FairShare(1))
        first = bench.send("x")
        await bench.settle()
        queued = [bench.send("x"), bench.send("x"), bench.send("y"), bench.send("y")]
        queued.append(bench.send("z"))
        await bench.settle()
        await bench.finish(first)
        while len(bench.admitted) < 6:
            await bench.finish(bench.admitted[-1])
        learners = [name.split("#")[0] for name in bench.admitted]
        # x just had a turn: y and z (never served) come first, then x, then y again.
        assert learners == ["x", "y", "z", "x", "y", "x"]
        await bench.finish(bench.admitted[-1])

    run(scenario)


def test_a_client_that_leaves_while_queued_leaves_the_queue() -> None:
    async def scenario() -> None:
        bench = Bench(FairShare(1))
        left = False
        holder = bench.send("ada")
        await bench.settle()
        leaver = bench.send("bo", gone=lambda: left)
        after = bench.send("cy")
        await bench.settle()
        assert bench.scheduler.waiting() == 2
        left = True
        with pytest.raises(ClientLeft):
            await bench.tasks[leaver]
        assert bench.scheduler.waiting() == 1 and bench.scheduler.waiting("bo") == 0
        await bench.finish(holder)
        assert bench.admitted == [holder, after]  # the slot skipped the one who left
        assert bench.scheduler.running == {"cy": 1}
        await bench.finish(after)
        assert bench.scheduler.in_flight == 0

    run(scenario)


def test_a_cancelled_request_holds_no_slot() -> None:
    async def scenario() -> None:
        bench = Bench(FairShare(1))
        holder = bench.send("ada")
        waiting = bench.send("bo")
        await bench.settle()
        bench.tasks[waiting].cancel()
        await bench.settle()
        assert bench.scheduler.waiting() == 0
        await bench.finish(holder)
        assert bench.scheduler.in_flight == 0 and bench.admitted == [holder]

    run(scenario)


def test_each_learner_about_keeps_a_slot_free() -> None:
    async def scenario() -> None:
        clock = Clock()
        bench = Bench(FairShare(4, clock=clock, recent=30))
        light = bench.send("bo")
        await bench.settle()
        await bench.finish(light)
        assert bench.scheduler.cap("bo") == 4  # alone: every slot is theirs
        heavy = [bench.send("heavy") for _ in range(6)]
        await bench.settle()
        assert bench.scheduler.cap("heavy") == 3  # bo asked a moment ago
        assert bench.admitted[1:] == heavy[:3] and bench.scheduler.in_flight == 3
        again = bench.send("bo")
        await bench.settle()
        assert bench.admitted[-1] == again  # the free slot: at once, no one had to finish
        await bench.finish(again)
        assert bench.scheduler.in_flight == 3  # bo's slot stays free for bo's next request
        # Two more learners about: two more slots kept free, down to one for the heavy one.
        for name in ("cy", "di"):
            await bench.finish(bench.send(name))
        assert bench.scheduler.cap("heavy") == 1
        await bench.finish(heavy[0])
        await bench.finish(heavy[1])
        assert bench.scheduler.running == {"heavy": 1}
        # Once the others have been quiet for the window, a learner may use every slot.
        clock.now += 31
        await bench.finish(heavy[2])
        assert bench.scheduler.cap("heavy") == 4
        assert bench.scheduler.running == {"heavy": 3}  # the three still waiting
        for name in heavy[3:]:
            await bench.finish(name)
        assert bench.scheduler.in_flight == 0

    run(scenario)


def test_old_learners_are_forgotten() -> None:
    async def scenario() -> None:
        clock = Clock()
        bench = Bench(FairShare(2, clock=clock, recent=60))
        for name in ("ada", "bo", "cy"):
            await bench.finish(bench.send(name))
        assert set(bench.scheduler.seen) == {"ada", "bo", "cy"}
        clock.now += 61
        await bench.finish(bench.send("di"))
        assert set(bench.scheduler.seen) == {"di"} and set(bench.scheduler.last_turn) == {"di"}

    run(scenario)


def test_releasing_a_slot_not_held_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="did not hold"):
        FairShare(1).release("ada")
    with pytest.raises(ValueError, match="at least one slot"):
        FairShare(0)


def test_the_learner_is_the_header_else_the_address() -> None:
    named = make_mocked_request("POST", "/api/chat", headers={"X-Labkit-Learner": " alice "})
    assert learner_of(named) == "learner:alice"
    long = make_mocked_request("POST", "/api/chat", headers={"X-Labkit-Learner": "a" * 500})
    assert learner_of(long) == "learner:" + "a" * fairshare.MAX_LEARNER_CHARS
    blank = make_mocked_request("POST", "/api/chat", headers={"X-Labkit-Learner": "  "})
    plain = make_mocked_request("POST", "/api/chat")
    assert learner_of(blank) == learner_of(plain)
    assert learner_of(plain).startswith("address:")


@pytest.mark.parametrize(
    ("value", "on"), [(None, True), ("on", True), ("off", False), ("0", False)]
)
def test_the_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool) -> None:
    if value is None:
        monkeypatch.delenv("LABKIT_FAIR_SHARE", raising=False)
    else:
        monkeypatch.setenv("LABKIT_FAIR_SHARE", value)
    assert fairshare.enabled() is on


def _connected(app: web.Application) -> web.Request:
    request = make_mocked_request("POST", "/api/chat", app=app)
    request.transport.is_closing.return_value = False  # type: ignore[union-attr]
    return request


def _app(slots: int) -> web.Application:
    app = web.Application()
    app[PROPS] = {"http://127.0.0.1:9": {"total_slots": slots}}
    return app


def test_fair_turn_uses_the_servers_slots_and_answers_a_client_that_left() -> None:
    async def scenario() -> None:
        app = _app(1)
        first, second = _connected(app), _connected(app)
        url = "http://127.0.0.1:9/v1/chat/completions"
        async with fair_turn(first, url):
            waiting = asyncio.get_running_loop().create_task(_enter(second, url))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # one slot, and it is taken
            second.transport.is_closing.return_value = True  # type: ignore[union-attr]
            with pytest.raises(ApiError) as caught:
                await waiting
            assert caught.value.status == 499
        async with fair_turn(second, "http://127.0.0.1:9/completion"):
            pass  # the slot came back, and the one who left holds none

    run(scenario)


async def _enter(request: web.Request, url: str) -> None:
    async with fair_turn(request, url):
        pass


def test_fair_turn_does_nothing_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_FAIR_SHARE", "off")

    async def scenario() -> None:
        app = _app(1)
        url = "http://127.0.0.1:9/completion"
        one, two = _connected(app), _connected(app)
        async with fair_turn(one, url), fair_turn(two, url):
            pass  # both at once, beyond the one slot: llama.cpp queues them itself

    run(scenario)
