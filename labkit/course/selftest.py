"""``./lab test`` for learners: run each exercise notebook and its public checks, and say how each went.

Each notebook runs in a fresh kernel from its own folder, top to bottom, as "Run All" would
(a cell that fails does not stop the ones after it), except the ``check(...)`` cells; then
``check_all()`` runs every question's public checks once. What it prints is what
``check()`` shows in the notebook: each question, each check with ✔ or ✘, and why. The
notebook file is only read, never changed. Hidden tests run only when your work is graded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExerciseChecks", "main", "run_checks"]

_MARK = "LABKIT-CHECKS "
# Runs in the exercise's kernel once its cells have run: every question's public checks.
_REPORT = """
import json as _json
from labkit.course.checks import check_all as _check_all
_summary = _check_all()
print({mark!r} + _json.dumps([
    {{"question": _c.question, "passed": _c.passed, "text": repr(_c)}}
    for _c in _summary.checks
]))
"""


@dataclass
class ExerciseChecks:
    """The public checks of one exercise notebook."""

    path: Path
    questions: list[dict[str, object]] = field(default_factory=list)
    failed_cells: int = 0
    problem: str = ""  # the notebook could not be run at all

    @property
    def passed(self) -> int:
        """How many questions pass every public check."""
        return sum(bool(q["passed"]) for q in self.questions)


def _is_check_cell(source: str) -> bool:
    code = [line for line in source.splitlines() if line.strip() and not line.startswith("#")]
    return bool(code) and all(line.startswith(("check(", "check_all(")) for line in code)


def run_checks(path: Path, *, timeout: float = 600) -> ExerciseChecks:
    """Run the notebook at ``path`` in a fresh kernel, then its public checks."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    result = ExerciseChecks(path)
    try:
        nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:  # a damaged file: say so, and go on with the next notebook
        result.problem = f"cannot be read as a notebook ({type(exc).__name__}); is it damaged?"
        return result
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and not _is_check_cell(str(c.source))]
    report = nbformat.v4.new_code_cell(_REPORT.format(mark=_MARK))  # type: ignore[no-untyped-call]
    nb.cells.append(report)
    client = NotebookClient(
        nb,
        timeout=timeout,
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    try:
        # The kernel's own stderr carries only its start-up chatter; cells' output comes back.
        client.execute(stderr=subprocess.DEVNULL)
    except (CellTimeoutError, DeadKernelError, CellExecutionError) as exc:
        result.problem = f"stopped: {str(exc).splitlines()[0][:200]}"
    for cell in nb.cells[:-1]:
        outputs = cell.get("outputs", [])
        result.failed_cells += any(o.get("output_type") == "error" for o in outputs)
    for output in nb.cells[-1].get("outputs", []):
        if output.get("output_type") == "error" and not result.problem:
            result.problem = (
                f"its checks could not run: {output.get('ename')}: {output.get('evalue')}"
            )
        for line in str(output.get("text", "")).splitlines():
            if line.startswith(_MARK):
                result.questions = json.loads(line[len(_MARK) :])
    if not result.questions and not result.problem:
        result.problem = "its checks printed nothing; run its first cell in JupyterLab to see why"
    return result


def main(argv: list[str] | None = None) -> int:
    """Check every exercise (or the notebooks named); 0 once every public check passes."""
    parser = argparse.ArgumentParser(prog="./lab test", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="exercise notebooks (default: exercises/*)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell (600)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(Path("exercises").glob("[0-9]*.ipynb"))
    paths = [p for p in paths if ".updated-" not in p.name or args.notebooks]
    if not paths:
        print("No exercise notebooks here: run ./lab test in the course folder.")
        return 2
    total = passed = 0
    for path in paths:
        print(f"\n{path}", flush=True)
        found = run_checks(path, timeout=args.timeout)
        if found.problem:
            print(f"  ✘ this notebook {found.problem}")
        for question in found.questions:
            print("  " + str(question["text"]).replace("\n", "\n  "))
        if found.failed_cells:
            cells = "cell" if found.failed_cells == 1 else "cells"
            print(f"  ({found.failed_cells} {cells} stopped with an error; open it to see which)")
        total += max(len(found.questions), 1 if found.problem else 0)
        passed += found.passed
    print(
        f"\nPublic checks: {passed} of {total} questions pass. Hidden tests run too when your "
        "work is graded."
    )
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
