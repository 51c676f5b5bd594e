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

Before it writes anything, ``labkit assign`` refuses a master whose answer would reach
learners (a code cell in a solution block that marks no answer, a misspelt marker), whose
solution does not parse, or — by grading the solution against every public and hidden
test on the runtime, with the grader itself — whose solution scores less than full marks
(``--no-validate`` skips the grading). It warns where points are left to defaults or
disagree. The format, every marker and what a test may do: ``docs/authoring.md``.

``labkit assign`` writes four files per master (paths relative to the course root):
``exercises/NAME.ipynb`` (learner version), ``exercises/tests/NAME.json`` (public tests, what
``check()`` runs), ``solutions/NAME.ipynb`` and ``grading/hidden/NAME.json`` (every test,
public and hidden: the grading key, for instructors only). The bytes depend only on the
master, so running it twice gives identical files, and ``drift()`` can tell when the
generated files no longer match their master.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError, ValidationFailed
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
    write_atomic,
)
from labkit.grader.parse import parse_master

__all__ = [
    "KEY_DIR",
    "LEARNER_DIR",
    "MANUAL_PROMPT",
    "PUBLIC_TESTS_DIR",
    "SOLUTION_DIR",
    "VALIDATED",
    "Exercise",
    "Generated",
    "MasterFormatError",
    "OverwriteRefused",
    "Question",
    "TestCase",
    "ValidationFailed",
    "add_arguments",
    "assert_in_sync",
    "assign",
    "cli",
    "drift",
    "exercise_from_dict",
    "load_key",
    "masters_in",
    "parse_master",
    "validate",
    "work_fingerprint",
    "write_atomic",
]


# Where assign remembers which solutions it graded, so an unchanged master is not graded again.
VALIDATED = ".labkit/validated.json"


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
    return _drifted(parse_master(master), root)


def _drifted(generated: Generated, root: Path) -> list[str]:
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
    masters: list[Path],
    root: Path,
    *,
    force: bool = False,
    say: bool = True,
    validate: bool = False,
    runtime_url: str | None = None,
    timeout: float = 300.0,
) -> list[Generated]:
    """Generate every master's files under ``root``; refuse to replace hand-edited ones.

    With ``validate`` (what the command does unless ``--no-validate``), each master's
    solution is first graded against all its tests, and nothing is written unless every
    solution gets full marks.
    """
    show: Callable[[str], None] = functools.partial(print, flush=True) if say else (lambda _: None)
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
    for g in generated:  # before validating: a warning often explains why a test fails
        for warning in g.warnings:
            show(f"warning: {g.exercise.name}: {warning}")
    if validate:
        _validate_all(masters, generated, root, runtime_url, timeout, show)
    for g in generated:
        for rel, content in g.files.items():
            path = root / rel
            if path.is_file() and path.read_bytes() == content:
                continue
            write_atomic(path, content)
        show(
            f"{g.exercise.name}: {len(g.exercise.questions)} questions, "
            f"{g.exercise.possible:g} points → {g.learner_path}, {g.solution_path}, "
            f"{g.public_path}, {g.key_path}"
        )
    if not validate:
        show("Not validated (--no-validate): no solution was graded against its tests.")
    return generated


def _validate_all(
    masters: list[Path],
    generated: list[Generated],
    root: Path,
    runtime_url: str | None,
    timeout: float,
    show: Callable[[str], None],
) -> None:
    """Grade each changed master's solution; refuse them all if one loses a point."""
    record = _load_record(root / VALIDATED)
    failures = []
    for master, g in zip(masters, generated, strict=True):
        stamp = _validation_stamp(g)
        if not any(q.tests for q in g.exercise.graded_questions):
            continue
        if record.get(g.exercise.name) == stamp:
            show(f"{g.exercise.name}: solution already validated, master unchanged since.")
            continue
        if runtime_url is None:
            from labkit import discovery

            runtime_url = discovery.find_runtime(start=True).url
        tests = sum(len(q.tests) for q in g.exercise.graded_questions)
        show(
            f"{g.exercise.name}: grading its solution against its {tests} tests on "
            f"{runtime_url} (--no-validate skips this)…"
        )
        started = time.perf_counter()
        problem = validate(master, g, runtime_url=runtime_url, timeout=timeout)
        if problem:
            failures.append(problem)
            continue
        show(
            f"{g.exercise.name}: the solution gets {g.exercise.possible:g}/"
            f"{g.exercise.possible:g} ({time.perf_counter() - started:.0f} s)."
        )
        record[g.exercise.name] = stamp
        write_atomic(
            root / VALIDATED, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
        )
    if failures:
        raise ValidationFailed(
            "\n\n".join(failures)
            + "\n\nNothing was written. Fix the master (its solution or its tests) and run "
            "`labkit assign` again; --no-validate writes the files without this check."
        )


