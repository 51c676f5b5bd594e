"""A learner-only copy of the course: what to hand out, without answers or history.

The course repository holds what instructors keep (``solutions/``, ``masters/``,
``grading/hidden/``, the grader's own tests) and its git history, which holds all of that
too. ``labkit assign masters/ --release DIR`` writes DIR with only what learners need:
the lessons, the generated exercises with their public tests and data, the labkit
package, the environment files and the README. DIR has no ``.git``; learners get DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from labkit.errors import LabkitError
from labkit.grader.exercise import KEY_DIR, SOLUTION_DIR, Generated

__all__ = ["KEPT_OUT", "release"]

# Top-level entries instructors keep; everything else a clean checkout holds is handed out.
KEPT_OUT = frozenset(
    {SOLUTION_DIR, "masters", KEY_DIR.split("/")[0], "tests", "bench", ".git", ".github", ".ci"}
    | {".labkit", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "deploy", "conftest.py"}
)
_JUNK = frozenset({"__pycache__", ".ipynb_checkpoints"})


def release(root: Path, target: Path, generated: list[Generated]) -> list[Path]:
    """Copy the learner-only course from ``root`` into the new folder ``target``; its files."""
    if target.exists() and any(target.iterdir()):
        raise LabkitError(f"{target} is not empty; nothing was written. Release into a new folder.")
    if target.resolve() == root.resolve() or root.resolve() in target.resolve().parents:
        raise LabkitError(f"Release into a folder outside the course, not {target}.")
    files = [rel for rel in _course_files(root) if _handed_out(rel)]
    secrets = _secrets(generated)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel in files:
            source, dest = root / rel, staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            _refuse_secrets(dest, rel, secrets)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)  # all or nothing: no half-released course
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [target / rel for rel in files]


def _course_files(root: Path) -> list[Path]:
    """The course's files: what git tracks if it is a checkout, else everything there."""
    try:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        listed = [Path(p) for p in done.stdout.decode().split("\0") if p]
        return sorted(p for p in listed if (root / p).is_file())
    except (OSError, subprocess.SubprocessError):
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _handed_out(rel: Path) -> bool:
    parts = rel.parts
    return parts[0] not in KEPT_OUT and not _JUNK.intersection(parts) and rel.suffix != ".pyc"


def _secrets(generated: list[Generated]) -> list[set[str]]:
    """Per hidden test, its telling lines: long ones no public test or exercise shows.

    A lesson may share a line or two with a test (an API call, an import); a file that
    holds half of one hidden test's own lines holds that test.
    """
    hidden: list[set[str]] = []
    shown: set[str] = set()
    for g in generated:
        for q in g.exercise.questions:
            for t in q.tests:
                lines = {x.strip() for x in t.code.splitlines()}
                if t.hidden:
                    hidden.append(lines)
                else:
                    shown.update(lines)
        shown.update(_strings(json.loads(g.files.get(g.learner_path, b"{}"))))
    telling = [{x for x in lines - shown if len(x) > 30} for lines in hidden]
    return [lines for lines in telling if len(lines) >= 3]


def _strings(data: object) -> set[str]:
    """Every stripped line of every string inside parsed JSON."""
    if isinstance(data, str):
        return {x.strip() for x in data.splitlines()}
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list):
        if all(isinstance(x, str) for x in data):  # a notebook source: lines split up
            return _strings("".join(data))
        return set().union(*(_strings(x) for x in data)) if data else set()
    return set()


def _refuse_secrets(path: Path, rel: Path, secrets: list[set[str]]) -> None:
    """Stop if a file handed out carries hidden test code (a key copied somewhere else)."""
    if path.suffix not in {".ipynb", ".json", ".py", ".md", ".txt"} or not secrets:
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = {x.strip() for x in text.splitlines()}
    if path.suffix in {".ipynb", ".json"}:
        with contextlib.suppress(ValueError):
            lines |= _strings(json.loads(text))
    for test in secrets:
        found = sorted(lines & test)
        if len(found) * 2 >= len(test):
            raise LabkitError(
                f"{rel} holds hidden test code ({found[0][:60]!r}…); nothing was released. "
                "Move that file out of the course, or into grading/."
            )
