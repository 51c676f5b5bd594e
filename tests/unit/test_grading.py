"""Grading without a runtime: finding keys and submissions, check() and the in-kernel test runner."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labkit.course import checks
from labkit.errors import LabkitError
from labkit.grader import assign, grading

DATA = Path(__file__).resolve().parents[1] / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"


def test_regrade_selects_everything() -> None:
    found = [grading.Submission("a", Path("a.ipynb"), "1"), grading.Submission("b", Path("b"), "2")]
    previous = {"a": {"sha256": "1"}, "b": {"sha256": "old"}}
    assert [s.learner for s in grading.to_grade(found, previous)] == ["b"]
    assert [s.learner for s in grading.to_grade(found, previous, regrade=True)] == ["a", "b"]


def test_finding_keys_and_submissions(tmp_path: Path) -> None:
    keys = tmp_path / assign.KEY_DIR
    keys.mkdir(parents=True)
    for name in ("01-apis", "02-prompting"):
        (keys / f"{name}.json").write_text("{}")
    assert grading.find_key(tmp_path, "1").stem == "01-apis"
    assert grading.find_key(tmp_path, "02-prompting").stem == "02-prompting"
    with pytest.raises(LabkitError, match="available: 01-apis, 02-prompting"):
        grading.find_key(tmp_path, "7")
    subs = tmp_path / "subs"
    for folder in ("bob", "two", "empty", "dup", ".ipynb_checkpoints"):
        (subs / folder).mkdir(parents=True)
    for name in ("alice.ipynb", "bob/ex.ipynb", "notes.txt", "Carol.IPYNB", ".eve.ipynb"):
        (subs / name).write_text("{}")
    for name in ("two/a.ipynb", "two/b.ipynb", "dup.ipynb", "dup/notebook.ipynb"):
        (subs / name).write_text("{}")
    (subs / "mallory.ipynb").symlink_to(subs / "alice.ipynb")
    found = {s.learner: (s.path.name, s.skipped) for s in grading.find_submissions(subs)}
    assert found == {
        ".eve.ipynb": (".eve.ipynb", "hidden-name"),
        ".ipynb_checkpoints": (".ipynb_checkpoints", "hidden-name"),
        "Carol": ("Carol.IPYNB", ""),
        "alice": ("alice.ipynb", ""),
        "bob": ("ex.ipynb", ""),
        "dup": ("notebook.ipynb", "duplicate-name"),
        "dup.ipynb": ("dup.ipynb", "duplicate-name"),
        "empty": ("empty", "no-notebook"),
        "mallory.ipynb": ("mallory.ipynb", "link"),
        "notes.txt": ("notes.txt", "not-a-notebook"),
        "two": ("two", "several-notebooks"),
    }
    assert len(found) == len(list(subs.iterdir()))  # one row per entry, nothing dropped
    with pytest.raises(LabkitError, match="not a folder"):
        grading.find_submissions(tmp_path / "nowhere")


def test_sandbox_refuses_to_run_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    exercise = assign.parse_master(TOY).exercise
    with pytest.raises(LabkitError, match=r"needs root on Linux.*--no-sandbox"):
        grading.grade(tmp_path, exercise, tmp_path / "out", runtime_url="http://127.0.0.1:9")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ check() in-process


@pytest.fixture
def toy_checks(tmp_path: Path) -> None:
    assign.assign([TOY], tmp_path, say=False)
    checks.use_tests(tmp_path / "exercises/tests/toy.json")


def test_check_passes_a_correct_answer(toy_checks: None) -> None:
    def square(x: float) -> float:
        return x * x

    result = checks._check("q1", {"square": square})
    assert result.passed and bool(result)
    assert (result.score, result.possible, result.hidden_tests) == (2.0, 2.0, 1)
    assert "q1: 2 of 2 tests passed" in repr(result)
    assert "labkit-check" in result._repr_html_()


def test_check_explains_a_wrong_answer(toy_checks: None) -> None:
    result = checks._check("q1", {"square": lambda x: x + x})
    output_test, function_test = result.results
    assert output_test.status == "failed"
    assert output_test.message == "Expected 9, got 6."
    assert function_test.status == "failed"
    assert function_test.message == "square(-2) should be 4"  # the author's own words
    assert not result.passed and result.score == 0


def test_check_names_common_mistakes(toy_checks: None) -> None:
    missing = checks._check("q1", {})
    assert missing.results[0].status == "error"
    assert "run the cell that defines it" in missing.results[0].hint
    todo = checks._check("q2", {"greeting": ...})
    assert todo.results[0].status == "not-implemented"
    assert "`greeting` is still `...`" in todo.results[0].message
    assert "not implemented yet" in repr(todo)

    def unfinished(x: float) -> float:
        raise checks.NotImplementedYet("q1 is not written yet: replace this line")

    stub = checks._check("q1", {"square": unfinished})
    assert {r.status for r in stub.results} == {"not-implemented"}
    with pytest.raises(LabkitError, match="no question 'q9'"):
        checks._check("q9", {})


def test_check_runs_on_a_copy_of_your_variables(toy_checks: None) -> None:
    namespace: dict[str, Any] = {"greeting": "hello", "shout": lambda t: t.upper() + "!"}
    checks._check("q2", namespace)
    assert set(namespace) == {"greeting", "shout"}  # the test's own names did not leak in


def _graded(spec: dict[str, Any], namespace: dict[str, Any]) -> dict[str, Any]:
    """Run one test as the grader's tester does (its result as a dict)."""
    result = checks.run_test(
        spec["test"], namespace, question=spec["question"], placeholders=[], grading=True
    )
    return dataclasses.asdict(result)


