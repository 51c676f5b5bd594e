"""What grading writes is safe to open: CSV cells, Markdown, row names, rows kept as they come."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest

from labkit.grader import report, run
from labkit.grader.exercise import Exercise, Question
from labkit.grader.exercise import TestCase as Case
from labkit.grader.options import GradeOptions
from labkit.grader.settings import Settings, Submission

FORMULA = '=HYPERLINK("http:\\\\evil.example","x")'
MARKDOWN = "*[x](http://evil.example)* <img src=x onerror=alert(1)> `code`\n# heading $x$ | cell"


def _exercise() -> Exercise:
    shown = Case("q1.1", "assert square(2) == 4", "function", 1.0)
    hidden = Case(
        "q1.2", "secret = square(1.5)\nassert secret == 2.25, 'floats'", "function", 2.0, True
    )
    return Exercise("ex", [Question("q1", 3.0, tests=[shown, hidden])])


def _result(learner: str, earned: float = 0.0, **extra: Any) -> dict[str, Any]:
    tests = [
        {"name": "q1.1", "question": "q1", "status": "passed" if earned else "failed"},
        {"name": "q1.2", "question": "q1", "status": "failed", "hidden": True},
    ]
    for test, points in zip(tests, (1.0, 2.0), strict=True):
        test.update(points=points, earned=earned if not test.get("hidden") else 0.0)
        test.setdefault("hidden", False)
        test.update(description="", message="", hint="")
    result = {"learner": learner, "file": f"{learner}.ipynb", "sha256": "s", "status": []}
    result.update(notes=[], tests=tests, executed=None)
    result.update(extra)
    return result


def test_csv_cells_that_start_a_formula_are_text() -> None:
    for text in (FORMULA, "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "\uff1d1+1"):
        assert report.csv_cell(text) == "'" + text
    for text in ("alice", "7", "2.5", "-1", "0", "a=b"):  # plain text and numbers stay
        assert report.csv_cell(text) == text


def test_the_gradebook_shows_a_formula_name_as_text(tmp_path: Path) -> None:
    results = [_result(FORMULA, notes=["-1 + @cmd", "fine"]), _result("bob", 1.0)]
    report.write_book(tmp_path, _exercise(), results, "key")
    rows = list(csv.reader((tmp_path / "gradebook.csv").open(encoding="utf-8")))
    assert rows[1][0] == "'" + FORMULA  # "'=HYPERLINK(...)": read back, the quote is there
    assert rows[1][-1] == "'-1 + @cmd | fine"
    assert rows[2][:5] == ["bob", "1", "1", "3", "ok"]
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell


def test_markdown_text_cannot_format_link_or_break_a_line() -> None:
    text = report.markdown_text(MARKDOWN)
    assert "\n" not in text and "<" not in text and ">" not in text
    for mark in "*[]()`#$|":
        assert text.count(mark) == text.count("\\" + mark), mark  # every one escaped
    assert report.markdown_text("a\u202eb\u2028c\x1bd") == "a b c d"  # bidi, line break, ESC
    assert report.markdown_text("x" * 50, limit=10) == "x" * 9 + "…"


def test_feedback_renders_names_and_messages_as_plain_text() -> None:
    mistune = pytest.importorskip("mistune")
    result = _result(MARKDOWN, notes=[MARKDOWN])
    result["tests"][0]["message"] = MARKDOWN
    result["tests"][0]["hint"] = "Look at `[y](http://evil.example)`"
    text = report.feedback(_exercise(), result)
    assert text.splitlines()[0].startswith("# ex: feedback for \\*\\[x\\]")
    html = mistune.html(text)
    for tag in ("<a ", "<img", "<em>", "<code>", "<table"):
        assert tag not in html, tag
    assert html.count("<h1>") == 1 and html.count("<h2>") == 2  # no heading from a name


def test_hidden_detail_goes_to_the_instructor_only(tmp_path: Path) -> None:
    detail = "AssertionError: floats\n```\n[click](http://evil.example)\n<script>x</script>"
    result = _result("alice")
    result["tests"][1]["detail"] = detail
    result["tests"][1]["message"] = "A hidden check failed."
    report.write_outputs(tmp_path, _exercise(), [result], "key")
    assert "floats" not in (tmp_path / "feedback" / "alice.md").read_text()
    assert "floats" not in (tmp_path / "gradebook.csv").read_text()
    notes = (tmp_path / "instructor" / "alice.md").read_text()
    assert "AssertionError: floats" in notes
    fence = next(line for line in notes.splitlines() if line.startswith("```"))
    assert fence == "````"  # longer than any run of backticks in the detail: it cannot close
    assert notes.count(fence) == 2


def test_notes_are_capped_and_hidden_code_is_withheld() -> None:
    secrets = report.hidden_code(_exercise())
    assert "assertsquare(2)==4" not in secrets  # a public test's line is no secret
    notes = ["x" * 1000, "Cell 3 raised ValueError: secret  =  square( 1.5 )"]
    notes += ["two\nlines\u202ereversed"]
    notes += [f"note {n}" for n in range(19)]
    result = report.tidy_result(_result("a", notes=notes), secrets)
    kept = result["notes"]
    assert len(kept) == report.MAX_NOTES and kept[-1] == "… and 15 more notes, not shown."
    assert len(kept[0]) == report.NOTE_CHARS and kept[0].endswith("…")
    assert kept[1] == "A note quoted hidden test code and was withheld."
    assert kept[2] == "two lines reversed"  # one line in the gradebook, read as stored
    quoted = _result("b")
    quoted["tests"][0]["message"] = "got assert secret == 2.25, 'floats'"
    quoted["tests"][0]["hint"] = "h"
    tidy = report.tidy_result(quoted, secrets)["tests"][0]
    assert (tidy["message"], tidy["hint"]) == ("This test's message was withheld.", "")


def test_file_names_for_rows_are_safe_and_distinct() -> None:
    names = ["alice", "alice (not-a-notebook)", "a\nb", "a_b", ".", "..", "x" * 250, "x" * 251]
    stems = [report.file_stem(name) for name in names]
    assert stems[:2] == names[:2]  # ordinary names are kept as they are
    assert len(set(stems)) == len(names)
    for stem in stems:
        assert "/" not in stem and "\n" not in stem and not stem.startswith(".")
        assert len(stem.encode()) <= 200


def test_a_stray_entry_never_takes_a_learners_row(tmp_path: Path) -> None:
    for name in ("alice.ipynb", "bob.ipynb", FORMULA + ".ipynb"):
        (tmp_path / name).write_text("{}")
    for name in ("alice", "alice (not-a-notebook)"):
        (tmp_path / name).write_text("not a notebook")
    found = {s.learner: (s.path.name, s.skipped) for s in run.find_submissions(tmp_path)}
    assert found == {
        "alice": ("alice.ipynb", ""),
        "alice (not-a-notebook)": ("alice", "not-a-notebook"),
        "alice (not-a-notebook) (not-a-notebook)": ("alice (not-a-notebook)", "not-a-notebook"),
        "bob": ("bob.ipynb", ""),
        FORMULA: (FORMULA + ".ipynb", ""),
    }


def test_rows_are_kept_as_they_come_and_a_stopped_run_grades_only_the_rest(
    tmp_path: Path,
) -> None:
    exercise = _exercise()
    subs = [Submission(n, tmp_path / f"{n}.ipynb", sha256=n) for n in ("ann", "ben", "cal")]
    book = run._Book(tmp_path, exercise, "key", ["ann", "ben", "cal"])
    book.add(_result("zed", status=["not-graded", "not-a-notebook"]))
    book.write()
    result = report.tidy_result(_result("ben", 1.0, sha256="ben"), frozenset())
    book.add(result)  # as a run adds each result: its files, its line, the gradebook
    report.append_journal(tmp_path, "key", result)
    book.write(state=False)  # the run is killed here: ann and cal were never finished
    rows = {r["learner"]: r for r in csv.DictReader((tmp_path / "gradebook.csv").open())}
    assert list(rows) == ["ann", "ben", "cal", "zed"]
    assert (rows["ann"]["status"], rows["ben"]["total"]) == ("pending", "1")
    assert (tmp_path / "feedback" / "ben.md").exists()
    assert not (tmp_path / "feedback" / "ann.md").exists()
    with (tmp_path / report.JOURNAL).open("a") as journal:
        journal.write('{"key": "key", "result": {"learner": "cal", "sha')  # cut off by the kill
    kept = report.previous_results(tmp_path, "key")
    assert list(kept) == ["ben"]  # no pending row, no skipped entry, no half line is reused
    assert report.previous_results(tmp_path, "another key") == {}
    again = run.to_grade(subs, kept)
    assert [s.learner for s in again] == ["ann", "cal"]
    # The next run writes the whole state again, the journal folded in.
    report.write_book(tmp_path, exercise, list(kept.values()), "key")
    assert not (tmp_path / report.JOURNAL).exists()
    assert list(json.loads((tmp_path / report.STATE).read_text())["results"]) == ["ben"]


def test_a_grader_error_is_graded_again_without_regrade() -> None:
    subs = [Submission(n, Path(f"{n}.ipynb"), sha256="same") for n in ("a", "b", "c")]
    previous = {
        "a": {"sha256": "same", "status": ["grader-error"]},
        "b": {"sha256": "same", "status": ["gave-up", "grader-error"]},
        "c": {"sha256": "same", "status": ["gave-up"]},  # the notebook's own doing: kept
    }
    assert [s.learner for s in run.to_grade(subs, previous)] == ["a", "b"]


def test_a_notebook_over_the_size_cap_is_not_run(tmp_path: Path) -> None:
    small, big = tmp_path / "small.ipynb", tmp_path / "big.ipynb"
    small.write_bytes(b"{}")
    big.write_bytes(b" " * 300_000)
    subs = [Submission("big", big), Submission("small", small)]
    run._refuse_too_large(subs, 0.25)
    assert [(s.learner, s.skipped) for s in subs] == [("big", "too-large"), ("small", "")]
    assert subs[0].reason.startswith("notebook over 0.25 MB (it is 0.286 MB)")
    row = run._skipped_row(_exercise(), subs[0])
    assert row["status"] == ["not-graded", "too-large"]
    assert row["notes"][0].startswith("Not graded: notebook over 0.25 MB")


def test_untouched_work_is_recognised_by_its_code_cells() -> None:
    def notebook(*cells: tuple[str, Any]) -> bytes:
        shaped = [{"cell_type": kind, "source": src, "outputs": []} for kind, src in cells]
        return json.dumps({"cells": shaped}).encode()

    given = notebook(("markdown", "# Q1"), ("code", ["def f():\n", "    ...\n"]))
    run_once = notebook(("markdown", "# Q1"), ("code", "def f():\n    ..."), ("code", ""))
    solved = notebook(("markdown", "# Q1"), ("code", "def f():\n    return 1"))
    assert run._code_cells(given) == run._code_cells(run_once) == ["def f():\n    ..."]
    assert run._code_cells(solved) != run._code_cells(given)
    assert run._code_cells(b"not json") is None


class _Process:
    def __init__(self) -> None:
        self.killed = False

    def kill(self) -> None:
        self.killed = True


def test_a_worker_stuck_far_past_the_notebook_timeout_is_killed() -> None:
    settings = Settings(_exercise(), GradeOptions(notebook_timeout=10.0), "http://127.0.0.1:1")
    pool = run._Pool(settings, [0])
    now = time.monotonic()
    limit = 2 * 10.0 + run.STUCK_GRACE
    busy, late, idle, starting = (_Process() for _ in range(4))
    task = run._Task(Submission("a", Path("a.ipynb")))
    pool.members = [
        run._Member(0, busy, None, ready=True, task=task, since=now - limit + 30),
        run._Member(1, late, None, ready=True, task=task, since=now - limit - 1),
        run._Member(2, idle, None, ready=True, since=now - limit - 1),  # waiting is fine
        run._Member(3, starting, None, since=now - limit - 1),
    ]
    pool.kill_stuck()
    assert [p.killed for p in (busy, late, idle, starting)] == [False, True, False, True]
    assert pool.members[1].stuck > limit
