"""Grading one notebook: run its cells with limits, then every test, across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import pwd
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit.grader.channel import Tester, hidden_lines, recover, wait_ready
from labkit.grader.exercise import Exercise
from labkit.grader.kernels import FLOOD_BYTES, START_ERROR, Kernel, Worker, kernel_classes
from labkit.grader.sandbox import LAUNCHER, box_limits, kernel_env
from labkit.grader.settings import GradingError, Settings, Submission
from labkit.grader.users import grading_user, tester_user

__all__ = [
    "RESTARTS",
    "empty_result",
    "grade_in_worker",
    "init_worker",
]


RESTARTS = 2  # fresh kernels per notebook after one hung or died


_WORKER: Worker | None = None
_TESTER_USER: tuple[int, int, str] | None = None  # who this worker's tests run as


def init_worker(settings: Settings, slots: Any) -> None:
    """Pool initializer: claim a slot, its two users, and start a kernel in advance."""
    global _WORKER, _TESTER_USER
    number = slots.get()
    users = [grading_user(2 * number), grading_user(2 * number + 1)]
    tester = tester_user(number) if settings.options.sandbox else None
    if not settings.options.sandbox:
        me = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
        users = [me, me]
        tester = me
    _WORKER = Worker(settings, users)
    _TESTER_USER = tester
    _WORKER.next = _WORKER.loop.create_task(_WORKER.start_kernel(_WORKER.user()))
    _WORKER.loop.run_until_complete(asyncio.sleep(0.05))  # let the kernel process start
    multiprocessing.util.Finalize(None, _WORKER.close, exitpriority=10)


def grade_in_worker(submission: Submission) -> dict[str, Any]:
    """Pool task: grade one notebook (never raises: problems become its status)."""
    assert _WORKER is not None
    started = time.perf_counter()
    budget = _budget(_WORKER.settings)
    progress: dict[str, Any] = {}  # what the grading got to, kept if its time runs out
    try:
        result = _WORKER.loop.run_until_complete(
            asyncio.wait_for(_grade(_WORKER, submission, progress), budget)
        )
    except asyncio.TimeoutError:  # the notebook's whole budget is spent: keep what it earned
        result = empty_result(_WORKER.settings.exercise, submission, ["gave-up"])
        run: _Run | None = progress.get("run")
        if run is not None:
            result["tests"] = [run.results.get(t["name"], t) for t in result["tests"]]
            result["notes"] = list(run.notes)
            result["status"] = sorted(run.flags | {"gave-up"})
        result["notes"].append(
            f"Grading this notebook took over {budget:.0f} s (--notebook-timeout) and was "
            "stopped; tests that had not run yet earned nothing."
        )
    except Exception as exc:  # one broken notebook must not stop the class
        result = empty_result(_WORKER.settings.exercise, submission, ["grader-error"])
        result["notes"].append(f"The grader failed on this notebook: {type(exc).__name__}: {exc}")
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["uids"] = sorted({u for u, _, _ in _WORKER.users})
    return result


def _budget(settings: Settings) -> float:
    """The most time one notebook may take, all cells, tests and restarts included."""
    return float(settings.options.notebook_timeout)


def empty_result(exercise: Exercise, sub: Submission, status: list[str]) -> dict[str, Any]:
    """A result with every test not run and no points, marked with ``status``."""
    tests = [
        {
            "name": t.name,
            "question": q.name,
            "status": "not-run",
            "points": t.points,
            "earned": 0.0,
            "hidden": t.hidden,
            "description": t.description,
            "message": "This test could not run.",
            "hint": "",
        }
        for q in exercise.graded_questions
        for t in q.tests
    ]
    return {
        "learner": sub.learner,
        "file": sub.path.name,
        "sha256": sub.sha256,
        "status": status,
        "notes": [],
        "tests": tests,
        "executed": None,
    }


async def _grade(worker: Worker, sub: Submission, progress: dict[str, Any]) -> dict[str, Any]:
    import nbformat

    settings = worker.settings
    raw = sub.path.read_bytes()
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(nb)
    except Exception as exc:  # not JSON, not a notebook, not valid: all the same to a learner
        result = empty_result(settings.exercise, sub, ["invalid-notebook"])
        result["notes"].append(
            f"This file is not a valid notebook ({type(exc).__name__}), so nothing could run. "
            "Open it in Jupyter, check it shows your work, save it and submit it again."
        )
        return result
    result = empty_result(settings.exercise, sub, [])
    run = progress["run"] = _Run(nb=nb, tests=_test_specs(settings.exercise))
    kernel = await worker.take_kernel()
    for attempt in range(RESTARTS + 1):
        if attempt:  # the last kernel hung or died: same user, new kernel, new scratch
            kernel = await _fresh(worker, kernel)
        try:
            done = await _run_once(worker, kernel, run, raw)
        except GradingError as exc:  # the kernel itself failed (rare): try a fresh one
            done = False
            run.flags.add("grader-error")
            run.note(-1, str(exc), f"The grader had a problem: {exc}.")
        finally:
            await worker.stop_kernel(kernel)
        if done:
            break
    else:
        run.flags.add("gave-up")
        run.notes.append("The notebook kept hanging or crashing, so some tests did not run.")
    result["tests"] = [run.results.get(t["name"], t) for t in result["tests"]]
    result["status"] = sorted(run.flags)
    result["notes"] = run.notes
    result["executed"] = nbformat.writes(run.nb)  # type: ignore[no-untyped-call]
    return result


async def _fresh(worker: Worker, old: Kernel) -> Kernel:
    """A new kernel for the same notebook (same user; the old one's processes are gone)."""
    user = next(u for u in worker.users if u[0] == old.uid)
    return await worker.start_kernel(user)


@dataclass
class _Run:
    """Progress through one notebook, kept across kernel restarts."""

    nb: Any
    tests: list[dict[str, Any]]
    skip: set[int] = field(default_factory=set)  # cells that hung, flooded or killed the kernel
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    noted: set[tuple[int, str]] = field(default_factory=set)

    def note(self, index: int, kind: str, text: str) -> None:
        """Record what happened in a cell once, even if the notebook is re-run."""
        if (index, kind) not in self.noted:
            self.noted.add((index, kind))
            self.notes.append(text)


def _test_specs(exercise: Exercise) -> list[dict[str, Any]]:
    return [
        {"question": q.name, "placeholders": q.placeholders, "test": asdict(t)}
        for q in exercise.graded_questions
        for t in q.tests
    ]


def _prepare_scratch(settings: Settings, kernel: Kernel, raw: bytes) -> None:
    """Copy in what the notebook may read: itself, its public tests, the exercise's files."""
    files = {"submission.ipynb": raw, f"tests/{settings.exercise.name}.json": settings.public_tests}
    for source, target in settings.extra_files:
        with contextlib.suppress(OSError):
            files[target] = Path(source).read_bytes()
    for rel, content in files.items():
        path = kernel.scratch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if settings.options.sandbox:  # the learner's files belong to the grading user
            for part in [Path(rel), *Path(rel).parents]:
                if part != Path("."):
                    os.chown(kernel.scratch / part, kernel.uid, kernel.gid)


async def _run_once(worker: Worker, kernel: Kernel, run: _Run, raw: bytes) -> bool:
    """Run the notebook's cells, then the tests not run yet; False if the kernel got stuck."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    settings = worker.settings
    secrets = hidden_lines(run.tests)
    _prepare_scratch(settings, kernel, raw)
    _, client_class = kernel_classes()
    client = client_class(
        run.nb,
        kernel.km,
        timeout=max(1, round(settings.options.timeout)),
        interrupt_on_timeout=False,
        allow_errors=True,
        record_timing=False,
        startup_timeout=60,
        iopub_timeout=4,
        raise_on_iopub_timeout=False,
        kernel_name="python3",
    )
    kc = client.kc = kernel.km.client()
    kc.allow_stdin = False
    kc.start_channels()
    try:
        await wait_ready(kernel.km, kc, 60.0)
    except DeadKernelError as exc:
        why = kernel.scratch / START_ERROR
        detail = why.read_text().strip().splitlines()[-1] if why.exists() else "no reason left"
        raise GradingError(f"the kernel stopped while starting ({detail})") from exc
    before = asyncio.all_tasks()  # tasks started from here on are this run's to clean up
    tester: Tester | None = None
    try:
        # Started now, it loads its modules while the notebook's cells run.
        tester = await _start_tester(settings, kernel, kc)
        # Once a hidden test has called the learner's code (a re-run after a crash), a
        # cell's error text could carry what that call was given: only its name is kept.
        hidden_seen = any(r.get("hidden") for r in run.results.values())
        for index, cell in enumerate(run.nb.cells):
            if cell.cell_type != "code" or index in run.skip:
                continue
            label = _cell_label(index, cell.source)
            outcome = "ok"
            try:
                await client.async_execute_cell(cell, index)
            except CellTimeoutError:
                outcome = "timeout"
            except DeadKernelError:
                # nbclient reports any cancellation of a running cell as a dead kernel:
                # when the notebook's time is up (--notebook-timeout), stop, do not re-run.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                outcome = "died"
            if index in client.flooded:  # checked first: a flood often ends in a timeout
                run.skip.add(index)
                run.flags.add("output-limit")
                kept = f"{label} printed more than {FLOOD_BYTES // 1000} kB; the rest was not kept."
                run.note(index, "flood", kept)
            if outcome == "died":
                run.skip.add(index)
                run.flags.add("kernel-died")
                died = f"{label} made the kernel stop (crash or exit); the notebook was re-run without it."
                run.note(index, "died", died)
                return False
            if outcome == "timeout":
                run.skip.add(index)
                run.flags.add("timeout")
                slow = f"{label} ran longer than {settings.options.timeout:g} s and was stopped."
                run.note(index, "timeout", slow)
                if not await recover(kernel.km, kc):
                    return False
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error" and out.get("ename") != "KeyboardInterrupt":
                    run.flags.add("cell-errors")
                    evalue = None if hidden_seen else out.get("evalue")
                    message = ": ".join(filter(None, [out.get("ename"), evalue]))[:300]
                    run.note(index, "error", f"{label} raised {message}")
        # Public tests first: a message a learner's code shapes can only reach its own
        # feedback before any hidden test has called it.
        for spec in sorted(run.tests, key=lambda t: bool(t["test"]["hidden"])):
            name = spec["test"]["name"]
            if name in run.results:
                continue
            if tester is None:
                tester = await _start_tester(settings, kernel, kc)
            outcome, value = await tester.run(spec, settings.options.timeout, secrets)
            run.results[name] = value
            if outcome == "tester-lost":
                tester = None  # stopped already: the next test gets a new one
            elif outcome != "ok":
                return False
        return True
    finally:
        if tester is not None:
            await tester.close()
        await _settle(before | {worker.next})
        with contextlib.suppress(Exception):
            kc.stop_channels()


async def _start_tester(settings: Settings, kernel: Kernel, kc: Any) -> Tester:
    """Start the process that runs the tests beside ``kernel`` (as its own user)."""
    assert _TESTER_USER is not None
    uid, gid, name = _TESTER_USER
    # Its folder is in the kernel's scratch: a file a test makes there (a log path it
    # hands to the learner's function) is at the same path for both.
    home = kernel.scratch / ".tester"
    home.mkdir(mode=0o777, exist_ok=True)
    os.chmod(home, 0o777)
    env = kernel_env(settings, home, name)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-I", "-m", "labkit.grader.tester"]
    if settings.options.sandbox:
        os.chown(home, uid, gid)
        os.chmod(kernel.scratch, 0o711)  # the tester may pass through, not list
        spec = {
            "uid": uid,
            "gid": gid,
            "cwd": str(home),
            "covers": [],
            "chown": [],
            "limits": box_limits(settings, False),  # its own memory cap, no kernel's cgroup
            "join": kernel.box_pid,
        }
        command = [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec), *command]
    return await Tester.start(kernel.km, kc, command, env, str(home))


async def _settle(keep: set[Any]) -> None:
    """Cancel what nbclient left waiting (e.g. on a cell that timed out)."""
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and t not in keep]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


def _cell_label(index: int, source: str) -> str:
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:49] + "…"
    return f"Cell {index + 1} (`{first}`)"
