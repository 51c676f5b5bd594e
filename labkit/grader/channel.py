"""Talking to a running kernel and its tester: replies, recovery from a hang, one test."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import queue
import re
import time
from typing import Any

from labkit.grader.settings import GradingError

__all__ = [
    "GRACE",
    "MAX_LINE",
    "Tester",
    "hidden_lines",
    "recover",
    "wait_ready",
]


GRACE = 2.0  # seconds a kernel gets to stop after an interrupt before it is killed


MAX_LINE = 64 * 1024 * 1024  # bytes of one message between the grader and its tester


STARTUP = 60.0  # seconds a tester may take to start (the notebook's cells run meanwhile)


async def _wait_reply(km: Any, kc: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    """The shell reply to ``msg_id``, or None after ``timeout`` seconds."""
    from nbclient.exceptions import DeadKernelError

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            # wait_for as well: a receive must never outlive its deadline, whatever happens
            wait = min(remaining, 1.0)
            msg: dict[str, Any] = await asyncio.wait_for(kc.get_shell_msg(timeout=wait), wait + 1)
        except (queue.Empty, asyncio.TimeoutError):
            if not await km.is_alive():
                raise DeadKernelError("Kernel died") from None
            continue
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg


async def wait_ready(km: Any, kc: Any, timeout: float) -> None:
    """Wait until the kernel answers on its shell and its output reaches us.

    Output is published to whoever listens at that moment, so a cell run before our output
    channel is connected would lose its output. The kernel announces "idle" after every
    request; once we see that for our own request, nothing will be lost.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        if await _wait_reply(km, kc, msg_id, min(5.0, deadline - time.monotonic())) is None:
            continue
        seen_by = time.monotonic() + 0.5
        while time.monotonic() < seen_by:
            try:
                msg = await asyncio.wait_for(kc.get_iopub_msg(timeout=0.1), 1.0)
            except (queue.Empty, asyncio.TimeoutError):
                continue
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            if idle and msg.get("parent_header", {}).get("msg_id") == msg_id:
                return
    raise GradingError(f"the kernel did not become ready in {timeout:g} s")


async def recover(km: Any, kc: Any) -> bool:
    """Interrupt a busy kernel; True if it is responsive again within the grace period."""
    from nbclient.exceptions import DeadKernelError

    with contextlib.suppress(Exception):
        await km.interrupt_kernel()
    try:
        return await _wait_reply(km, kc, kc.kernel_info(), GRACE) is not None
    except DeadKernelError:
        return False


class Tester:
    """The tester process beside one kernel (``labkit.grader.tester``), driven from here.

    The tests travel to the tester only; the kernel receives nothing but the calls a test
    makes (a function's name and plain values), answered by ``labkit.grader.bridge``.
    """

    def __init__(self, process: Any, km: Any, kc: Any) -> None:
        self.process = process
        self.km = km
        self.kc = kc
        self.kernel_lost = False  # the kernel died or could not be interrupted
        self.kernel_died = False  # it died (a crash or an exit in the learner's code)
        self.ready = False  # it has started and said so

    @classmethod
    async def start(
        cls, km: Any, kc: Any, command: list[str], env: dict[str, str], cwd: str
    ) -> Tester:
        """Start the tester process (it waits for tests on its standard input)."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            limit=MAX_LINE,
        )
        return cls(process, km, kc)

    async def close(self) -> None:
        """Stop the tester (its tests are over, or it hung)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 5)

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def run(
        self, spec: dict[str, Any], timeout: float, secrets: frozenset[str] = frozenset()
    ) -> tuple[str, dict[str, Any]]:
        """Run one test: ("ok" | "stuck" | "tester-lost", its result).

        "stuck": the kernel died or did not answer an interrupt, so the notebook must run
        again in a fresh kernel; "tester-lost": the tester hung or died and was stopped.
        """
        test = spec["test"]
        base = {
            "name": test["name"],
            "question": spec["question"],
            "points": test["points"],
            "earned": 0.0,
            "hidden": test["hidden"],
            "description": test["description"],
            "hint": "",
        }
        try:
            if not self.ready:  # a busy machine may take seconds to start Python
                assert self.process.stdout is not None
                line = await asyncio.wait_for(self.process.stdout.readline(), STARTUP)
                if json.loads(line or b"{}").get("op") != "ready":
                    raise ConnectionError("the tester did not start")
                self.ready = True
            deadline = time.monotonic() + timeout
            await self._send({"op": "test", "spec": spec})
            while True:
                # The tester's own code (a fake server, a loop) has the same limit as a call.
                wait = max(0.0, deadline - time.monotonic()) + GRACE
                assert self.process.stdout is not None
                line = await asyncio.wait_for(self.process.stdout.readline(), wait)
                if not line:
                    raise ConnectionError("the tester stopped")
                message = json.loads(line)
                if message.get("op") == "kernel":
                    await self._send(await self._kernel_call(message.get("request"), deadline))
                    continue
                data = message.get("result") if message.get("op") == "result" else None
                failure = str(test.get("failure_message") or "")
                result = _trusted(base, data, failure, secrets)
                if result["status"] == "timeout":
                    result["message"] = f"The test took longer than {timeout:g} s and was stopped."
                elif self.kernel_died and result["status"] != "passed":
                    result = {**result, "status": "error"}
                    result["message"] = "The kernel stopped during this test."
                return ("stuck" if self.kernel_lost else "ok"), result
        except (asyncio.TimeoutError, ConnectionError, ValueError, OSError) as exc:
            await self.close()
            timed_out = isinstance(exc, asyncio.TimeoutError)
            message = (
                f"The test took longer than {timeout:g} s and was stopped."
                if timed_out
                else "The grader could not run this test (its test process stopped)."
            )
            status = "timeout" if timed_out else "error"
            return "tester-lost", {**base, "status": status, "message": message}

    async def _kernel_call(self, request: Any, deadline: float) -> dict[str, Any]:
        """Pass one call to the kernel's bridge; the answer for the tester."""
        from nbclient.exceptions import DeadKernelError

        if self.kernel_lost:
            return {"op": "reply", "error": "the notebook's kernel has stopped"}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"op": "reply", "timeout": True}
        expression = (
            "__import__('labkit.grader.bridge', fromlist=['serve'])"
            f".serve({json.dumps(request)!r}, globals())"
        )
        msg_id = self.kc.execute(
            "",
            silent=True,
            store_history=False,
            user_expressions={"r": expression},
            allow_stdin=False,
        )
        try:
            reply = await _wait_reply(self.km, self.kc, msg_id, remaining)
            if reply is None:
                self.kernel_lost = not await recover(self.km, self.kc)
                return {"op": "reply", "timeout": True}
        except DeadKernelError:
            self.kernel_lost = self.kernel_died = True
            return {"op": "reply", "error": "the notebook's kernel stopped during this call"}
        finally:
            await _drain(self.kc)
        value = reply["content"].get("user_expressions", {}).get("r", {})
        if value.get("status") == "ok":
            text = value.get("data", {}).get("text/plain", "")
            if isinstance(text, str) and len(text) <= MAX_LINE // 2:
                with contextlib.suppress(ValueError, SyntaxError, MemoryError):
                    answer = ast.literal_eval(text)
                    if isinstance(answer, str):
                        return {"op": "reply", "answer": answer}
        if value.get("ename") == "KeyboardInterrupt":
            return {"op": "reply", "timeout": True}
        problem = str(value.get("ename", "an unreadable answer"))[:40]
        return {"op": "reply", "error": f"the notebook's kernel could not answer ({problem})"}


