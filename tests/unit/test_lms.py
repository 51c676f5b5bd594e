"""labkit grade --lms: Canvas's gradebook import CSV and Moodle's grade import CSV, as documented.

Canvas (its guides to Grades → Import and the gradebook export the import mirrors): the
identity columns Student, ID, SIS User ID, SIS Login ID, Section, then one column per
assignment ("Name (id)" for an existing one), and a second row "Points Possible".
Moodle (MoodleDocs, "Grade import", CSV): a column that identifies the user (mapped to
username, useremail or useridnumber) and one column per grade item.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from labkit.cli import main
from labkit.errors import GradingError
from labkit.grader import cli as grader_cli
from labkit.grader import lms

PROJECT = Path(__file__).resolve().parents[2]


def _result(learner: str, total: float, *status: str) -> dict[str, Any]:
    return {"learner": learner, "total": total, "status": list(status)}


RESULTS = [
    _result("alice", 12.5),
    _result("bob", 0, "untouched"),  # handed back as it was: a real zero
    _result("carol", 3, "gave-up", "timeout"),  # ran out of time: keeps what it earned
    _result("dave (two-notebooks)", 0, "not-graded", "two-notebooks"),
    _result("erin", 0, "grader-error"),  # the grader failed, not the learner
    _result("=cmd", 1),  # a name that a spreadsheet would run
]


def _rows(data: bytes) -> list[list[str]]:
    assert data.endswith(b"\r\n")  # CRLF rows, as both platforms export
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def test_canvas_columns_and_points_possible_row(tmp_path: Path) -> None:
    written = lms.write_lms(tmp_path, "canvas", RESULTS, exercise="03-hr-rag", possible=14)
    assert written.path == tmp_path / "canvas.csv"
    rows = _rows(written.path.read_bytes())
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "03-hr-rag"]
    assert rows[1] == ["Points Possible", "", "", "", "", "14"]
    by_login = {r[3]: r for r in rows[2:]}
    assert by_login["alice"] == ["alice", "", "", "alice", "", "12.5"]
    assert by_login["bob"][5] == "0" and by_login["carol"][5] == "3"
    assert by_login["'=cmd"][5] == "1"  # shown as text, never run as a formula
    # Not graded is not zero: those rows stay out, and are named.
    assert sorted(written.left_out) == ["dave (two-notebooks)", "erin"]
    assert written.rows == 4 and len(rows) == 2 + 4


def test_canvas_rows_take_identities_from_the_courses_own_export(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(
        "\ufeffStudent,ID,SIS User ID,SIS Login ID,Section,Integration ID,Quiz 1 (11),Current Score\n"
        "    Points Possible,,,,,,10,(read only)\n"
        '"Liddell, Alice",1001,S-1,alice,Section A,,9,90\n'
        '"Builder, Bob",1002,S-2,bob,Section B,,7,70\n',
        encoding="utf-8",
    )
    written = lms.write_lms(
        tmp_path,
        "canvas",
        RESULTS,
        exercise="03-hr-rag",
        possible=14,
        column="Exercise 3 (4242)",
        roster=export,
    )
    rows = _rows(written.path.read_bytes())
    assert rows[0][-1] == "Exercise 3 (4242)"  # an existing assignment, by its id
    assert rows[2] == ["Liddell, Alice", "1001", "S-1", "alice", "Section A", "12.5"]
    assert rows[3] == ["Builder, Bob", "1002", "S-2", "bob", "Section B", "0"]
    assert written.not_in_roster == ["=cmd", "carol"]
    with pytest.raises(GradingError, match="no 'login' column"):
        lms.write_lms(
            tmp_path,
            "canvas",
            RESULTS,
            exercise="x",
            possible=1,
            roster=export,
            roster_match="login",
        )


def test_moodle_identifier_and_grade_item_columns(tmp_path: Path) -> None:
    written = lms.write_lms(tmp_path, "moodle", RESULTS, exercise="03-hr-rag", possible=14)
    rows = _rows((tmp_path / "moodle.csv").read_bytes())
    assert rows[0] == ["username", "03-hr-rag"]
    assert ["alice", "12.5"] in rows and ["carol", "3"] in rows
    assert written.rows == 4 and sorted(written.left_out) == ["dave (two-notebooks)", "erin"]
    roster = tmp_path / "class.csv"
    roster.write_text("learner,email\nalice,alice@uni.example\nbob,bob@uni.example\n")
    written = lms.write_lms(
        tmp_path,
        "moodle",
        RESULTS,
        exercise="03-hr-rag",
        possible=14,
        column="Exercise 3",
        roster=roster,
        moodle_id="email",
    )
    rows = _rows(written.path.read_bytes())
    assert rows == [
        ["email", "Exercise 3"],
        ["alice@uni.example", "12.5"],
        ["bob@uni.example", "0"],
    ]
    assert written.not_in_roster == ["=cmd", "carol"]


def test_labkit_grade_takes_the_lms_options_and_says_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from labkit.cli import build_parser

    args = build_parser("grade").parse_args(
        ["grade", "SUB", "--exercise", "03", "--lms", "canvas", "--lms-column", "Ex 3 (7)"]
    )
    assert (args.lms, args.lms_column, args.moodle_id) == ("canvas", "Ex 3 (7)", "username")
    grader_cli._write_lms(args, tmp_path, RESULTS, "03-hr-rag", 14)
    said = capsys.readouterr().out
    assert f"Canvas import file: {tmp_path / 'canvas.csv'} (4 learners)" in said
    assert "left out erin: not graded (grader-error); its row in gradebook.csv says why" in said
    assert (tmp_path / "gradebook.csv").exists() is False  # only its own file


def test_a_bad_roster_stops_grading_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "SUB").mkdir()
    code = main(
        [
            "grade",
            str(tmp_path / "SUB"),
            "--exercise",
            "03",
            "--root",
            str(PROJECT),
            "--lms",
            "canvas",
            "--roster",
            str(tmp_path / "missing.csv"),
        ]
    )
    assert code == 1
    assert "Cannot read the roster" in capsys.readouterr().err
    assert not (tmp_path / "SUB-grades").exists()


def test_unknown_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GradingError, match="--lms must be one of canvas, moodle"):
        lms.write_lms(tmp_path, "blackboard", RESULTS, exercise="x", possible=1)
