"""Grading a class: find the submissions, hand them to workers, keep what is unchanged."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labkit.grader import assign
from labkit.grader.assign import Exercise
from labkit.grader.cache import ReplyCache
from labkit.grader.exercise import _json_bytes
from labkit.grader.kernels import PRELOAD, _alive
from labkit.grader.notebook import _empty_result, _grade_in_worker, _init_worker
from labkit.grader.report import _write_outputs
from labkit.grader.sandbox import _needed_paths, _preflight, _private_paths, _reachability_covers
from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings, Submission
from labkit.grader.users import Slots, _grading_user, kill_user_processes

__all__ = ["GradeReport", "find_key", "find_submissions", "grade", "to_grade"]


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
    folder = root / assign.KEY_DIR
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
    ``skipped`` set, so the gradebook has a row for it and the command can say why.
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
    return sorted(entries, key=lambda s: s.learner)


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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def grade(
    submissions: Path,
    exercise: Exercise,
    out: Path,
    *,
    runtime_url: str,
    workers: int = 2,
    timeout: float = 60.0,
    regrade: bool = False,
    sandbox: bool = True,
    memory_mb: int = 4096,
    network: str = "runtime",
    cache: bool = True,
    key_path: Path | None = None,
    master_path: Path | None = None,
    root: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> GradeReport:
    """Grade every notebook in ``submissions`` and write the results into ``out``."""
    if workers < 1:
        raise GradingError("--workers must be at least 1.")
    if sandbox and (sys.platform != "linux" or os.geteuid() != 0):
        raise GradingError(
            "Grading isolates each notebook as an unprivileged user, which needs root on "
            "Linux: run it with sudo, or pass --no-sandbox to grade trusted notebooks."
        )
    entries = find_submissions(submissions)
    found = [s for s in entries if not s.skipped]
    for sub in entries:
        if sub.skipped:
            say(f"Not graded: {_shown(sub.path, submissions)}: {sub.reason}")
    if not found:
        raise GradingError(f"No notebooks (*.ipynb) to grade in {submissions}.")
    for sub in found:
        sub.sha256 = _sha256(sub.path)
    out.mkdir(parents=True, exist_ok=True)
    if sandbox:
        os.chmod(out, 0o700)  # the gradebook is for the instructor only
    key_bytes = _json_bytes(exercise.to_key())
    key_hash = hashlib.sha256(key_bytes).hexdigest()
    state = _load_state(out / "state.json")
    previous = state.get("results", {}) if state.get("key") == key_hash else {}
    todo = to_grade(found, previous, regrade=regrade)
    results = {s.learner: previous[s.learner] for s in found if s not in todo}
    uids: list[int] = []
    seconds = 0.0
    if todo:
        graded, uids, seconds = _grade_all(
            todo,
            exercise,
            submissions,
            out,
            runtime_url=runtime_url,
            workers=workers,
            timeout=timeout,
            sandbox=sandbox,
            memory_mb=memory_mb,
            network=network,
            cache=cache,
            key_path=key_path,
            master_path=master_path,
            root=root or Path.cwd(),
            progress=progress,
        )
        results.update(graded)
    for sub in found:  # learner code never sees the submissions; make sure of it
        if _sha256(sub.path) != sub.sha256:
            results[sub.learner]["status"] = sorted({*results[sub.learner]["status"], "changed"})
            results[sub.learner]["notes"].append("The file changed while it was being graded.")
    for sub in entries:
        if sub.skipped:
            results[sub.learner] = _empty_result(exercise, sub, ["not-graded", sub.skipped])
            results[sub.learner]["notes"].append(f"Not graded: {sub.reason}")
    ordered = [results[s.learner] for s in entries]
    _write_outputs(out, exercise, ordered, key_hash)
    say(
        f"Graded {len(todo)} notebook(s), reused {len(found) - len(todo)} unchanged, "
        f"{len(entries) - len(found)} not graded; results in {out}"
    )
    return GradeReport(exercise, ordered, [s.learner for s in todo], out, uids, seconds)


def to_grade(
    found: list[Submission], previous: dict[str, Any], *, regrade: bool = False
) -> list[Submission]:
    """New or changed notebooks (by content hash), or all of them with ``regrade``."""
    return [s for s in found if regrade or previous.get(s.learner, {}).get("sha256") != s.sha256]


def _remove_abandoned_runs() -> None:
    """Delete scratch folders left by grading runs that were killed (their owner is gone)."""
    for run_dir in SCRATCH_BASE.glob("run-*"):
        try:
            owner = int((run_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _alive(owner):
            continue
        if not owner and time.time() - run_dir.stat().st_mtime < 3600:
            continue  # no owner written yet: maybe a run that is just starting
        shutil.rmtree(run_dir, ignore_errors=True)


def _grade_all(
    todo: list[Submission],
    exercise: Exercise,
    submissions: Path,
    out: Path,
    *,
    runtime_url: str,
    workers: int,
    timeout: float,
    sandbox: bool,
    memory_mb: int,
    network: str,
    cache: bool,
    key_path: Path | None,
    master_path: Path | None,
    root: Path,
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], list[int], float]:
    workers = min(workers, len(todo))
    SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
    _remove_abandoned_runs()
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_BASE))
    os.chmod(run_dir, 0o711)
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    public = _json_bytes(exercise.to_public())
    extra = []
    # Files the notebook reads sit next to the master, and next to the generated exercise.
    base = master_path.resolve().parent if master_path else root / assign.LEARNER_DIR
    for rel in exercise.files:
        extra.append((str(base / rel), rel))
    settings = Settings(
        exercise=exercise,
        runtime_url=runtime_url,
        timeout=timeout,
        sandbox=sandbox,
        memory_mb=memory_mb,
        public_tests=public,
        extra_files=extra,
        run_dir=str(run_dir),
        network=network if sandbox else "host",
    )
    slots = Slots(workers) if sandbox else None
    uids: list[int] = []
    replies = ReplyCache(runtime_url) if cache else None
    try:
        _route(settings, runtime_url, replies)
        if sandbox and slots is not None:
            settings.hide_checkouts = [str(root.resolve())] if root.resolve().parent != root else []
            settings.hide = _private_paths(submissions, out, key_path, master_path, root)
            settings.reach = _reachability_covers(_needed_paths())
            users = [_grading_user(2 * n + k) for n in slots.numbers for k in (0, 1)]
            uids = [u for u, _, _ in users]
            _preflight(settings, users[0])
        # Workers fork from a server process that has imported the grader and the kernel's
        # modules once: no worker pays for those imports, and none inherits our threads.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["labkit.grader.notebook", *PRELOAD])
        handout: Any = context.Queue()
        for number in slots.numbers if slots else range(workers):
            handout.put(number)
        results: dict[str, dict[str, Any]] = {}
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(settings, handout),
        ) as pool:
            started = time.perf_counter()
            futures = [pool.submit(_grade_in_worker, sub) for sub in todo]
            bar = _progress(len(todo), exercise.name, progress)
            for future in as_completed(futures):
                result = future.result()
                results[result["learner"]] = result
                bar.update(1)
            bar.close()
            seconds = time.perf_counter() - started
        return results, uids, seconds
    finally:
        if replies is not None:
            replies.stop()
        if uids:
            kill_user_processes(uids)
        if slots is not None:
            slots.release()
        shutil.rmtree(run_dir, ignore_errors=True)


def _route(settings: Settings, runtime_url: str, replies: ReplyCache | None) -> None:
    """Where kernels send model requests: through the reply cache (if any) to the runtime."""
    upstream = urlsplit(runtime_url)
    port = upstream.port or (443 if upstream.scheme == "https" else 80)
    target = (upstream.hostname or "127.0.0.1", port)
    if replies is not None:
        target = replies.start()
    settings.forward_to = target
    if settings.network == "runtime":  # the kernel's own loopback, forwarded to target
        settings.runtime_url = f"http://127.0.0.1:{port}{upstream.path}".rstrip("/")
    elif replies is not None:
        settings.runtime_url = f"http://{target[0]}:{target[1]}{upstream.path}".rstrip("/")


class _NoBar:
    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def _progress(total: int, name: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"grading {name}", unit="notebook")


def _load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
