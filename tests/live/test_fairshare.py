"""The live runtime's fair share: a light learner is served before a heavy learner's queue.

Structure, not timing: the test counts how many of the heavy learner's answers had ended when
the light learner's ended. In arrival order that is at least five (four running, then the
four queued ahead of it, one of which must end before it starts); in turn per learner the
light learner goes next. The heavy streams are long and are hung up as soon as the light
answer is in, so the test costs a few seconds; hanging up queued requests must leave no slot
taken, which the last step checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import aiohttp
import requests
from test_deploy import TOKEN, Gateway, gateway  # noqa: F401 (a fixture, used by name)

from labkit import runtime
from labkit.runtime.fairshare import LEARNER_HEADER

HEAVY = 8  # twice the runtime's four slots
TIMEOUT = aiohttp.ClientTimeout(total=120)


def _chat(content: str, tokens: int, *, stream: bool) -> dict[str, Any]:
    return {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        "options": {"temperature": 0, "seed": 1, "num_predict": tokens},
    }


async def _scenario(url: str) -> tuple[int, list[str]]:
    """(heavy answers ended before the light one, the learners of the closing check)."""
    ended: list[str] = []
    first_token = asyncio.Event()
    long = _chat("Count from 1 to 500 in digits, separated by commas.", 400, stream=True)
    short = _chat("Say hi.", 2, stream=False)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def post(learner: str, body: dict[str, Any]) -> None:
            headers = {LEARNER_HEADER: learner}
            async with session.post(url + "/api/chat", json=body, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
                async for _line in answer.content:
                    if learner == "heavy":
                        first_token.set()
            ended.append(learner)

        # The light learner asks once first, so the runtime knows two learners are about.
        await post("light", short)
        ended.clear()
        heavy = [asyncio.create_task(post("heavy", long)) for _ in range(HEAVY)]
        await asyncio.wait_for(first_token.wait(), 60)  # the heavy requests are in
        await asyncio.sleep(0.3)
        await post("light", short)
        heavy_before = ended.count("heavy")
        for task in heavy:
            task.cancel()  # hang up, queued or streaming
        await asyncio.gather(*heavy, return_exceptions=True)
        # No slot stays with the requests that left: four learners at once all get answers.
        ended.clear()
        learners = [f"after-{n}" for n in range(4)]
        await asyncio.wait_for(asyncio.gather(*(post(name, short) for name in learners)), 90)
        return heavy_before, sorted(ended)


def test_a_light_learner_is_served_before_a_heavy_learners_queue(
    embedded: runtime.RuntimeRecord,
) -> None:
    # A thread of its own: a browser test on this worker may leave an event loop running here.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        heavy_before, after = pool.submit(asyncio.run, _scenario(embedded.url)).result()
    assert heavy_before < 5, f"{heavy_before} of the heavy learner's answers ended first"
    assert after == [f"after-{n}" for n in range(4)]


def test_nginx_names_the_learner_whatever_the_client_says(gateway: Gateway) -> None:  # noqa: F811
    gateway.proxy.clear()
    answer = requests.get(
        gateway.url + "/api/version",
        headers={"Authorization": f"Bearer {TOKEN}", LEARNER_HEADER: "somebody-else"},
        verify=gateway.cert,
        timeout=10,
    )
    assert answer.status_code == 200
    assert gateway.proxy.wait_idle()
    seen = [r.headers.get(LEARNER_HEADER) for r in gateway.proxy.requests]
    assert seen == ["tester"]  # the token's name in the map, never the client's word
