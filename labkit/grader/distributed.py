"""Grading a class on a Dask cluster: each worker machine grades with its own runtime and box.

``labkit grade SUBMISSIONS/ --exercise 03 --scheduler tcp://HOST:8786`` sends each notebook
to the cluster as one task. The instructor's process keeps everything else, as in a run on
one machine: which notebooks to grade, the checks of every result, the gradebook, the
journal, the feedback, and the one retry a notebook gets when the worker grading it dies.

On a worker machine a task does what the local pool does for one notebook: a grading
process of the grader's own (started by the Dask worker, one per Dask thread, kept for the
run) grades it in a sandboxed kernel on that machine's runtime, through that machine's
reply cache. The grading process sits under the Dask worker rather than inside it so that
a notebook that brings its grader down costs that notebook one more try, exactly as on one
machine, while the Dask worker and its other tasks carry on.

A worker grades from its own course folder (``$LABKIT_COURSE``, else the instructor's
``--root`` path, else the folder of its labkit package), and only if that folder holds the
same key (or master), the same exercise files and the same labkit as the instructor's:
otherwise the run stops before anything is graded and says which worker lacks what.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.grader.exercise import LEARNER_DIR, Exercise, json_bytes, load_key
from labkit.grader.options import GradeOptions
from labkit.grader.settings import SCRATCH_BASE, GradingError, Submission

__all__ = [
    "COURSE_VARIABLE",
    "IDLE_SECONDS",
    "Cluster",
    "Job",
    "check_worker",
    "grade_task",
    "labkit_hash",
    "stop_run",
]


COURSE_VARIABLE = "LABKIT_COURSE"  # a worker's course folder, when it is not found otherwise

CONNECT_SECONDS = 20.0  # to reach the scheduler before saying it is down
WORKERS_SECONDS = 60.0  # for a first worker to join before saying there is none

# A worker's grading processes, reply cache and slots outlive a run that was killed (its
# instructor's process gone, nobody left to stop them): they are stopped after this long
# with no notebook to grade. A later task of the same run starts them again.
IDLE_SECONDS = 120.0


@dataclass(frozen=True)
class Job:
    """What every task of one run carries: what to grade with, and what to check it against."""

    token: str  # this run's name on the workers
    key_hash: str  # sha256 of the exercise's key: a worker's copy must have the same
    exercise_path: str  # the key or master, relative to the course folder (or absolute)
    master: bool  # exercise_path is a master notebook, not a key
    root: str  # the instructor's course folder, absolute
    options: GradeOptions
    runtime_url: str  # "" : each worker finds (or starts) its own runtime
    labkit_hash: str  # the instructor's labkit package, as labkit_hash() sums it up
    files: tuple[tuple[str, str], ...]  # each exercise file the notebook reads, and its sha256


def labkit_hash() -> str:
    """A digest of this labkit package's code: workers grade with the same code, or not at all."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""  # missing on both sides is the same; missing on one is a difference


def _files_base(root: Path, exercise_file: Path, master: bool) -> Path:
    """Where the files a notebook reads sit: next to the master, or the generated exercise."""
    return exercise_file.resolve().parent if master else root / LEARNER_DIR


def _load(path: Path, master: bool) -> Exercise:
    if master:
        from labkit.grader.parse import parse_master

        return parse_master(path).exercise
    return load_key(path)


def _key_hash(exercise: Exercise) -> str:
    return hashlib.sha256(json_bytes(exercise.to_key())).hexdigest()


@dataclass(frozen=True)
class _Course:
    """A worker's copy of the course, checked against the job."""

    root: Path
    exercise_file: Path
    exercise: Exercise


def _where() -> str:
    """This worker, as the instructor knows it: its address and machine."""
    host = socket.gethostname()
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return f"worker {get_worker().address} ({host})"
    return f"a worker on {host}"


