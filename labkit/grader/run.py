"""Grading a class: find the submissions, hand them to workers, keep every result at once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labkit.errors import LabkitError
from labkit.grader.cache import ReplyCache
from labkit.grader.exercise import KEY_DIR, LEARNER_DIR, Exercise, json_bytes
from labkit.grader.kernels import PRELOAD, pid_alive
from labkit.grader.notebook import empty_result, grade_in_worker, init_worker
from labkit.grader.options import GradeOptions
from labkit.grader.parse import parse_master
from labkit.grader.report import (
    append_journal,
    hidden_code,
    previous_results,
    tidy_result,
    write_book,
    write_rates,
    write_row_files,
)
from labkit.grader.sandbox import needed_paths, preflight, private_paths, reachability_covers
from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings, Submission
from labkit.grader.users import (
    MAX_SLOTS,
    USER_PREFIX,
    Slots,
    grading_user,
    kill_user_processes,
)

__all__ = [
    "ATTEMPTS",
    "START_FAILURES",
    "STUCK_GRACE",
    "GradeReport",
    "Places",
    "death_note",
    "find_key",
    "find_submissions",
    "gave_up",
    "grade",
    "kill_abandoned_kernels",
    "progress_bar",
    "remove_abandoned_runs",
    "retry_reason",
    "slot_uids",
    "to_grade",
    "worker_main",
    "worker_settings",
]


@dataclass
class GradeReport:
    """What ``grade()`` did: every learner's result and where the files went."""

    exercise: Exercise
    results: list[dict[str, Any]]
    graded: list[str]  # learners graded in this run (the rest came from the last run)
    out: Path
    uids: list[int] = field(default_factory=list)
    grading_seconds: float = 0.0  # from the first notebook handed out to the last result

    def result(self, learner: str) -> dict[str, Any]:
        """The result of one learner."""
        return next(r for r in self.results if r["learner"] == learner)


def find_key(root: Path, exercise: str) -> Path:
    """The grading key for ``exercise``: its name, or its number (``1`` finds ``01-...``)."""
    folder = root / KEY_DIR
    keys = sorted(folder.glob("*.json"))
    exact = [k for k in keys if k.stem == exercise]
    if exact:
        return exact[0]
    prefixes = {exercise, exercise.zfill(2)}
    matches = [k for k in keys if any(k.stem.startswith(p + s) for p in prefixes for s in "-_")]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(k.stem for k in keys) or f"none (no keys in {folder})"
    if matches:
        raise GradingError(f"--exercise {exercise} matches several: {known}. Use the full name.")
    raise GradingError(
        f"No grading key for exercise {exercise!r}; available: {known}. "
        "Run `labkit assign masters/` first, or pass --master PATH."
    )


def find_submissions(folder: Path) -> list[Submission]:
    """Every entry of ``folder``: ``NAME.ipynb``, ``NAME/one.ipynb``, or why it is not graded.

    Nothing is dropped in silence: an entry that cannot be graded comes back with
    ``skipped`` set, so the gradebook has a row for it and the command can say why. Every
    entry has a row name of its own: a learner's notebook is named by the learner, and a
    stray entry never takes that name (``alice`` beside ``alice.ipynb`` is
    ``alice (not-a-notebook)``).
    """
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder of submissions.")
    entries: list[Submission] = []
    for path in sorted(folder.iterdir()):
        entries.append(_entry(path))
    # Two entries for one learner (alice.ipynb and alice/): grading either could be wrong.
    by_learner: dict[str, list[Submission]] = {}
    for sub in entries:
        if not sub.skipped:
            by_learner.setdefault(sub.learner, []).append(sub)
    for learner, subs in by_learner.items():
        if len(subs) > 1:
            names = " and ".join(_shown(s.path, folder) for s in subs)
            for sub in subs:
                sub.learner = _shown(sub.path, folder).split("/")[0]
                sub.skipped = "duplicate-name"
                sub.reason = f"{names} both name learner {learner!r}; keep one and grade again."
    taken = {s.learner for s in entries if not s.skipped}
    for sub in entries:
        if sub.skipped:
            sub.learner = _free_name(sub.learner, sub.skipped, taken)
            taken.add(sub.learner)
    return sorted(entries, key=lambda s: s.learner)


