"""Grades as a learning platform imports them: Canvas's gradebook CSV and Moodle's grade CSV.

``labkit grade … --lms canvas`` (or ``moodle``) writes ``canvas.csv`` (``moodle.csv``) beside
``gradebook.csv``, one row per graded learner with the exercise's total. The formats follow
the platforms' own documentation:

- **Canvas** (Grades → Import; the columns of Canvas's gradebook export, as its guides
  describe them): ``Student``, ``ID``, ``SIS User ID``, ``SIS Login ID``, ``Section``, then
  one column per assignment, named ``Assignment name (assignment id)`` for an existing
  assignment or just a name for a new one; the row below the header starts
  ``Points Possible`` and gives each assignment's points. Canvas finds each student by these
  identity columns: with ``--roster`` (your course's own Canvas gradebook export) each
  learner's row carries them from the export, matched by ``SIS Login ID`` (``--roster-match``
  names another column); without one, ``Student`` and ``SIS Login ID`` hold the learner's
  name, which Canvas matches when hub names are the institution's logins.
- **Moodle** (Grades → Import → CSV file; MoodleDocs "Grade import"): one column that
  identifies the user and one per grade item. On Moodle's mapping screen, map the first
  column ("Map from") to the same field ("Map to": ``username``, ``useremail`` or
  ``useridnumber``) and the grade column to the grade item (or a new one). The first column
  holds the learner's name (``username``), or with ``--roster`` (a CSV with a ``learner``
  column and an ``email`` or ``idnumber`` column) that value.

A row that was not graded (a stray file, a grader failure, still pending) is left out and
named, so that an import never turns "not graded" into a zero.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import GradingError
from labkit.grader.exercise import write_atomic
from labkit.grader.report import csv_cell

__all__ = [
    "CANVAS_IDENTITY",
    "FORMATS",
    "MOODLE_IDS",
    "LmsFile",
    "canvas_csv",
    "graded_totals",
    "moodle_csv",
    "read_roster",
    "write_lms",
]

FORMATS = ("canvas", "moodle")
CANVAS_IDENTITY = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
MOODLE_IDS = ("username", "email", "idnumber")
# Statuses that mean "no grade yet", not "zero": such rows never reach the platform.
_NOT_GRADED = ("not-graded", "grader-error", "pending")


@dataclass
class LmsFile:
    """An import file written, and the learners it leaves out (and why)."""

    path: Path
    rows: int
    left_out: dict[str, str] = field(default_factory=dict)  # learner -> why
    not_in_roster: list[str] = field(default_factory=list)


def graded_totals(results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """Each graded learner's total, and the learners left out with their status."""
    totals: dict[str, float] = {}
    left_out: dict[str, str] = {}
    for result in results:
        status = [str(s) for s in result.get("status", [])]
        if any(s.startswith(_NOT_GRADED) for s in status):
            left_out[str(result["learner"])] = ", ".join(status)
        else:
            totals[str(result["learner"])] = float(result["total"])
    return totals, left_out


def read_roster(path: Path, match: str) -> dict[str, dict[str, str]]:
    """The roster's rows by the value of their ``match`` column."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # Excel adds a BOM
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GradingError(
            f"Cannot read the roster {path} ({exc}); give a UTF-8 CSV file."
        ) from exc
    if not rows or match not in rows[0]:
        columns = ", ".join(rows[0]) if rows else "none"
        raise GradingError(
            f"The roster {path} has no {match!r} column (its columns: {columns}). Pass "
            "--roster-match with the column that holds the learners' hub names."
        )
    by_name: dict[str, dict[str, str]] = {}
    for row in rows:
        key = (row.get(match) or "").strip()
        if key and key not in by_name:
            by_name[key] = {k: (v or "") for k, v in row.items() if k is not None}
    return by_name


def _table(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180, as both platforms export
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])
    return out.getvalue().encode("utf-8")


def canvas_csv(
    totals: dict[str, float],
    assignment: str,
    possible: float,
    roster: dict[str, dict[str, str]] | None = None,
) -> tuple[bytes, list[str]]:
    """Canvas's gradebook import file, and the learners the roster does not know."""
    rows = [[*CANVAS_IDENTITY, assignment], ["Points Possible", "", "", "", "", f"{possible:g}"]]
    unknown = []
    for learner in sorted(totals):
        known = (roster or {}).get(learner)
        if roster is not None and known is None:
            unknown.append(learner)
            continue
        identity = (
            [known.get(c, "") for c in CANVAS_IDENTITY] if known else [learner, "", "", learner, ""]
        )
        rows.append([*identity, f"{totals[learner]:g}"])
    return _table(rows), unknown


def moodle_csv(
    totals: dict[str, float],
    item: str,
    identifier: str = "username",
    roster: dict[str, dict[str, str]] | None = None,
) -> tuple[bytes, list[str]]:
    """Moodle's grade import file, and the learners the roster does not know."""
    if identifier not in MOODLE_IDS:
        raise GradingError(
            f"--moodle-id must be one of {', '.join(MOODLE_IDS)}, not {identifier!r}."
        )
    rows = [[identifier, item]]
    unknown = []
    for learner in sorted(totals):
        value = learner
        if roster is not None:
            value = (roster.get(learner) or {}).get(identifier, "").strip()
            if not value:
                unknown.append(learner)
                continue
        rows.append([value, f"{totals[learner]:g}"])
    return _table(rows), unknown


def write_lms(
    out: Path,
    fmt: str,
    results: list[dict[str, Any]],
    *,
    exercise: str,
    possible: float,
    column: str | None = None,
    roster: Path | None = None,
    roster_match: str | None = None,
    moodle_id: str = "username",
) -> LmsFile:
    """Write ``out/canvas.csv`` or ``out/moodle.csv`` from grading results."""
    if fmt not in FORMATS:
        raise GradingError(f"--lms must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    totals, left_out = graded_totals(results)
    match = roster_match or ("SIS Login ID" if fmt == "canvas" else "learner")
    table = read_roster(roster, match) if roster else None
    if fmt == "canvas":
        content, unknown = canvas_csv(totals, column or exercise, possible, table)
    else:
        content, unknown = moodle_csv(totals, column or exercise, moodle_id, table)
    path = out / f"{fmt}.csv"
    write_atomic(path, content)
    return LmsFile(path, len(totals) - len(unknown), left_out, unknown)
