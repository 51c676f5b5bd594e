"""Talking to a running kernel: wait for replies, recover from a hang, run one test."""

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

__all__ = ["GRACE", "hidden_lines"]


GRACE = 2.0  # seconds a kernel gets to stop after an interrupt before it is killed


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


async def _ready(km: Any, kc: Any, timeout: float) -> None:
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


async def _recover(km: Any, kc: Any) -> bool:
    """Interrupt a busy kernel; True if it is responsive again within the grace period."""
    from nbclient.exceptions import DeadKernelError

    with contextlib.suppress(Exception):
        await km.interrupt_kernel()
    try:
        return await _wait_reply(km, kc, kc.kernel_info(), GRACE) is not None
    except DeadKernelError:
        return False


async def _run_test(
    km: Any, kc: Any, spec: dict[str, Any], timeout: float, secrets: frozenset[str] = frozenset()
) -> tuple[str, dict[str, Any]]:
    """Run one test in the kernel: ("ok" | "stuck", result). The code travels in the request."""
    from nbclient.exceptions import DeadKernelError

    test = spec["test"]
    result = {
        "name": test["name"],
        "question": spec["question"],
        "points": test["points"],
        "earned": 0.0,
        "hidden": test["hidden"],
        "description": test["description"],
        "hint": "",
    }
    expression = (
        "__import__('labkit.course.checks', fromlist=['grade_test'])"
        f".grade_test({json.dumps(spec)!r}, globals())"
    )
    msg_id = kc.execute(
        "", silent=True, store_history=False, user_expressions={"r": expression}, allow_stdin=False
    )
    try:
        reply = await _wait_reply(km, kc, msg_id, timeout)
        recovered = True
        if reply is None:
            recovered = await _recover(km, kc)
    except DeadKernelError:
        return "stuck", {
            **result,
            "status": "error",
            "message": "The kernel stopped during this test.",
        }
    await _drain(kc)
    if reply is None:
        message = f"The test took longer than {timeout:g} s and was stopped."
        return ("ok" if recovered else "stuck"), {**result, "status": "timeout", "message": message}
    value = reply["content"].get("user_expressions", {}).get("r", {})
    if value.get("status") == "ok":
        try:
            data: dict[str, Any] = json.loads(ast.literal_eval(value["data"]["text/plain"]))
            return "ok", _trusted(result, data, str(test.get("failure_message") or ""), secrets)
        except (ValueError, SyntaxError, KeyError):
            pass
    problem = value.get("ename", "an unreadable answer")
    return "ok", {
        **result,
        "status": "error",
        "message": f"The grader could not run this test ({problem}).",
    }


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
    """The kernel's answer, kept to what learner code cannot turn into a leak.

    The answer comes from the learner's kernel, so any of it could be forged: the test's
    name, points and description come from the key; the status must be a known one and
    the points follow from it; a hidden test's message is one of a few fixed sentences.
    """
    status = data.get("status") if isinstance(data, dict) else None
    status = status if status in _STATUSES else "error"
    earned = result["points"] if status == "passed" else 0.0
    if result["hidden"]:
        message = _HIDDEN_MESSAGES.get(status, "")
        if status == "error":
            found = _ERROR_NAME.fullmatch(str(data.get("message", "")))
            message = f"The hidden test stopped with {found[1] if found else 'an error'}."
        hint = failure_hint if status != "passed" else ""
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