def _free_name(name: str, status: str, taken: set[str]) -> str:
    """``name``, or ``name (status)`` when a learner's row (or another entry's) has it."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} ({status})" if n == 2 else f"{name} ({status} {n - 1})"
    return candidate


def _entry(path: Path) -> Submission:
    """One folder entry as a submission, or as a skipped entry with its reason."""
    name = path.name
    if name.startswith("."):
        why = "its name starts with '.', which marks hidden files; rename it to grade it."
        return Submission(name, path, skipped="hidden-name", reason=why)
    if path.is_symlink():
        why = "it is a link, not a file; copy the notebook itself into the folder."
        return Submission(name, path, skipped="link", reason=why)
    if path.is_file():
        if path.suffix.lower() == ".ipynb":  # Carol.IPYNB is a notebook too
            return Submission(path.stem, path)
        why = "it is not a notebook (*.ipynb)."
        return Submission(name, path, skipped="not-a-notebook", reason=why)
    if not path.is_dir():
        return Submission(name, path, skipped="not-a-notebook", reason="it is not a file.")
    notebooks = sorted(
        p
        for p in path.iterdir()
        if p.suffix.lower() == ".ipynb" and not p.name.startswith(".") and p.is_file()
    )
    notebooks = [p for p in notebooks if not p.is_symlink()]
    if len(notebooks) == 1:
        return Submission(name, notebooks[0])
    if not notebooks:
        why = "the folder holds no notebook."
        return Submission(name, path, skipped="no-notebook", reason=why)
    names = ", ".join(p.name for p in notebooks)
    why = f"the folder holds {len(notebooks)} notebooks ({names}); leave the one to grade."
    return Submission(name, path, skipped="several-notebooks", reason=why)


def _shown(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder)
    return rel.parts[0] + "/" if len(rel.parts) > 1 else str(rel)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters shown as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def grade(
    submissions: Path,
    exercise: Exercise,
    out: Path,
    options: GradeOptions | None = None,
    *,
    runtime_url: str,
    key_path: Path | None = None,
    master_path: Path | None = None,
    root: Path | None = None,
    say: Callable[[str], None] = print,
    cluster: Callable[..., Any] | None = None,
) -> GradeReport:
    """Grade every notebook in ``submissions`` and write the results into ``out``.

    ``options`` are how (``GradeOptions()``, ``labkit grade``'s defaults, when None);
    ``key_path`` or ``master_path`` is where the exercise came from, and ``root`` the course
    folder (default: here). With ``options.scheduler``, ``cluster`` is what connects to it
    (``labkit.grader.distributed.Cluster``: passed in, as that module builds on this one). Each result is written as soon as it is known, so a run that is
    stopped keeps what it graded, and the next run grades only what is missing, changed, or
    failed in the grader.
    """
    options = options or GradeOptions()
    # With a scheduler, the notebooks run on its workers: they need root, this machine not.
    local = not options.scheduler
    if local and options.sandbox and (sys.platform != "linux" or os.geteuid() != 0):
        raise GradingError(
            "Grading isolates each notebook as an unprivileged user, which needs root on "
            "Linux: run it with sudo, or pass --no-sandbox to grade trusted notebooks."
        )
    root = root or Path.cwd()
    entries = find_submissions(submissions)
    notebooks = [s for s in entries if not s.skipped]
    _refuse_too_large(notebooks, options.max_notebook_mb)
    found = [s for s in entries if not s.skipped]
    for sub in entries:
        if sub.skipped:
            say(f"Not graded: {_printable(_shown(sub.path, submissions))}: {sub.reason}")
    if not notebooks:
        raise GradingError(f"No notebooks (*.ipynb) to grade in {submissions}.")
    for sub in found:
        sub.sha256 = _sha256(sub.path)
    key_hash = hashlib.sha256(json_bytes(exercise.to_key())).hexdigest()
    previous = previous_results(out, key_hash)
    todo = to_grade(found, previous, regrade=options.regrade)
    places = Places(submissions, out, key_path, master_path, root)
    connected = None
    if options.scheduler and todo:
        if cluster is None:
            raise GradingError(
                "Grading on a scheduler needs its connector: pass "
                "cluster=labkit.grader.distributed.Cluster (labkit grade --scheduler does)."
            )
        # Its workers are checked before anything is written: a cluster that cannot
        # grade this class leaves no results folder behind.
        connected = cluster(exercise, options, runtime_url, places, say)
    try:
        return _grade_and_write(
            entries, todo, previous, exercise, out, options, runtime_url, places, connected, say
        )
    finally:
        if connected is not None:
            connected.close()


def _grade_and_write(
    entries: list[Submission],
    todo: list[Submission],
    previous: dict[str, Any],
    exercise: Exercise,
    out: Path,
    options: GradeOptions,
    runtime_url: str,
    places: Places,
    cluster: Any,
    say: Callable[[str], None],
) -> GradeReport:
    """Write what is known, grade ``todo`` here or on ``cluster``, and each result at once."""
    found = [s for s in entries if not s.skipped]
    root, master_path = places.root, places.master_path
    out.mkdir(parents=True, exist_ok=True)
    if options.sandbox:
        os.chmod(out, 0o700)  # the gradebook is for the instructor only
    key_hash = hashlib.sha256(json_bytes(exercise.to_key())).hexdigest()
    book = _Book(out, exercise, key_hash, [s.learner for s in todo])
    for sub in found:
        if sub not in todo:
            book.add(previous[sub.learner])
    for sub in entries:
        if sub.skipped:
            book.add(_skipped_row(exercise, sub))
    book.write()
    released = _released_code(exercise, root, master_path)
    secrets = hidden_code(exercise)

    def finish(sub: Submission, result: dict[str, Any]) -> None:
        """A result from a worker: checked, tidied and written at once."""
        status = set(result["status"])
        if _sha256(sub.path) != sub.sha256:  # learner code never sees the submissions
            status.add("changed")
            result["notes"].append("The file changed while it was being graded.")
        if released is not None and _code_cells(sub.path.read_bytes()) == released:
            status.add("untouched")
        result["status"] = sorted(status)
        book.add(tidy_result(result, secrets))
        append_journal(out, key_hash, result)
        book.write(state=False)

    uids: list[int] = []
    seconds = 0.0
    if cluster is not None:
        uids, seconds = cluster.grade(todo, finish)
    elif todo:
        uids, seconds = _grade_all(todo, exercise, options, runtime_url, places, finish)
    ordered = book.finish()
    say(
        f"Graded {len(todo)} notebook(s), reused {len(found) - len(todo)} unchanged, "
        f"{len(entries) - len(found)} not graded; results in {out}"
    )
    return GradeReport(exercise, ordered, [s.learner for s in todo], out, uids, seconds)


def _refuse_too_large(notebooks: list[Submission], cap_mb: float) -> None:
    """Mark notebooks over ``cap_mb`` as not graded: running one could exhaust a worker."""
    for sub in notebooks:
        size = sub.path.stat().st_size
        if size > cap_mb * 2**20:
            sub.skipped = "too-large"
            sub.reason = (
                f"notebook over {cap_mb:g} MB (it is {size / 2**20:.3g} MB); clear its outputs "
                "(Edit > Clear Outputs of All Cells), save it and submit it again."
            )


def _skipped_row(exercise: Exercise, sub: Submission) -> dict[str, Any]:
    result = empty_result(exercise, sub, ["not-graded", sub.skipped])
    result["notes"].append(f"Not graded: {sub.reason}")
    return result


class _Book:
    """The results folder while a run goes on: every row written as soon as it is known."""

    def __init__(self, out: Path, exercise: Exercise, key_hash: str, pending: list[str]) -> None:
        self.out, self.exercise, self.key_hash = out, exercise, key_hash
        self.rows: dict[str, dict[str, Any]] = {}
        self.pending = list(pending)

    def add(self, result: dict[str, Any]) -> None:
        """Keep one row and write its own files (feedback, executed notebook, notes)."""
        self.rows[result["learner"]] = result
        if result["learner"] in self.pending:
            self.pending.remove(result["learner"])
        write_row_files(self.out, self.exercise, result)

    def write(self, *, state: bool = True) -> None:
        """Replace the gradebook (and the state) with every row known now."""
        rows = self.results()
        write_book(self.out, self.exercise, rows, self.key_hash, self.pending, state=state)

    def results(self) -> list[dict[str, Any]]:
        """The rows known, in name order."""
        return [self.rows[name] for name in sorted(self.rows)]

    def finish(self) -> list[dict[str, Any]]:
        """The last gradebook, with pass rates and their plot; the rows in order."""
        self.write()
        results = self.results()
        write_rates(self.out, self.exercise, results)
        return results


def _code_cells(notebook: bytes) -> list[str] | None:
    """The code a notebook holds, cell by cell (blank cells left out); None if unreadable.

    Jupyter adds an empty cell below the last one run, so blank cells do not count.
    """
    try:
        cells = json.loads(notebook)["cells"]
        sources = [
            "".join(c["source"]) if isinstance(c["source"], list) else str(c["source"])
            for c in cells
            if c.get("cell_type") == "code"
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return [s.rstrip() for s in sources if s.strip()]


def _released_code(exercise: Exercise, root: Path, master_path: Path | None) -> list[str] | None:
    """The code cells of the notebook learners were given, to recognise untouched work."""
    try:
        if master_path is not None:
            generated = parse_master(master_path)
            return _code_cells(generated.files[generated.learner_path])
        path = root / LEARNER_DIR / f"{exercise.name}.ipynb"
        return _code_cells(path.read_bytes()) if path.is_file() else None
    except (OSError, KeyError, LabkitError):
        return None


def to_grade(
    found: list[Submission], previous: dict[str, Any], *, regrade: bool = False
) -> list[Submission]:
    """New or changed notebooks (by content hash), those the grader failed on, or all."""

    def stale(sub: Submission) -> bool:
        old = previous.get(sub.learner, {})
        return old.get("sha256") != sub.sha256 or "grader-error" in old.get("status", [])

    return [s for s in found if regrade or stale(s)]


def remove_abandoned_runs() -> None:
    """Delete scratch folders left by grading runs that were killed (their owner is gone)."""
    for run_dir in SCRATCH_BASE.glob("run-*"):
        try:
            owner = int((run_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and pid_alive(owner):
            continue
        if not owner and time.time() - run_dir.stat().st_mtime < 3600:
            continue  # no owner written yet: maybe a run that is just starting
        shutil.rmtree(run_dir, ignore_errors=True)


def kill_abandoned_kernels() -> None:
    """Kill what runs as the users of slots no run holds: kernels of a run that was killed."""
    free: list[int] = []
    for number in range(MAX_SLOTS):
        lock = SCRATCH_BASE / f"slot-{number}.lock"
        if not lock.exists():
            continue
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it: its processes are its own
            free += slot_uids(number)
    if free:
        kill_user_processes(free)


def slot_uids(number: int) -> list[int]:
    """The uids of a slot's users (its kernels' two and its tester) that exist."""
    names = [f"{USER_PREFIX}{2 * number}", f"{USER_PREFIX}{2 * number + 1}"]
    uids = []
    for name in [*names, f"{USER_PREFIX}tester-{number}"]:
        with contextlib.suppress(KeyError):
            uids.append(pwd.getpwnam(name).pw_uid)
    return uids


@dataclass(frozen=True)
class Places:
    """Where a run's files are: kernels see none of them, and read the exercise's data files."""

    submissions: Path
    out: Path
    key_path: Path | None
    master_path: Path | None
    root: Path


def _grade_all(
    todo: list[Submission],
    exercise: Exercise,
    options: GradeOptions,
    runtime_url: str,
    places: Places,
    finish: Callable[[Submission, dict[str, Any]], None],
) -> tuple[list[int], float]:
    """Grade ``todo`` in worker processes, handing each result to ``finish`` as it comes."""
    workers = min(options.workers, len(todo))
    SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
    remove_abandoned_runs()
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_BASE))
    os.chmod(run_dir, 0o711)
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    slots = Slots(workers) if options.sandbox else None
    uids: list[int] = []
    replies = ReplyCache(runtime_url) if options.cache else None
    try:
        settings = worker_settings(exercise, options, runtime_url, places, run_dir, replies)
        if slots is not None:
            kill_abandoned_kernels()
            users = [grading_user(2 * n + k) for n in slots.numbers for k in (0, 1)]
            uids = [u for u, _, _ in users]
            preflight(settings, users[0])
        numbers = slots.numbers if slots else list(range(workers))
        bar = progress_bar(len(todo), exercise.name, options.progress)
        started = time.perf_counter()

        def done(sub: Submission, result: dict[str, Any]) -> None:
            finish(sub, result)
            bar.update(1)

        _Pool(settings, numbers).run(todo, done)
        bar.close()
        return uids, time.perf_counter() - started
    finally:
        if replies is not None:
            replies.stop()
        if slots is not None:
            kill_user_processes(u for n in slots.numbers for u in slot_uids(n))
            slots.release()
        shutil.rmtree(run_dir, ignore_errors=True)


def worker_settings(
    exercise: Exercise,
    options: GradeOptions,
    runtime_url: str,
    places: Places,
    run_dir: Path,
    replies: ReplyCache | None,
) -> Settings:
    """What every worker of this run needs, made once (it starts the reply cache, if any)."""
    forward_to, kernel_url = _route(runtime_url, options.kernel_network, replies)
    root = places.root
    # Files the notebook reads sit next to the master, and next to the generated exercise.
    base = places.master_path.resolve().parent if places.master_path else root / LEARNER_DIR
    hide: list[str] = []
    hide_checkouts: list[str] = []
    reach: list[list[Any]] = []
    if options.sandbox:
        hide_checkouts = [str(root.resolve())] if root.resolve().parent != root else []
        hide = private_paths(
            places.submissions, places.out, places.key_path, places.master_path, root
        )
        reach = reachability_covers(needed_paths())
    return Settings(
        exercise=exercise,
        options=options,
        runtime_url=kernel_url,
        forward_to=forward_to,
        public_tests=json_bytes(exercise.to_public()),
        extra_files=[(str(base / rel), rel) for rel in exercise.files],
        run_dir=str(run_dir),
        hide=hide,
        hide_checkouts=hide_checkouts,
        reach=reach,
    )


class _Slot:
    """What ``init_worker`` takes its slot number from: this worker's, fixed."""

    def __init__(self, number: int) -> None:
        self.number = number

    def get(self) -> int:
        """The slot number."""
        return self.number


