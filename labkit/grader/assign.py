"""Turn a master notebook into what learners get, what instructors keep, and the tests.

A master notebook uses otter-grader's notebook format (raw delimiter cells), so masters
written for otter work here unchanged:

- a raw cell ``# ASSIGNMENT CONFIG`` (YAML) — optional, usually first;
- per question, raw cells ``# BEGIN QUESTION`` (YAML with ``name:``, ``points:``,
  ``manual:``, ``check_cell:``) … ``# END QUESTION``;
- inside a question: ``# BEGIN PROMPT`` / ``# END PROMPT`` (cells only learners see),
  ``# BEGIN SOLUTION`` / ``# END SOLUTION`` (the answer) and ``# BEGIN TESTS`` /
  ``# END TESTS`` (one test per code cell);
- inside code: ``# BEGIN SOLUTION`` … ``# END SOLUTION`` lines (``NO PROMPT`` drops the
  placeholder), a line ending in ``# SOLUTION`` (for ``x = value  # SOLUTION`` only the
  value goes), ``# SOLUTION NO PROMPT`` and ``# SEED`` lines, and ``\"\"\" # BEGIN PROMPT``
  … ``\"\"\" # END PROMPT`` strings whose text learners see instead;
- a test cell may start with ``# HIDDEN`` or a ``\"\"\" # BEGIN TEST CONFIG`` string (YAML:
  ``hidden``, ``points``, ``success_message``, ``failure_message``; labkit also reads
  ``name`` and ``description``); lines ending in ``# IGNORE`` are dropped;
- a cell starting with ``## Ignore ##`` is left out of everything.

``labkit assign`` writes four files per master (paths relative to the course root):
``exercises/NAME.ipynb`` (learner version), ``exercises/tests/NAME.json`` (public tests, what
``check()`` runs), ``solutions/NAME.ipynb`` and ``grading/hidden/NAME.json`` (every test,
public and hidden: the grading key, for instructors only). The bytes depend only on the
master, so running it twice gives identical files, and ``drift()`` can tell when the
generated files no longer match their master.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from labkit.errors import LabkitError
from labkit.grader.exercise import (
    KEY_DIR,
    LEARNER_DIR,
    MANUAL_PROMPT,
    PUBLIC_TESTS_DIR,
    SOLUTION_DIR,
    Exercise,
    Generated,
    MasterFormatError,
    OverwriteRefused,
    Question,
    TestCase,
    exercise_from_dict,
    load_key,
    work_fingerprint,
)
from labkit.grader.parse import parse_master

__all__ = [
    "KEY_DIR",
    "LEARNER_DIR",
    "MANUAL_PROMPT",
    "PUBLIC_TESTS_DIR",
    "SOLUTION_DIR",
    "Exercise",
    "Generated",
    "MasterFormatError",
    "OverwriteRefused",
    "Question",
    "TestCase",
    "add_arguments",
    "assert_in_sync",
    "assign",
    "cli",
    "drift",
    "exercise_from_dict",
    "load_key",
    "masters_in",
    "parse_master",
    "work_fingerprint",
    "write_atomic",
]


def masters_in(path: Path) -> list[Path]:
    """The master notebooks at ``path`` (a notebook, or every notebook in a folder)."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        if not found:
            raise LabkitError(f"No master notebooks (*.ipynb) in {path}.")
        return found
    if path.suffix != ".ipynb" or not path.is_file():
        raise LabkitError(f"{path} is not a notebook or a folder of notebooks.")
    return [path]


def drift(master: Path, root: Path) -> list[str]:
    """Generated files under ``root`` that no longer match ``master`` (missing ones too)."""
    generated = parse_master(master)
    return [
        rel
        for rel, content in generated.files.items()
        if not (root / rel).is_file() or (root / rel).read_bytes() != content
    ]


def assert_in_sync(masters: Path, root: Path) -> None:
    """Fail with a clear message if any generated file drifted from its master (for tests)."""
    stale = [rel for master in masters_in(masters) for rel in drift(master, root)]
    if stale:
        raise AssertionError(
            "These generated files do not match their masters: "
            + ", ".join(stale)
            + f". Edit the master, then run `labkit assign {masters}`."
        )


def assign(
    masters: list[Path], root: Path, *, force: bool = False, say: bool = True
) -> list[Generated]:
    """Generate every master's files under ``root``; refuse to replace hand-edited ones."""
    generated = [parse_master(m) for m in masters]
    names = [g.exercise.name for g in generated]
    if len(set(names)) != len(names):
        raise LabkitError(f"Two masters have the same file name: {sorted(names)}.")
    if not force:
        refused = [rel for g in generated for rel in _edited_outputs(g, root)]
        if refused:
            raise OverwriteRefused(
                "These files were changed since `labkit assign` wrote them: "
                + ", ".join(refused)
                + ". Nothing was written. Move your changes into the master, or copy the "
                "files elsewhere and run again with --force to replace them."
            )
    for g in generated:
        for rel, content in g.files.items():
            path = root / rel
            if path.is_file() and path.read_bytes() == content:
                continue
            write_atomic(path, content)
        if say:
            print(
                f"{g.exercise.name}: {len(g.exercise.questions)} questions, "
                f"{g.exercise.possible:g} points → {g.learner_path}, {g.solution_path}, "
                f"{g.public_path}, {g.key_path}"
            )
            for warning in g.warnings:
                print(f"  warning: {warning}")
    return generated


def _edited_outputs(g: Generated, root: Path) -> list[str]:
    """Notebooks on disk that differ from both the new output and what was last generated."""
    try:
        old_key = json.loads((root / g.key_path).read_text(encoding="utf-8"))
        previous: dict[str, str] = dict(old_key.get("generated", {}))
    except (OSError, ValueError, AttributeError):
        previous = {}
    edited = []
    for rel in (g.learner_path, g.solution_path):
        path = root / rel
        if not path.is_file():
            continue
        current = path.read_bytes()
        if current == g.files[rel]:
            continue
        try:
            work = work_fingerprint(current)
        except (ValueError, AttributeError):
            work = ""
        if work != previous.get(rel):
            edited.append(rel)
    return edited


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``labkit assign``."""
    parser.add_argument("path", help="a master notebook, or a folder of them (e.g. masters/)")
    parser.add_argument(
        "--root",
        default=".",
        help="course folder that receives exercises/, solutions/ and grading/ (default: .)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace generated notebooks even if edited by hand"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list generated files that no longer match their masters",
    )
    parser.add_argument(
        "--release",
        metavar="DIR",
        help="also write a learner-only copy of the course into the new folder DIR "
        "(no solutions/, masters/, grading/, tests or git history): hand out DIR",
    )


def cli(args: argparse.Namespace) -> int:
    """Run ``labkit assign`` with parsed arguments."""
    masters = masters_in(Path(args.path))
    root = Path(args.root)
    if args.check:
        stale = [rel for master in masters for rel in drift(master, root)]
        for rel in stale:
            print(f"out of date: {rel}")
        if stale:
            print(f"Run `labkit assign {args.path}` to regenerate them.")
            return 1
        print(f"All generated files match their {len(masters)} master(s).")
        return 0
    generated = assign(masters, root, force=args.force)
    if args.release:
        from labkit.grader.release import release

        files = release(root, Path(args.release), generated)
        print(
            f"Released {len(files)} files for learners into {args.release} "
            "(no solutions, masters, grading keys or history). Hand out that folder."
        )
    return 0