async def _drain(kc: Any) -> None:
    """Throw away output the tests printed (the grader keeps only results)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(kc.get_iopub_msg(timeout=0), 1.0)
        except (queue.Empty, asyncio.TimeoutError):
            return


_STATUSES = {"passed", "failed", "error", "not-implemented", "timeout"}
_HIDDEN_MESSAGES = {
    "failed": "A hidden check failed.",
    "not-implemented": "This question is not implemented yet.",
    "timeout": "The test took too long and was stopped.",
}
_ERROR_NAME = re.compile(r"The hidden test stopped with ([A-Za-z][A-Za-z0-9]{0,39})\.")


def _trusted(
    result: dict[str, Any], data: Any, failure_hint: str, secrets: frozenset[str]
) -> dict[str, Any]:
    """The tester's verdict, with its wording kept to what cannot carry a leak.

    The verdict is the tester's, but a message may quote values the learner's code chose:
    the test's name, points and description come from the key; the points follow from the
    status; a hidden test's message is one of a few fixed sentences, and what really went
    wrong goes to ``detail``, which only the instructor sees.
    """
    data = data if isinstance(data, dict) else {}
    status = data.get("status")
    status = status if status in _STATUSES else "error"
    earned = result["points"] if status == "passed" else 0.0
    if result["hidden"]:
        message = _HIDDEN_MESSAGES.get(status, "")
        if status == "error":
            found = _ERROR_NAME.fullmatch(str(data.get("message", "")))
            message = f"The hidden test stopped with {found[1] if found else 'an error'}."
        hint = failure_hint if status != "passed" else ""
        detail = str(data.get("detail") or data.get("message") or "")[:1000]
        if status != "passed" and detail:
            result = {**result, "detail": detail}
    else:
        message = str(data.get("message", ""))[:600]
        hint = str(data.get("hint", ""))[:600]
        if _quotes(message + "\n" + hint, secrets):  # code stolen from a hidden test earlier
            message, hint = "This test's message quoted hidden test code and was withheld.", ""
    return {**result, "status": status, "earned": earned, "message": message, "hint": hint}


def hidden_lines(tests: list[dict[str, Any]]) -> frozenset[str]:
    """Lines only hidden tests have, long enough to recognise when a message quotes one."""
    hidden: set[str] = set()
    shown: set[str] = set()
    for spec in tests:
        test = spec["test"]
        lines = {x.strip() for x in str(test["code"]).splitlines()}
        (hidden if test["hidden"] else shown).update(lines)
    return frozenset(x for x in hidden - shown if len(x) >= 12)


def _quotes(text: str, secrets: frozenset[str]) -> bool:
    return any(line in text for line in secrets)