def worker_main(settings: Settings, number: int, conn: Any) -> None:
    """A grading worker's life: start, then grade each notebook it is sent until told to stop."""
    _die_with_parent()
    try:
        init_worker(settings, _Slot(number))
    except Exception as exc:  # said to the grader, which decides whether to try again
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            sub = conn.recv()
        except (EOFError, OSError):  # the grader is gone
            return
        if sub is None:
            return
        conn.send(("result", grade_in_worker(sub)))


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies, so a killed run leaves no grader."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Task:
    """One notebook to grade, and what went wrong with it before."""

    sub: Submission
    attempt: int = 1
    earlier: list[str] = field(default_factory=list)


@dataclass
class _Member:
    """One worker process and what it is doing."""

    number: int
    process: Any
    conn: Any
    ready: bool = False
    task: _Task | None = None
    reserved: _Task | None = None  # a retry waiting for this fresh worker
    since: float = 0.0  # when it was started, then handed its task (time.monotonic)
    stuck: float = 0.0  # seconds it had spent on its task when it was killed for that


ATTEMPTS = 2  # a notebook the grader failed on is tried once more, in a fresh worker


START_FAILURES = 3  # workers that fail to start in a row before the run gives up


# A worker stops a notebook at --notebook-timeout itself; one still busy this long after
# that is stuck where its own clock cannot reach (a blocking call), and is killed.
STUCK_GRACE = 120.0