def test_hidden_failures_are_reported_without_details_but_kept_for_the_instructor() -> None:
    spec = {
        "question": "q1",
        "placeholders": [],
        "test": {
            "name": "q1.9",
            "code": "x",
            "kind": "output",
            "expected": "42\n",
            "points": 2.0,
            "hidden": True,
            "description": "secret",
        },
    }
    outcome = _graded(spec, {"x": 41})
    assert outcome["status"] == "failed" and outcome["earned"] == 0
    assert "42" not in outcome["message"] and "41" not in outcome["message"]
    assert "41" in outcome["detail"]  # the instructor sees what went wrong
    outcome = _graded(spec, {"x": 42})
    assert outcome["status"] == "passed" and outcome["earned"] == 2.0


def test_the_submissions_folder_is_blanked_from_the_command_line(tmp_path: Path) -> None:
    secret = str(tmp_path / "class-of-2026")
    code = (
        "import sys; from labkit.grader.cli import hide_from_command_line as hide\n"
        "done = hide(sys.argv[1])\n"
        "seen = open('/proc/self/cmdline', 'rb').read()\n"
        "print(done, sys.argv[1].encode() in seen, b'*' * len(sys.argv[1]) in seen)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code, secret], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["True", "False", "True"]


def test_the_grader_keeps_only_what_a_kernel_cannot_forge() -> None:
    from labkit.grader.channel import _trusted, hidden_lines

    spec = {"name": "q1.3", "question": "q1", "points": 1.0, "earned": 0.0, "hidden": True}
    result = {**spec, "description": "floats", "hint": ""}
    secret = 'assert square(1.5) == 2.25, "square(1.5) should be 2.25"'
    tests = [
        {"test": {"code": secret, "hidden": True}},
        {"test": {"code": "square(3)", "hidden": False}},
    ]
    secrets = hidden_lines(tests)
    assert secrets == {secret}
    forged = {"status": "passed", "earned": 99, "message": secret, "name": "other"}
    kept = _trusted(result, forged, "Think of floats.", secrets)
    assert (kept["name"], kept["status"], kept["earned"], kept["message"]) == (
        "q1.3",
        "passed",
        1.0,
        "",
    )
    loud = {"status": "error", "message": "The hidden test stopped with " + secret}
    assert (
        _trusted(result, loud, "", secrets)["message"] == "The hidden test stopped with an error."
    )
    named = {"status": "error", "message": "The hidden test stopped with ZeroDivisionError."}
    assert "ZeroDivisionError" in _trusted(result, named, "", secrets)["message"]
    odd = _trusted(result, {"status": "owned", "earned": 5}, "hint", secrets)
    assert (odd["status"], odd["earned"], odd["hint"]) == ("error", 0.0, "hint")
    public = {**result, "hidden": False}
    quoting = {"status": "failed", "message": "you said: " + secret}
    assert "withheld" in _trusted(public, quoting, "", secrets)["message"]
    plain = {"status": "failed", "message": "Expected 9, got 6."}
    assert _trusted(public, plain, "", secrets)["message"] == "Expected 9, got 6."


def test_hidden_failures_carry_no_learner_text() -> None:
    spec = {"question": "q1", "placeholders": [], "test": {"name": "q1.3", "kind": "output"}}
    spec["test"] |= {"code": "square(1.5)", "hidden": True, "points": 1.0, "description": ""}

    class Sneaky(Exception):
        pass

    def square(x: float) -> float:
        raise Sneaky("the test's code, stolen")

    outcome = _graded(spec, {"square": square})
    assert outcome["message"] == "The hidden test stopped with an error."
    assert "stolen" not in outcome["message"] + outcome["hint"]

    def square_zero(x: float) -> float:
        raise ZeroDivisionError("stolen too")

    outcome = _graded(spec, {"square": square_zero})
    assert outcome["message"] == "The hidden test stopped with ZeroDivisionError."
