"""A learner-only copy of the course: what to hand out, without answers or history.

The course repository holds what instructors keep (``solutions/``, ``masters/``,
``grading/hidden/``, the grader's own tests) and its git history, which holds all of that
too. ``labkit assign masters/ --release DIR`` writes DIR with only what learners need:
the lessons, the generated exercises with their public tests and data, the labkit
package and the environment files. DIR has no ``.git``; learners get DIR.

The README and ``./lab`` in DIR are the learner's (``handout.py``): how to start the lab,
work an exercise, check it and hand it in, and a ``./lab test`` that runs the public checks
of every exercise. DIR also holds ``.labkit-course.json``, each file's hash as released,
which lets ``labkit update`` tell a learner's changed files from untouched ones later.

Two checks stop a release that would give answers away: no file may hold most of a hidden
test's telling lines, and no file under ``exercises/`` may hold a single line of solution
code (a line of a solution notebook, of some length, that no learner notebook has). Lessons
and the labkit package share many lines with the solutions, so only exercises are held to
the second check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from labkit import update
from labkit.errors import LabkitError
from labkit.grader.exercise import KEY_DIR, LEARNER_DIR, SOLUTION_DIR, Generated
from labkit.grader.handout import LEARNER_LAB, learner_readme

__all__ = ["INSTRUCTOR_DOCS", "KEPT_OUT", "SOLUTION_LINE_MIN", "release"]

# Top-level entries instructors keep; everything else a clean checkout holds is handed out.
KEPT_OUT = frozenset(
    {SOLUTION_DIR, "masters", KEY_DIR.split("/")[0], "tests", "bench", ".git", ".github", ".ci"}
    | {".labkit", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "deploy", "conftest.py"}
)
# Guides written for instructors (masters, grading, running a class): not the learner's.
INSTRUCTOR_DOCS = frozenset({"docs/authoring.md", "docs/class.md"})
_JUNK = frozenset({"__pycache__", ".ipynb_checkpoints"})
SOLUTION_LINE_MIN = 12  # characters: shorter lines (``return x``, ``else:``) say nothing alone


def release(root: Path, target: Path, generated: list[Generated]) -> list[Path]:
    """Copy the learner-only course from ``root`` into the new folder ``target``; its files."""
    if target.exists() and any(target.iterdir()):
        raise LabkitError(f"{target} is not empty; nothing was written. Release into a new folder.")
    if target.resolve() == root.resolve() or root.resolve() in target.resolve().parents:
        raise LabkitError(f"Release into a folder outside the course, not {target}.")
    files = [rel for rel in _course_files(root) if _handed_out(rel)]
    secrets = _secrets(generated)
    answers = _solution_lines(generated)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel in files:
            source, dest = root / rel, staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            _refuse_secrets(dest, rel, secrets)
            _refuse_solutions(dest, rel, answers)
        files = sorted({*files, *_hand_out(root, staging)})
        for rel in (Path("README.md"), Path("lab")):
            _refuse_secrets(staging / rel, rel, secrets)
        update.write_manifest(
            staging, update.manifest_for(staging), version=update.git_commit(root)
        )
        if target.exists():
            target.rmdir()
        os.replace(staging, target)  # all or nothing: no half-released course
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [target / rel for rel in [*files, Path(update.MANIFEST)]]


def _hand_out(root: Path, staging: Path) -> list[Path]:
    """Write the learner's README and ``./lab`` into the release; their paths."""
    readme = root / "README.md"
    course = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    (staging / "README.md").write_text(learner_readme(course), encoding="utf-8")
    lab = staging / "lab"
    lab.write_text(LEARNER_LAB, encoding="utf-8")
    lab.chmod(0o755)
    return [Path("README.md"), Path("lab")]


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
    if rel.as_posix() in INSTRUCTOR_DOCS:
        return False
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


def _code_lines(notebook: bytes) -> dict[str, str]:
    """Stripped code lines of a notebook, each with the label of the first cell holding it."""
    found: dict[str, str] = {}
    data = json.loads(notebook)
    for index, cell in enumerate(data.get("cells", []) if isinstance(data, dict) else []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        for line in text.splitlines():
            found.setdefault(line.strip(), f"cell {index + 1}")
    return found


def _solution_lines(generated: list[Generated]) -> dict[str, str]:
    """Solution code no learner notebook shows, line by line, with the exercise it answers."""
    shown: set[str] = set()
    for g in generated:
        shown |= _strings(json.loads(g.files.get(g.learner_path, b"{}")))
    answers: dict[str, str] = {}
    for g in generated:
        for line in _code_lines(g.files.get(g.solution_path, b"{}")):
            if len(line) >= SOLUTION_LINE_MIN and not line.startswith("#") and line not in shown:
                answers.setdefault(line, g.exercise.name)
    return answers


def _refuse_solutions(path: Path, rel: Path, answers: dict[str, str]) -> None:
    """Stop if a learner notebook or script holds a line of solution code."""
    if rel.parts[0] != LEARNER_DIR or path.suffix not in {".ipynb", ".py"} or not answers:
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    lines: dict[str, str] = {}
    if path.suffix == ".ipynb":
        with contextlib.suppress(ValueError, AttributeError):
            lines = _code_lines(text.encode("utf-8"))
    else:
        lines = {x.strip(): f"line {n}" for n, x in reversed(list(enumerate(text.splitlines(), 1)))}
    for line, where in lines.items():
        if line in answers:
            raise LabkitError(
                f"{rel} holds solution code of {answers[line]} ({where}: {line[:60]!r}); "
                "nothing was released. Regenerate the exercises with `labkit assign masters/` "
                "(answers go between # BEGIN SOLUTION and # END SOLUTION in the master), or "
                "remove that code from the file."
            )


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