class _Pool:
    """Worker processes that each grade one notebook at a time, replaced when one dies.

    A worker that dies (killed, out of memory, a crash of the grader) costs only the
    notebook it held: that notebook is tried once more in a new worker, and every other
    notebook is graded as usual.
    """

    def __init__(self, settings: Settings, numbers: list[int]) -> None:
        self.settings = settings
        self.numbers = numbers
        # Workers fork from a server process that has imported the grader and the kernel's
        # modules once: no worker pays for those imports, and none inherits our threads.
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["labkit.grader.run", *PRELOAD])
        self.members: list[_Member] = []
        self.start_failures: list[str] = []
        self.queue: deque[_Task] = deque()
        self.done: Callable[[Submission, dict[str, Any]], None] = lambda sub, result: None

    def start(self, number: int, reserved: _Task | None = None) -> None:
        """A new worker on slot ``number``, with nothing of the slot's users left running."""
        if self.settings.options.sandbox:
            kill_user_processes(slot_uids(number))
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=worker_main, args=(self.settings, number, theirs), daemon=True
        )
        process.start()
        theirs.close()
        member = _Member(number, process, ours, reserved=reserved, since=time.monotonic())
        self.members.append(member)

    def run(
        self, todo: list[Submission], done: Callable[[Submission, dict[str, Any]], None]
    ) -> None:
        """Grade every notebook of ``todo``; ``done`` gets each final result."""
        self.queue = deque(_Task(sub) for sub in todo)
        self.done = done
        try:
            for number in self.numbers:
                self.start(number)
            while self.queue or any(m.task or m.reserved for m in self.members):
                self.hand_out()
                objects = [m.conn for m in self.members]
                objects += [m.process.sentinel for m in self.members]
                multiprocessing.connection.wait(objects, timeout=5.0)
                for member in list(self.members):
                    self.listen(member)
                self.kill_stuck()
        finally:
            self.stop()

    def hand_out(self) -> None:
        """Give each idle worker its reserved retry, or the next notebook."""
        for member in self.members:
            if not member.ready or member.task is not None:
                continue
            task = member.reserved or (self.queue.popleft() if self.queue else None)
            if task is None:
                continue
            member.reserved, member.task = None, task
            member.since = time.monotonic()
            try:
                member.conn.send(task.sub)
            except OSError:  # it died just now: the task never started
                member.task, member.reserved = None, task

    def listen(self, member: _Member) -> None:
        """Take what ``member`` said, or notice that it died."""
        try:
            if not member.conn.poll():
                if member.process.is_alive():
                    return
                raise EOFError
            kind, payload = member.conn.recv()
        except (EOFError, OSError):
            self.died(member)
            return
        if kind == "ready":
            member.ready = True
            self.start_failures = []
        elif kind == "failed":
            self.died(member, payload)
        elif kind == "result":
            task, member.task = member.task, None
            assert task is not None
            if "grader-error" in payload["status"] and task.attempt < ATTEMPTS:
                # The worker may be what is broken (its kernel starter, say): retire it.
                why = retry_reason(payload)
                self.retire(member)
                self.start(member.number, _Task(task.sub, task.attempt + 1, [why]))
                return
            self.finish(task, payload)

    def kill_stuck(self) -> None:
        """Kill a worker stuck far past its time (starting, or on a notebook it cannot stop)."""
        limit = 2 * float(self.settings.options.notebook_timeout) + STUCK_GRACE
        for member in self.members:
            busy = time.monotonic() - member.since
            if (member.task is not None or not member.ready) and busy > limit and not member.stuck:
                member.stuck = busy
                member.process.kill()  # noticed as a dead worker on the next turn

    def finish(self, task: _Task, result: dict[str, Any]) -> None:
        result["attempts"] = task.attempt
        result["retried"] = task.earlier
        self.done(task.sub, result)

    def died(self, member: _Member, why: str = "") -> None:
        """A worker stopped: give its notebook one more try, and put a new worker in its place."""
        member.process.join(5)
        code = member.process.exitcode
        self.retire(member)
        retry = member.reserved
        if not member.ready:
            self.start_failures.append(why or f"exit code {code}")
            if len(self.start_failures) >= START_FAILURES:
                raise GradingError(
                    f"Grading workers stopped while starting ({self.start_failures[-1]}); "
                    "see the messages above, fix the cause and grade again."
                )
        task = member.task
        if task is not None:
            what = death_note(code, member.stuck)
            if task.attempt < ATTEMPTS:
                retry = _Task(task.sub, task.attempt + 1, [*task.earlier, what])
            else:
                result = gave_up(self.settings.exercise, task.sub, task.attempt, what)
                task.earlier.append(what)
                self.finish(task, result)
        if retry is not None or self.queue:
            self.start(member.number, retry)

    def retire(self, member: _Member) -> None:
        """Stop ``member`` (politely, then not), and kill whatever its users left running."""
        self.members.remove(member)
        with contextlib.suppress(OSError):
            member.conn.send(None)
        member.process.join(30)
        if member.process.is_alive():
            member.process.kill()
            member.process.join(5)
        member.conn.close()
        if self.settings.options.sandbox:
            kill_user_processes(slot_uids(member.number))

    def stop(self) -> None:
        """Stop every worker: those that are idle stop at once, busy ones are killed."""
        for member in list(self.members):
            if member.task is not None:
                member.process.kill()
            self.retire(member)