def _find_course(job: Job) -> tuple[_Course | None, list[str]]:
    """This worker's course folder for ``job``, or what is wrong with every folder tried."""
    from labkit.grader.sandbox import PROJECT

    chosen = os.environ.get(COURSE_VARIABLE)
    places = [Path(chosen)] if chosen else [Path(job.root), PROJECT]
    tried: list[str] = []
    for root in dict.fromkeys(p.resolve() for p in places):
        path = root / job.exercise_path
        if not path.is_file():
            tried.append(f"{path} does not exist")
            continue
        try:
            exercise = _load(path, job.master)
        except (OSError, LabkitError) as exc:
            tried.append(f"{path} cannot be read ({exc})")
            continue
        if _key_hash(exercise) != job.key_hash:
            tried.append(f"{path} is another version of the exercise than yours")
            continue
        return _Course(root, path, exercise), []
    how = f"${COURSE_VARIABLE}" if chosen else "your --root and its labkit's folder"
    return None, [
        f"no course folder with your {job.exercise_path} (looked in {how}: {'; '.join(tried)}). "
        f"Copy your course folder there (with grading/hidden/), or start `dask worker` with "
        f"{COURSE_VARIABLE}=FOLDER"
    ]


def _problems(job: Job) -> tuple[_Course | None, list[str]]:
    """Why this worker cannot grade ``job`` (nothing: it can), and its course if found."""
    problems = []
    if job.options.sandbox and (sys.platform != "linux" or os.geteuid() != 0):
        problems.append(
            "the grading sandbox needs root on Linux, and this `dask worker` is not root: "
            "start it with sudo (or grade trusted notebooks with --no-sandbox)"
        )
    course, missing = _find_course(job)
    problems += missing
    if labkit_hash() != job.labkit_hash:
        where = Path(__file__).resolve().parents[1]
        problems.append(
            f"its labkit package ({where}) is not the same code as yours: bring that course "
            "folder to your version (git pull, or copy it again), then restart the worker"
        )
    if course is not None:
        base = _files_base(course.root, course.exercise_file, job.master)
        for rel, digest in job.files:
            if _sha256(base / rel) != digest:
                problems.append(f"its {base / rel} is missing or differs from yours: copy yours")
    if job.runtime_url:
        from labkit.discovery import probe

        if probe(job.runtime_url) is None:
            problems.append(f"no model server answers at {job.runtime_url} from that machine")
    return course, problems


def check_worker(job: Job) -> dict[str, Any]:
    """Run on each worker before a class is sent: can it grade ``job``, and what it lacks."""
    try:
        _, problems = _problems(job)
        from labkit.grader.sandbox import box_gaps

        gaps = box_gaps(sandbox=job.options.sandbox) if not problems else []
    except Exception as exc:  # said to the instructor, who cannot see this machine's log
        problems, gaps = [f"checking it failed: {type(exc).__name__}: {exc}"], []
    return {"host": socket.gethostname(), "problems": problems, "gaps": gaps}


class _StartFailed(Exception):
    """A grading process stopped before it was ready."""


@dataclass
class _Process:
    """One grading process of this machine, on a slot of its own."""

    number: int
    slots: Any  # the Slots that hold its number
    popen: subprocess.Popen[bytes]
    conn: Connection
    retired: bool = False