def validate(master: Path, g: Generated, *, runtime_url: str, timeout: float = 300.0) -> str:
    """Grade the master's solution as ``labkit grade --master`` would; why it fell short, or "".

    The solution is the instructor's own code, so it runs without the sandbox (no root
    needed). What it scored is kept in a folder named in the answer when it falls short.
    """
    from labkit.grader.options import GradeOptions
    from labkit.grader.run import grade

    work = Path(tempfile.mkdtemp(prefix=f"labkit-validate-{g.exercise.name}-"))
    subs = work / "submissions"
    subs.mkdir()
    (subs / "solution.ipynb").write_bytes(g.files[g.solution_path])
    try:
        report = grade(
            subs,
            g.exercise,
            work / "graded",
            GradeOptions(workers=1, timeout=timeout, sandbox=False, progress=False),
            runtime_url=runtime_url,
            master_path=master.resolve(),
            root=master.resolve().parent,
            say=lambda _: None,
        )
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    problem = _shortfall(master, g, report.results[0], work / "graded")
    if not problem:
        shutil.rmtree(work, ignore_errors=True)
    return problem


def _shortfall(master: Path, g: Generated, result: dict[str, Any], out: Path) -> str:
    """What the solution lost and why, test by test ("" for full marks)."""
    lost = [t for t in result["tests"] if float(t.get("earned", 0)) + 1e-9 < float(t["points"])]
    total = sum(float(t.get("earned", 0)) for t in result["tests"])
    if not lost and total + 1e-9 >= g.exercise.possible:
        return ""
    lines = [
        f"{master}: its solution gets {total:g}/{g.exercise.possible:g} from its own tests, "
        "so a learner who writes it would lose points too:"
    ]
    for t in lost:
        kind = "hidden" if t.get("hidden") else "public"
        # ``detail`` says what really went wrong in a hidden test (learners never see it).
        parts = (t.get("detail") or t.get("message"), t.get("hint"))
        why = " ".join(str(x).strip() for x in parts if x and str(x).strip())
        lines.append(
            f"  {t['name']} ({kind}, {t.get('status', '?')}): {float(t.get('earned', 0)):g} of "
            f"{float(t['points']):g} — {why or 'no reason given'}"
        )
    for note in result.get("notes", []):
        lines.append(f"  the notebook: {note}")
    lines.append(f"  The graded solution and its feedback are in {out}.")
    return "\n".join(lines)


def _validation_stamp(g: Generated) -> str:
    """What a validation depends on: the generated files and the data files beside the master."""
    digest = hashlib.sha256()
    for rel in sorted(g.files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(g.files[rel]).digest())
    return digest.hexdigest()


def _load_record(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


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
        "--no-validate",
        action="store_true",
        help="write the files without first grading each solution against its tests",
    )
    parser.add_argument(
        "--runtime", help="model runtime URL to validate the solutions on (default: found)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds per cell and per test while validating (default 300)",
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
        return _check(masters, root, args.path)
    generated = assign(
        masters,
        root,
        force=args.force,
        validate=not args.no_validate,
        runtime_url=args.runtime,
        timeout=args.timeout,
    )
    if args.release:
        from labkit.grader.release import release

        files = release(root, Path(args.release), generated)
        print(
            f"Released {len(files)} files for learners into {args.release} "
            "(no solutions, masters, grading keys or history). Hand out that folder."
        )
    return 0


def _check(masters: list[Path], root: Path, shown: str) -> int:
    """``--check``: list what drifted from its master, and what was edited by hand."""
    stale: list[str] = []
    edited: list[str] = []
    for master in masters:
        generated = parse_master(master)
        stale += _drifted(generated, root)
        edited += _edited_outputs(generated, root)
        for warning in generated.warnings:
            print(f"warning: {generated.exercise.name}: {warning}")
    for rel in stale:
        print(f"out of date: {rel}" + (" (edited by hand)" if rel in edited else ""))
    if edited:
        print(
            f"{', '.join(edited)} changed since `labkit assign` wrote them, so "
            f"`labkit assign {shown}` refuses to replace them: move those changes into the "
            f"master, or run `labkit assign {shown} --force` to replace them (the changes are lost)."
        )
        return 1
    if stale:
        print(f"Run `labkit assign {shown}` to regenerate them.")
        return 1
    print(f"All generated files match their {len(masters)} master(s).")
    return 0