def death_note(code: int | None, stuck: float = 0.0) -> str:
    """What a result's history says when the worker grading it stopped (or was stuck)."""
    if stuck:
        return f"The grading worker was stuck on this notebook for {stuck:.0f} s."
    return f"The grading worker stopped (exit code {code}) while grading this notebook."


def gave_up(exercise: Exercise, sub: Submission, attempts: int, what: str) -> dict[str, Any]:
    """The result of a notebook whose last attempt ended with ``what``: no points, try again."""
    result = empty_result(exercise, sub, ["grader-error"])
    result["notes"].append(f"{what} It was tried {attempts} times; grade again to try once more.")
    return result


def retry_reason(result: dict[str, Any]) -> str:
    """Why a result the grader failed on is tried again, for the next attempt's history."""
    return "; ".join(result["notes"][-1:]) or "the grader failed"


def _route(
    runtime_url: str, network: str, replies: ReplyCache | None
) -> tuple[tuple[str, int], str]:
    """Where kernels send model requests (through the reply cache, if any), and their URL."""
    upstream = urlsplit(runtime_url)
    port = upstream.port or (443 if upstream.scheme == "https" else 80)
    target = (upstream.hostname or "127.0.0.1", port)
    if replies is not None:
        target = replies.start()
    url = runtime_url
    if network == "runtime":  # the kernel's own loopback, forwarded to target
        url = f"http://127.0.0.1:{port}{upstream.path}".rstrip("/")
    elif replies is not None:
        url = f"http://{target[0]}:{target[1]}{upstream.path}".rstrip("/")
    return target, url


class _NoBar:
    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, name: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"grading {name}", unit="notebook")