class _Machine:
    """One run's grading on this worker: its settings, reply cache and grading processes."""

    def __init__(self, job: Job) -> None:
        from labkit import discovery
        from labkit.grader.cache import ReplyCache
        from labkit.grader.run import (
            Places,
            kill_abandoned_kernels,
            remove_abandoned_runs,
            worker_settings,
        )

        self.job = job
        self.lock = threading.Lock()
        self.idle: list[_Process] = []
        self.every: list[_Process] = []
        self.busy = 0
        self.last = time.monotonic()
        self.closed = False
        self.checked = False  # the sandbox's preflight, once per machine
        course, problems = _problems(job)
        if problems or course is None:
            raise GradingError("; ".join(problems))
        url = job.runtime_url or discovery.find_runtime(start=True).url
        SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
        remove_abandoned_runs()
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_BASE))
        os.chmod(self.run_dir, 0o711)
        (self.run_dir / "owner.pid").write_text(str(os.getpid()))
        # Notebooks arrive here, hidden from kernels as the submissions folder is at home.
        self.inbox = self.run_dir / "submissions"
        self.inbox.mkdir(mode=0o700)
        self.replies = ReplyCache(url) if job.options.cache else None
        key_path = None if job.master else course.exercise_file
        master_path = course.exercise_file if job.master else None
        places = Places(self.inbox, self.run_dir / "results", key_path, master_path, course.root)
        try:
            self.settings = worker_settings(
                course.exercise, job.options, url, places, self.run_dir, self.replies
            )
            if job.options.sandbox:
                kill_abandoned_kernels()
        except BaseException:
            self._tidy()
            raise
        # Processes are started from one thread that lives as long as this run here: a
        # grading process dies with the thread that started it (PR_SET_PDEATHSIG).
        self.launcher = concurrent.futures.ThreadPoolExecutor(1, "labkit-grading-launcher")

    def grade(self, sub: Submission, notebook: bytes) -> tuple[str, Any]:
        """Grade one notebook: ("result", its result) or ("died", what stopped its grader)."""
        try:
            process = self._take()
            folder = Path(tempfile.mkdtemp(dir=self.inbox))
            try:
                sub.path = folder / sub.path.name
                sub.path.write_bytes(notebook)
                return self._ask(process, sub)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            with self.lock:
                self.busy -= 1
                self.last = time.monotonic()

    def _take(self) -> _Process:
        """An idle grading process, or a new one (a few tries, as the local pool allows)."""
        from labkit.grader.run import START_FAILURES

        with self.lock:
            if self.idle:
                return self.idle.pop()
        failures: list[str] = []
        while True:
            try:
                return self._start()
            except _StartFailed as exc:
                failures.append(str(exc))
                if len(failures) >= START_FAILURES:
                    raise GradingError(
                        f"Grading processes stopped while starting ({failures[-1]}); see the "
                        "Dask worker's log, fix the cause and grade again."
                    ) from exc

    def _start(self) -> _Process:
        """Start a grading process on a slot of its own and wait until it is ready."""
        from labkit.grader.run import STUCK_GRACE, slot_uids
        from labkit.grader.sandbox import preflight
        from labkit.grader.users import Slots, grading_user, kill_user_processes

        if self.closed:
            raise GradingError("this run was stopped on this worker")
        slots = Slots(1)
        number = slots.numbers[0]
        ours, theirs = socket.socketpair()
        popen = None
        try:
            if self.job.options.sandbox:
                kill_user_processes(slot_uids(number))
                with self.lock:
                    if not self.checked:
                        preflight(self.settings, grading_user(2 * number))
                        self.checked = True
            # -I: the labkit installed for this Python, never a folder of the worker's cwd.
            command = [sys.executable, "-I", "-m", __name__, str(theirs.fileno())]
            fds = (theirs.fileno(),)
            popen = self.launcher.submit(subprocess.Popen, command, pass_fds=fds).result()
            theirs.close()
            conn = Connection(ours.detach())
            process = _Process(number, slots, popen, conn)
            with self.lock:
                self.every.append(process)
            conn.send((self.settings, number))
            limit = time.monotonic() + 2 * self.job.options.notebook_timeout + STUCK_GRACE
            while time.monotonic() < limit:
                if conn.poll(1.0):
                    kind, payload = conn.recv()
                    if kind == "ready":
                        return process
                    raise _StartFailed(str(payload))
                if popen.poll() is not None:
                    raise _StartFailed(f"exit code {popen.returncode}")
            raise _StartFailed("it did not get ready in time")
        except (EOFError, OSError) as exc:
            self._retire_started(popen, slots)
            raise _StartFailed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._retire_started(popen, slots)
            raise
        finally:
            theirs.close()
            ours.close()  # nothing, once its descriptor belongs to the connection

    def _retire_started(self, popen: subprocess.Popen[bytes] | None, slots: Any) -> None:
        """Stop a grading process that never became ready (or nothing, if none started)."""
        with self.lock:
            found = [p for p in self.every if p.popen is popen]
        if found:
            self._retire(found[0], polite=False)
            return
        slots.release()

    def _ask(self, process: _Process, sub: Submission) -> tuple[str, Any]:
        """Hand ``sub`` to ``process`` and wait for its result, or notice it died."""
        from labkit.grader.run import STUCK_GRACE, death_note

        started = time.monotonic()
        limit = 2 * float(self.job.options.notebook_timeout) + STUCK_GRACE
        stuck = 0.0
        try:
            process.conn.send(sub)
            while True:
                if process.conn.poll(1.0):
                    kind, payload = process.conn.recv()
                    if kind != "result":
                        continue
                    if "grader-error" in payload["status"]:
                        self._retire(process)  # it may be what is broken: never reuse it
                    else:
                        self._give_back(process)
                    return "result", payload
                if process.popen.poll() is not None:
                    break
                if time.monotonic() - started > limit:
                    stuck = time.monotonic() - started
                    process.popen.kill()
                    break
        except (EOFError, OSError):
            pass  # it died: said below
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(5)
        code = process.popen.returncode
        self._retire(process, polite=False)
        return "died", death_note(code, stuck)

    def _give_back(self, process: _Process) -> None:
        with self.lock:
            if not self.closed:
                self.idle.append(process)
                return
        self._retire(process)

    def _retire(self, process: _Process, *, polite: bool = True) -> None:
        """Stop ``process`` (politely, then not), kill what its users left, free its slot."""
        from labkit.grader.run import slot_uids
        from labkit.grader.users import kill_user_processes

        with self.lock:
            if process.retired:
                return
            process.retired = True
            with contextlib.suppress(ValueError):
                self.idle.remove(process)
        if polite:
            with contextlib.suppress(OSError):
                process.conn.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(30)
        if process.popen.poll() is None:
            process.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(5)
        process.conn.close()
        if self.job.options.sandbox:
            kill_user_processes(slot_uids(process.number))
        process.slots.release()

    def close(self) -> None:
        """Stop every grading process of this run here, busy or not, and clear up after it."""
        with self.lock:
            self.closed = True
            every = list(self.every)
        for process in every:
            busy = process not in self.idle
            if busy and process.popen.poll() is None:
                process.popen.kill()  # its task sees it die; nobody waits for that result
            self._retire(process, polite=not busy)
        self.launcher.shutdown(wait=False)
        self._tidy()

    def _tidy(self) -> None:
        if self.replies is not None:
            self.replies.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


