"""Grading on a Dask cluster gives what grading on one machine gives, and survives the same.

One `LocalCluster` of two worker processes (one thread each) stands for two machines. Its
workers find the course through $LABKIT_COURSE: a copy of the instructor's course at
another path, as a worker machine holds one. Part of the toy class is graded once on this
machine and once on the cluster; every file of the results must be the same, the seconds
and the grading users' ids aside. Then: a grading process killed under a Dask worker costs
its notebook one retry; a worker without the course, and a scheduler that is down, each
stop the run with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from needs import needs_root
from processes import processes

from labkit import discovery
from labkit.errors import GradingError
from labkit.grader import assign, distributed, grading, report, run

DATA = Path(__file__).resolve().parents[1] / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"
TOY_CLASS = DATA / "submissions" / "toy"
# Notebooks that pass, fail, crash, are not notebooks or are left as handed out, one whose
# grading worker is killed, and folder entries that are not graded: each a different path
# through the grader (a kernel that dies is the grading process's business, the same here
# and there, and the costliest notebook of the toy class: left out).
LEARNERS = ("perfect", "partial", "untouched", "crash", "invalid", "victim")
ENTRIES = ("dup", "dup.ipynb", "twobooks", "notes.txt")
TIMEOUT = 5.0  # seconds per cell
MARK = f"labkit-dask-{uuid.uuid4().hex}"  # in the command line of the victim's marker process


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The instructor's course, and a copy of it where the workers look (another machine's)."""
    needs_root("grading on a cluster (the sandbox)")
    pytest.importorskip(
        "distributed", reason="install the [class] extra: pip install -e '.[class]'"
    )
    base = tmp_path_factory.mktemp("dask")
    root = base / "course"
    assign.assign([TOY], root, say=False)
    workers = base / "worker-course"
    shutil.copytree(root, workers)
    subs = base / "class"
    subs.mkdir()
    for name in LEARNERS[:-1]:
        shutil.copy(TOY_CLASS / f"{name}.ipynb", subs)
    # The victim starts a marker process, so that the test can find and kill its grader.
    nb = nbformat.read(str(TOY_CLASS / "perfect.ipynb"), as_version=4)
    wait = (
        "import subprocess, sys, time\n"
        f"m = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {MARK!r}])\n"
        "time.sleep(4)\n"
        "m.kill()"
    )
    nb.cells.insert(3, nbformat.v4.new_code_cell(wait))  # type: ignore[no-untyped-call]
    nbformat.write(nb, str(subs / "victim.ipynb"))
    for name in ENTRIES:
        source = TOY_CLASS / name
        if source.is_dir():
            shutil.copytree(source, subs / name)
        else:
            shutil.copy(source, subs / name)
    return {"root": root, "workers": workers, "subs": subs, "base": base}


@pytest.fixture(scope="module")
def cluster(course: dict[str, Path]) -> Iterator[Any]:
    """Two worker processes, one notebook at a time each, with their own course folder."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: 8787 may be taken
        env={distributed.COURSE_VARIABLE: str(course["workers"])},
    ) as local:
        yield local


def _grade(
    course: dict[str, Path],
    out: Path,
    rt: discovery.Runtime,
    scheduler: str = "",
    subs: Path | None = None,
) -> grading.GradeReport:
    options = grading.GradeOptions(
        workers=2, timeout=TIMEOUT, progress=False, scheduler=scheduler, regrade=True
    )
    return grading.grade(
        subs or course["subs"],
        assign.load_key(course["root"] / "grading/hidden/toy.json"),
        out,
        options,
        runtime_url=rt.url,
        key_path=course["root"] / "grading/hidden/toy.json",
        root=course["root"],
        say=lambda _: None,
        cluster=distributed.Cluster if scheduler else None,
    )


MACHINE_FIELDS = ("seconds", "uids")  # how long it took and which user ran it: per machine


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a results folder, the state without the per-machine fields."""
    found = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != report.STATE:
            found[str(path.relative_to(out))] = path.read_bytes()
    state = json.loads((out / report.STATE).read_text())
    for result in state["results"].values():
        for field in MACHINE_FIELDS:
            result.pop(field, None)
    found[report.STATE] = json.dumps(state, sort_keys=True).encode()
    return found


