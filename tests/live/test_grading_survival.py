"""A grading run survives what happens to it: a dead worker, and `labkit grade` itself killed.

Each test grades a small class of the toy exercise through `labkit grade` in a child
process and kills from outside what a notebook cannot reach from its sandbox: the worker
grading one notebook, found as the ancestor of a marker process the notebook starts, or the
command itself. The rows of every other learner must be written all the same.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from processes import processes

from labkit import discovery
from labkit.grader import assign, report

DATA = Path(__file__).resolve().parents[1] / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"
TOY_CLASS = DATA / "submissions" / "toy"
LABKIT = Path(sys.executable).parent / "labkit"
WAIT = 600.0  # seconds a step may take before the test stops waiting (not a goal)


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A course folder with the toy exercise assigned (grading needs root)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the grading sandbox needs root on Linux, and CI runs as root")
        pytest.skip("the grading sandbox needs root on Linux: run as root to test it")
    root = tmp_path / "course"
    assign.assign([TOY], root, say=False)
    return root


def _marked(source: Path, target: Path, token: str, seconds: float) -> None:
    """``source`` with a cell that starts a process named ``token`` and waits ``seconds``."""
    nb = nbformat.read(str(source), as_version=4)
    code = (
        "import subprocess, sys, time\n"
        f"marker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {token!r}])\n"
        f"time.sleep({seconds})\n"
        "marker.kill()"
    )
    nb.cells.insert(3, nbformat.v4.new_code_cell(code))  # type: ignore[no-untyped-call]
    nbformat.write(nb, str(target))


def _class(folder: Path, token: str, marked: str, seconds: float) -> None:
    folder.mkdir()
    for name in ("perfect", "partial", "untouched"):
        shutil.copy(TOY_CLASS / f"{name}.ipynb", folder)
    _marked(TOY_CLASS / "perfect.ipynb", folder / f"{marked}.ipynb", token, seconds)


def _worker_of(marker: int, grader: int, table: dict[int, tuple[int, str]]) -> int | None:
    """The grading worker above ``marker``: the process whose grandparent is the grader.

    Workers are forked by multiprocessing's fork server, a child of the grader.
    """
    pid = marker
    while pid in table and pid > 1:
        parent = table[pid][0]
        if table.get(parent, (0, ""))[0] == grader:
            return pid
        pid = parent
    return None


def _grade(subs: Path, root: Path, rt: discovery.Runtime, *more: str) -> subprocess.Popen[str]:
    args = [str(LABKIT), "grade", str(subs), "--exercise", "toy", "--root", str(root)]
    args += ["--quiet", "--workers", "2", "--timeout", "30", "--runtime", rt.url, *more]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_workers_of_markers(
    grader: subprocess.Popen[str], token: str, kills: int
) -> tuple[list[int], str]:
    """While the grader runs, kill the worker under each marker, ``kills`` times at most.

    Returns the markers seen (one per attempt at the marked notebook) and what it printed.
    """
    seen: list[int] = []
    while grader.poll() is None:
        table = processes()
        for pid, (_, cmdline) in table.items():
            if token in cmdline and "sleep" in cmdline and pid not in seen:
                worker = _worker_of(pid, grader.pid, table)
                if worker is None:
                    continue  # not placed yet: look again
                seen.append(pid)
                if len(seen) <= kills:
                    os.kill(worker, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            grader.wait(0.05)
    printed = grader.stdout.read() if grader.stdout else ""
    return seen, printed


def _wait_for_marker(grader: subprocess.Popen[str], token: str) -> tuple[int, int, int]:
    """The marker process, the kernel that started it and the worker above them."""
    while grader.poll() is None:
        table = processes()
        for pid, (parent, cmdline) in table.items():
            if token in cmdline and "sleep" in cmdline:
                worker = _worker_of(pid, grader.pid, table)
                if worker is not None:
                    return pid, parent, worker
        with contextlib.suppress(subprocess.TimeoutExpired):
            grader.wait(0.05)
    raise AssertionError("the marked notebook never ran: " + (grader.communicate()[0] or ""))


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["learner"]: r for r in csv.DictReader((out / "gradebook.csv").open())}


def _state(out: Path) -> dict[str, Any]:
    """The results a next run would reuse: the state and the rows added to it since."""
    key = json.loads((out / report.STATE).read_text())["key"]
    return report.previous_results(out, key)


def _untouched_and_others_are_graded(rows: dict[str, dict[str, str]]) -> None:
    got = {name: (rows[name]["total"], rows[name]["status"]) for name in rows}
    assert got["perfect"] == ("7", "ok")
    assert got["partial"] == ("4", "ok")
    assert got["untouched"] == ("0", "untouched")


def test_a_killed_worker_costs_its_notebook_one_retry(
    course: Path, tmp_path: Path, rt: Any
) -> None:
    token = f"labkit-survival-{uuid.uuid4().hex}"
    subs = tmp_path / "class"
    _class(subs, token, "victim", seconds=4)
    grader = _grade(subs, course, rt)
    seen, printed = _kill_workers_of_markers(grader, token, kills=1)
    assert grader.returncode == 0, printed
    assert len(seen) == 2  # the first attempt, killed; one retry in a fresh worker
    rows = _rows(tmp_path / "class-grades")
    assert set(rows) == {"perfect", "partial", "untouched", "victim"}
    _untouched_and_others_are_graded(rows)
    assert (rows["victim"]["total"], rows["victim"]["status"]) == ("7", "ok")
    victim = _state(tmp_path / "class-grades")["victim"]
    assert victim["attempts"] == 2
    assert "grading worker stopped (exit code -9)" in victim["retried"][0]
    notes = (tmp_path / "class-grades" / "instructor" / "victim.md").read_text()
    assert "Graded in 2 attempt(s)" in notes and "exit code \\-9" in notes
    feedback = (tmp_path / "class-grades" / "feedback" / "victim.md").read_text()
    assert "worker" not in feedback  # the grader's trouble is not the learner's
    assert "Graded 4 notebook(s)" in printed


def test_a_notebook_the_grader_keeps_failing_on_is_graded_again_next_run(
    course: Path, tmp_path: Path, rt: Any
) -> None:
    token = f"labkit-survival-{uuid.uuid4().hex}"
    subs = tmp_path / "class"
    _class(subs, token, "victim", seconds=4)
    grader = _grade(subs, course, rt)
    seen, printed = _kill_workers_of_markers(grader, token, kills=2)
    assert grader.returncode == 0, printed
    assert len(seen) == 2  # killed twice: no third try in this run
    rows = _rows(tmp_path / "class-grades")
    _untouched_and_others_are_graded(rows)
    assert (rows["victim"]["total"], rows["victim"]["status"]) == ("0", "grader-error")
    assert "grade again to try once more" in rows["victim"]["notes"]
    # Nothing changed, and no --regrade: only the row the grader failed on is graded again.
    again = _grade(subs, course, rt)
    seen, printed = _kill_workers_of_markers(again, token, kills=0)
    assert again.returncode == 0, printed
    assert "Graded 1 notebook(s), reused 3 unchanged" in printed
    rows = _rows(tmp_path / "class-grades")
    assert (rows["victim"]["total"], rows["victim"]["status"]) == ("7", "ok")
    _untouched_and_others_are_graded(rows)


def test_a_killed_grade_command_keeps_its_rows(course: Path, tmp_path: Path, rt: Any) -> None:
    token = f"labkit-survival-{uuid.uuid4().hex}"
    subs = tmp_path / "class"
    _class(subs, token, "zz-slow", seconds=300)  # graded last (one worker, name order)
    out = tmp_path / "class-grades"
    grader = _grade(subs, course, rt, "--workers", "1", "--timeout", "400")
    marker, kernel, worker = _wait_for_marker(grader, token)
    grader.send_signal(signal.SIGKILL)  # mid-notebook: no chance to tidy up
    grader.wait(WAIT)
    # What was graded before the kill is in the gradebook, its feedback written.
    rows = _rows(out)
    _untouched_and_others_are_graded(rows)
    assert rows["zz-slow"]["status"] == "pending"
    assert sorted(_state(out)) == ["partial", "perfect", "untouched"]
    assert (out / "feedback" / "perfect.md").exists()
    # The next run grades only what is missing, and clears what the killed run left running.
    shutil.copy(TOY_CLASS / "perfect.ipynb", subs / "zz-slow.ipynb")
    again = _grade(subs, course, rt)
    _, printed = _kill_workers_of_markers(again, token, kills=0)
    assert again.returncode == 0, printed
    assert "Graded 1 notebook(s), reused 3 unchanged" in printed
    rows = _rows(out)
    _untouched_and_others_are_graded(rows)
    assert (rows["zz-slow"]["total"], rows["zz-slow"]["status"]) == ("7", "ok")
    left = processes()
    assert marker not in left and kernel not in left and worker not in left