_MACHINES: dict[str, _Machine] = {}
_REGISTRY = threading.Lock()
_WATCHING: list[threading.Thread] = []


def _machine(job: Job) -> _Machine:
    """This run's grading on this worker, set up by its first task (and counted busy)."""
    with _REGISTRY:
        machine = _MACHINES.get(job.token)
        if machine is None or machine.closed:
            try:
                machine = _MACHINES[job.token] = _Machine(job)
            except (LabkitError, OSError) as exc:
                raise GradingError(f"{_where()} cannot grade: {exc}") from exc
        with machine.lock:
            machine.busy += 1
        if not _WATCHING:
            watchdog = threading.Thread(target=_watch, name="labkit-grading-idle", daemon=True)
            watchdog.start()
            _WATCHING.append(watchdog)
    return machine


def _watch() -> None:
    """Stop the runs on this worker that have had nothing to grade for IDLE_SECONDS."""
    while True:
        time.sleep(min(10.0, IDLE_SECONDS / 4))
        stale = []
        with _REGISTRY:
            for token, machine in list(_MACHINES.items()):
                if not machine.busy and time.monotonic() - machine.last > IDLE_SECONDS:
                    stale.append(_MACHINES.pop(token))
        for machine in stale:
            with contextlib.suppress(Exception):
                machine.close()


def grade_task(job: Job, learner: str, name: str, sha256: str, notebook: bytes) -> tuple[str, Any]:
    """A Dask task: grade one learner's notebook on this worker (never raises for a notebook)."""
    machine = _machine(job)
    try:
        return machine.grade(Submission(learner, Path(name), sha256=sha256), notebook)
    except GradingError as exc:
        raise GradingError(f"{_where()}: {exc}") from exc