def _grader_above(pid: int, table: dict[int, tuple[int, str]]) -> int | None:
    """The grading worker above a marker process: the pool's or a Dask worker's.

    Locally, workers are forked by the fork server, a child of this process. On the cluster
    it is the topmost process with the grading process's command line (its kernels are
    forked from it and keep that command line).
    """
    found = None
    while pid in table and pid > 1:
        parent = table[pid][0]
        if table.get(parent, (0, ""))[0] == os.getpid():
            return pid
        if "labkit.grader.distributed" in table[pid][1]:
            found = pid
        pid = parent
    return found


@contextlib.contextmanager
def _kill_the_victims_grader_once() -> Iterator[list[int]]:
    """While the block runs, kill the grading worker of the victim's first attempt."""
    markers: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            table = processes()
            for pid, (_, cmdline) in table.items():
                if MARK in cmdline and "sleep" in cmdline and pid not in markers:
                    grader = _grader_above(pid, table)
                    if grader is None:
                        continue  # not placed yet: look again
                    markers.append(pid)
                    if len(markers) == 1:
                        os.kill(grader, signal.SIGKILL)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield markers
    finally:
        done.set()
        watcher.join(5)


def test_a_cluster_grades_a_class_as_one_machine_does(
    course: dict[str, Path], cluster: Any, rt: discovery.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _kill_the_victims_grader_once() as markers:
        local = _grade(course, course["base"] / "local", rt)
    assert len(markers) == 2  # the killed attempt, and one retry
    journaled: list[float] = []
    append = run.append_journal

    def timed(out: Path, key_hash: str, result: dict[str, Any]) -> None:
        journaled.append(time.monotonic())
        append(out, key_hash, result)

    monkeypatch.setattr(run, "append_journal", timed)
    with _kill_the_victims_grader_once() as markers:
        on_cluster = _grade(course, course["base"] / "dask", rt, cluster.scheduler_address)
    assert len(markers) == 2
    ended = time.monotonic()
    assert sorted(on_cluster.graded) == sorted(local.graded) == sorted(LEARNERS)
    mine, theirs = _files(course["base"] / "local"), _files(course["base"] / "dask")
    assert sorted(mine) == sorted(theirs)
    differ = [name for name in mine if mine[name] != theirs[name]]
    assert differ == []
    # The toy class's statuses, so the comparison is of a class that exercised the grader.
    status = {r["learner"]: r["status"] for r in on_cluster.results}
    assert status["perfect"] == [] and status["untouched"] == ["untouched"]
    assert status["crash"] == ["cell-errors"] and status["invalid"] == ["invalid-notebook"]
    assert on_cluster.result("perfect")["total"] == 7
    # The victim's grader was killed once: one more try, in a fresh grading process.
    victim = on_cluster.result("victim")
    assert (victim["total"], victim["status"], victim["attempts"]) == (7, [], 2)
    assert "grading worker stopped (exit code -9)" in victim["retried"][0]
    # Each row was written when its result came, not all at the end.
    assert len(journaled) == len(LEARNERS)
    assert journaled[0] < ended - 1.0
    assert journaled[-1] - journaled[0] > 1.0


def test_a_worker_without_the_course_stops_the_run_before_grading(
    course: dict[str, Path], cluster: Any, rt: discovery.Runtime
) -> None:
    out = course["base"] / "no-course"
    aside = course["workers"].with_name("worker-course-away")
    course["workers"].rename(aside)
    try:
        with pytest.raises(GradingError) as caught:
            _grade(course, out, rt, cluster.scheduler_address)
    finally:
        aside.rename(course["workers"])
    message = str(caught.value)
    assert "Nothing was graded" in message and "LABKIT_COURSE" in message
    assert message.count("\n  - tcp://") == 2  # both workers are named
    assert not out.exists()  # checked before anything was written


def test_a_scheduler_that_is_down_is_named(
    course: dict[str, Path], rt: discovery.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributed, "CONNECT_SECONDS", 2.0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    with pytest.raises(GradingError, match="No Dask scheduler answers at") as caught:
        _grade(course, course["base"] / "down", rt, address)
    assert "dask scheduler" in str(caught.value)
    assert not (course["base"] / "down").exists()