def stop_run(token: str) -> None:
    """Run on each worker when a run ends: stop its grading processes and clear up."""
    with _REGISTRY:
        machine = _MACHINES.pop(token, None)
    if machine is not None:
        machine.close()


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise GradingError(
            "--scheduler needs Dask's distributed package, which this Python lacks: install "
            "the class extra (`.venv/bin/pip install -e '.[class]'` in the course folder) here "
            "and on every worker machine, or leave out --scheduler to grade on this machine."
        ) from exc
    return distributed


def _connect(distributed: Any, address: str) -> Any:
    """A client of the scheduler at ``address``, or an error that says how to start one."""
    try:
        return distributed.Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise GradingError(
            f"No Dask scheduler answers at {address} ({type(exc).__name__}: {exc}). Start one "
            "on a machine every worker can reach (`dask scheduler` prints its address, "
            "tcp://HOST:8786), start `dask worker ADDRESS` on each grading machine, and pass "
            "that address; or leave out --scheduler to grade on this machine."
        ) from exc


def _job(exercise: Exercise, options: GradeOptions, runtime_url: str, places: Any) -> Job:
    """The run as workers see it: where the exercise is, and what to check their copy against."""
    root = places.root.resolve()
    master = places.master_path is not None
    source = (places.master_path if master else places.key_path).resolve()
    try:
        relative = str(source.relative_to(root))
    except ValueError:
        relative = str(source)  # outside the course folder: the same path on every worker
    base = _files_base(root, source, master)
    files = tuple((rel, _sha256(base / rel)) for rel in exercise.files)
    return Job(
        token=uuid.uuid4().hex,
        key_hash=_key_hash(exercise),
        exercise_path=relative,
        master=master,
        root=str(root),
        options=options,
        runtime_url=runtime_url,
        labkit_hash=labkit_hash(),
        files=files,
    )


def _check_cluster(client: Any, job: Job, say: Callable[[str], None]) -> None:
    """Every worker can grade this class, or nothing is sent and each one's lack is named."""
    address = job.options.scheduler
    try:
        client.wait_for_workers(1, timeout=WORKERS_SECONDS)
    except (TimeoutError, OSError) as exc:
        raise GradingError(
            f"The Dask scheduler at {address} has no workers (none joined in "
            f"{WORKERS_SECONDS:.0f} s): start `sudo .venv/bin/dask worker {address}` in the "
            "course folder of each grading machine, then grade again."
        ) from exc
    reports = client.run(check_worker, job, on_error="return")
    threads = client.nthreads()
    problems, gaps = [], []
    for worker in sorted(reports):
        report = reports[worker]
        if isinstance(report, BaseException):
            problems.append(f"{worker}: {type(report).__name__}: {report}")
            continue
        problems += [f"{worker} ({report['host']}): {p}" for p in report["problems"]]
        gaps += [f"Not enforced on {report['host']}: {g}" for g in report["gaps"]]
    if problems:
        raise GradingError(
            "Nothing was graded: these Dask workers cannot grade this class:\n  - "
            + "\n  - ".join(problems)
            + "\nFix each one (or stop it), then grade again."
        )
    for gap in dict.fromkeys(gaps):
        say(gap)
    hosts = ", ".join(f"{w} ({threads.get(w, 0)})" for w in sorted(reports))
    say(f"Grading on {len(reports)} Dask worker(s), notebooks at a time: {hosts}")


@dataclass
class _Attempt:
    """One notebook to grade, which try this is, and what stopped the tries before."""

    sub: Submission
    attempt: int = 1
    earlier: list[str] = field(default_factory=list)


class Cluster:
    """A Dask cluster that has been checked for one run: it grades notebooks, then is closed.

    Opening it connects to the scheduler and asks every worker whether it can grade this
    class; any that cannot stop the run here, before anything is written.
    """

    def __init__(
        self,
        exercise: Exercise,
        options: GradeOptions,
        runtime_url: str,
        places: Any,
        say: Callable[[str], None] = print,
    ) -> None:
        self.distributed = _import_distributed()
        self.exercise, self.options = exercise, options
        self.job = _job(exercise, options, runtime_url, places)
        self.client = _connect(self.distributed, options.scheduler)
        try:
            _check_cluster(self.client, self.job, say)
        except BaseException:
            self.client.close(timeout=10)
            raise

    def grade(
        self, todo: list[Submission], finish: Callable[[Submission, dict[str, Any]], None]
    ) -> tuple[list[int], float]:
        """Grade ``todo`` on the workers, handing each final result to ``finish`` as it comes.

        The grading users' ids and the seconds from the first notebook sent to the last
        result come back, as from the local pool.
        """
        from labkit.grader.run import ATTEMPTS, gave_up, progress_bar, retry_reason

        client, job, exercise = self.client, self.job, self.exercise
        queue = deque(_Attempt(sub) for sub in todo)
        pending: dict[Any, _Attempt] = {}
        flowing = self.distributed.as_completed(loop=client.loop)
        uids: set[int] = set()
        sent = 0

        def send() -> None:
            """Keep twice the cluster's threads busy: no more notebooks in memory than that."""
            nonlocal sent
            window = max(2, 2 * sum(client.nthreads().values()))
            while queue and len(pending) < window:
                task = queue.popleft()
                sub = task.sub
                future = client.submit(
                    grade_task,
                    job,
                    sub.learner,
                    sub.path.name,
                    sub.sha256,
                    sub.path.read_bytes(),
                    key=f"labkit-grade-{job.token[:12]}-{sent}",
                    pure=False,
                )
                sent += 1
                pending[future] = task
                flowing.add(future)

        bar = progress_bar(len(todo), exercise.name, self.options.progress)
        started = time.perf_counter()
        try:
            send()
            for future in flowing:
                task = pending.pop(future)
                kind, payload = _outcome(future, self.distributed, self.options.scheduler)
                if kind == "result" and not (
                    "grader-error" in payload["status"] and task.attempt < ATTEMPTS
                ):
                    uids.update(payload.get("uids", []))
                    payload["attempts"], payload["retried"] = task.attempt, task.earlier
                    finish(task.sub, payload)
                    bar.update(1)
                elif kind == "result":  # the grader failed on it: once more, in a fresh one
                    queue.appendleft(_Attempt(task.sub, task.attempt + 1, [retry_reason(payload)]))
                elif task.attempt < ATTEMPTS:  # its grader died: once more, in a fresh one
                    queue.appendleft(_Attempt(task.sub, task.attempt + 1, [*task.earlier, payload]))
                else:
                    result = gave_up(exercise, task.sub, task.attempt, payload)
                    result["attempts"] = task.attempt
                    result["retried"] = [*task.earlier, payload]
                    finish(task.sub, result)
                    bar.update(1)
                send()
        finally:
            bar.close()
            with contextlib.suppress(Exception):
                client.cancel(list(pending), force=True)
        return sorted(uids), time.perf_counter() - started

    def close(self) -> None:
        """Stop this run's grading processes on every worker, and disconnect."""
        with contextlib.suppress(Exception):
            self.client.run(stop_run, self.job.token, on_error="ignore")
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)


def _outcome(future: Any, distributed: Any, address: str) -> tuple[str, Any]:
    """What a task brought back: a result, a death to retry, or an error that stops the run."""
    try:
        outcome: tuple[str, Any] = future.result()
        return outcome
    except distributed.KilledWorker:
        # The Dask worker itself died each time the scheduler tried it (allowed-failures).
        return "died", "The Dask worker grading this notebook stopped while grading it."
    except GradingError:
        raise
    except (concurrent.futures.CancelledError, asyncio.CancelledError, OSError) as exc:
        raise GradingError(
            f"The Dask scheduler at {address} went away ({type(exc).__name__}: {exc}). The "
            "rows graded so far are kept: start it (and its workers) again and grade again; "
            "only what is missing is graded."
        ) from exc
    except Exception as exc:
        raise GradingError(
            f"A grading task failed on the cluster ({type(exc).__name__}: {exc}); the rows "
            "graded so far are kept. See the Dask worker's log, then grade again."
        ) from exc


def _serve(fd: int) -> None:
    """A grading process's life: take its settings and slot, then grade what it is sent."""
    from labkit.grader.run import worker_main

    conn = Connection(fd)
    settings, number = conn.recv()
    worker_main(settings, number, conn)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
