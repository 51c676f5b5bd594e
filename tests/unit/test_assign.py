"""labkit assign: masters in otter's format become learner, solution and test files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest

from labkit.cli import main
from labkit.grader import assign, parse
from labkit.grader.assign import MasterFormatError, OverwriteRefused

DATA = Path(__file__).resolve().parents[1] / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"
PROJECT = Path(__file__).resolve().parents[2]


def _cells(path: Path) -> list[Any]:
    return list(nbformat.read(str(path), as_version=4).cells)


def _sources(path: Path) -> str:
    return "\n".join(c.source for c in _cells(path))


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A course folder with the toy exercise generated into it."""
    assign.assign([TOY], tmp_path, say=False)
    return tmp_path


def test_writes_four_files_and_the_data_file(course: Path) -> None:
    for rel in (
        "exercises/toy.ipynb",
        "exercises/tests/toy.json",
        "exercises/toy-data.txt",
        "solutions/toy.ipynb",
        "solutions/toy-data.txt",
        "grading/hidden/toy.json",
    ):
        assert (course / rel).is_file(), rel


def test_output_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assign.assign([TOY], first, say=False)
    assign.assign([TOY], second, say=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    # Generating again over the same folder changes nothing either.
    before = {rel: (first / rel).stat().st_mtime_ns for rel in files}
    assign.assign([TOY], first, say=False)
    assert before == {rel: (first / rel).stat().st_mtime_ns for rel in files}


def test_learner_version_has_placeholders_not_solutions(course: Path) -> None:
    learner = course / "exercises/toy.ipynb"
    text = _sources(learner)
    assert "return x * x" not in text
    assert "read_text().splitlines()" not in text
    assert "2.25" not in text and "HELLO" not in text  # hidden tests stay out
    assert 'raise NotImplementedYet("q1 is not written yet' in text
    assert "greeting = ..." in text
    assert "from labkit.errors import NotImplementedYet" in text
    assert 'use_tests("tests/toy.json")' in text
    checks = [c.source for c in _cells(learner) if c.source.startswith("check")]
    assert checks == ['check("q1")', 'check("q2")', 'check("q3")', "check_all()"]
    assert assign.MANUAL_PROMPT in text  # the written question gets a place to answer
    nb = json.loads(learner.read_text())
    assert nb["metadata"]["labkit"] == {"exercise": "toy", "version": "learner"}
    for cell in nb["cells"]:
        assert cell.get("outputs", []) == []
        assert cell.get("execution_count") is None
        assert cell["metadata"] == {}
    raw = [c for c in nb["cells"] if c["cell_type"] == "raw"]
    assert raw == []  # the marker cells are gone


def test_solution_version_keeps_answers_without_markers(course: Path) -> None:
    text = _sources(course / "solutions/toy.ipynb")
    assert "return x * x" in text
    assert "SOLUTION" not in text.replace("**SOLUTION:**", "")
    assert "NotImplementedYet" not in text
    assert "assert square(1.5)" not in text  # tests live in the key, not in the notebook


def test_public_tests_leave_hidden_ones_out(course: Path) -> None:
    public = json.loads((course / "exercises/tests/toy.json").read_text())
    key = json.loads((course / "grading/hidden/toy.json").read_text())
    public_names = [t["name"] for q in public["questions"] for t in q["tests"]]
    all_tests = [t for q in key["questions"] for t in q["tests"]]
    assert public_names == ["q1.1", "q1.2", "q2.1", "q3.1"]
    assert [t["name"] for t in all_tests if t["hidden"]] == ["q1.3", "q2.2", "q3.2"]
    assert all(not t["hidden"] for q in public["questions"] for t in q["tests"])
    assert "2.25" not in json.dumps(public) and "HELLO" not in json.dumps(public)
    assert [q["hidden_tests"] for q in public["questions"]] == [1, 1, 1, 0]
    by_name = {t["name"]: t for t in all_tests}
    assert by_name["q1.1"]["kind"] == "output" and by_name["q1.1"]["expected"] == "9\n"
    assert by_name["q1.2"]["kind"] == "function"
    assert (
        "# IGNORE" not in by_name["q1.2"]["code"]
        and "test_negative(square)" not in (by_name["q1.2"]["code"].splitlines()[-1])
    )
    assert by_name["q1.3"]["failure_message"] == "Does it work for floats such as 1.5?"
    exercise = assign.load_key(course / "grading/hidden/toy.json")
    assert [q.points for q in exercise.questions] == [3.0, 2.0, 2.0, 0.0]
    assert exercise.possible == 7.0
    assert exercise.question("q2").placeholders == ["greeting"]


def _master(tmp_path: Path, cells: list[tuple[str, str]], name: str = "m") -> Path:
    nb = nbformat.v4.new_notebook()
    makers = {
        "raw": nbformat.v4.new_raw_cell,
        "code": nbformat.v4.new_code_cell,
        "md": nbformat.v4.new_markdown_cell,
    }
    nb.cells = [makers[kind](source) for kind, source in cells]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_every_solution_marker(tmp_path: Path) -> None:
    solution = "\n".join(
        [
            "import random",
            "random.seed(1)  # SEED",
            "answer = 6 * 7  # SOLUTION",
            "helper = 1  # SOLUTION NO PROMPT",
            "def area(r):",
            "    # BEGIN SOLUTION NO PROMPT",
            "    return 3.14 * r * r",
            "    # END SOLUTION",
            '    """ # BEGIN PROMPT',
            "    # compute the area here",
            "    return 0",
            '    """; # END PROMPT',
            "if True:",
            "    # BEGIN SOLUTION",
            "    total = 2",
            "    # END SOLUTION",
            "    print(total)",
        ]
    )
    master = _master(
        tmp_path,
        [
            ("md", "```otter\n# ASSIGNMENT CONFIG\ncheck_all_cell: false\n```"),
            ("raw", "# BEGIN QUESTION\nname: q1\npoints: 4"),
            ("raw", "# BEGIN PROMPT"),
            ("md", "Only learners see this."),
            ("raw", "# END PROMPT"),
            ("raw", "# BEGIN SOLUTION"),
            ("code", solution),
            ("raw", "# END SOLUTION"),
            ("code", "## Ignore ##\nprint('instructor scratch')"),
            ("raw", "# BEGIN TESTS"),
            ("code", "# HIDDEN\nassert answer == 42"),
            (
                "code",
                '""" # BEGIN TEST CONFIG\npoints: 3\n""" # END TEST CONFIG\nassert area(1) > 3',
            ),
            ("raw", "# END TESTS"),
            ("raw", "# END QUESTION"),
        ],
    )
    generated = assign.parse_master(master)
    learner = json.loads(generated.files[generated.learner_path])
    code = "\n".join("".join(c["source"]) for c in learner["cells"])
    assert "answer = ..." in code and "6 * 7" not in code
    assert "helper" not in code and "random.seed(1)" not in code
    assert "# compute the area here\n    return 0" in code and "3.14" not in code
    assert "if True:\n    ...\n    print(total)" in code
    assert "instructor scratch" not in code
    assert "Only learners see this." in code
    assert "check_all()" not in code  # turned off in the (fenced) assignment config
    solution_nb = json.loads(generated.files[generated.solution_path])
    solved = "\n".join("".join(c["source"]) for c in solution_nb["cells"])
    assert "answer = 6 * 7" in solved and "random.seed(1)" in solved
    assert "Only learners see this." not in solved and "# compute the area" not in solved
    question = generated.exercise.question("q1")
    assert [t.hidden for t in question.tests] == [True, False]
    # Otter's rule: the question's 4 points minus the 3 given leave 1 for the other test.
    assert [t.points for t in question.tests] == [1.0, 3.0]
    assert question.placeholders == ["answer"]


@pytest.mark.parametrize(
    ("question_points", "test_points", "expected"),
    [
        (None, [None, None], [0.5, 0.5]),  # nothing given: the question is worth 1
        (4, [None, None], [2.0, 2.0]),  # question points shared equally
        (6, [2, 2, None, None], [2, 2, 1.0, 1.0]),  # otter's worked example
        (None, [2, None], [2, 0.0]),  # only some tests have points: the rest are worth 0
        (None, [0, None, None], [0, 0.5, 0.5]),  # only zeros given: the question is worth 1
        ([1, 2], [None, None], [1.0, 2.0]),  # a list gives each test its points
    ],
)
def test_points_follow_otters_rules(
    question_points: Any, test_points: list[float | None], expected: list[float]
) -> None:
    tests = [
        assign.TestCase(f"t{i}", "pass", "output", -1.0 if p is None else float(p))
        for i, p in enumerate(test_points)
    ]
    assert parse._resolve_points(question_points, tests, "q", "m") == expected


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([("raw", "# BEGIN QUESTION\nname: q1")], "never closed"),
        ([("raw", "# BEGIN QUESTION\npoints: 1"), ("raw", "# END QUESTION")], "needs `name:`"),
        ([("raw", "# BEGIN SOLUTION")], "outside a question"),
        (
            [("raw", "# BEGIN QUESTION\nname: q1"), ("code", "x = 1\n# END SOLUTION")],
            "without # BEGIN SOLUTION",
        ),
        (
            [
                ("raw", "# BEGIN QUESTION\nname: q1"),
                ("raw", "# END QUESTION"),
                ("raw", "# BEGIN QUESTION\nname: q1"),
                ("raw", "# END QUESTION"),
            ],
            "used twice",
        ),
        ([("raw", "# ASSIGNMENT CONFIG\n[unclosed")], "does not parse"),
    ],
)
def test_bad_masters_say_what_and_where(
    tmp_path: Path, cells: list[tuple[str, str]], message: str
) -> None:
    master = _master(tmp_path, cells)
    root = tmp_path / "course"
    with pytest.raises(MasterFormatError, match=message) as caught:
        assign.assign([master], root, say=False)
    assert "m.ipynb" in str(caught.value)
    assert not root.exists()  # nothing partial was written


def test_drift_is_detected(course: Path) -> None:
    assert assign.drift(TOY, course) == []
    assign.assert_in_sync(TOY, course)
    learner = course / "exercises/toy.ipynb"
    nb = nbformat.read(str(learner), as_version=4)
    nb.cells[0].source += "\nedited by hand"
    nbformat.write(nb, str(learner))
    (course / "solutions/toy-data.txt").write_text("changed\n")
    assert assign.drift(TOY, course) == ["exercises/toy.ipynb", "solutions/toy-data.txt"]
    with pytest.raises(AssertionError, match=r"exercises/toy\.ipynb"):
        assign.assert_in_sync(TOY, course)
    (course / "grading/hidden/toy.json").unlink()
    assert "grading/hidden/toy.json" in assign.drift(TOY, course)


def test_never_overwrites_edited_work(course: Path) -> None:
    learner = course / "exercises/toy.ipynb"
    nb = nbformat.read(str(learner), as_version=4)
    nb.cells[2].source = "# my own work"
    nbformat.write(nb, str(learner))
    edited = learner.read_bytes()
    with pytest.raises(OverwriteRefused, match=r"exercises/toy\.ipynb"):
        assign.assign([TOY], course, say=False)
    assert learner.read_bytes() == edited
    assign.assign([TOY], course, force=True, say=False)
    assert learner.read_bytes() != edited
    assert assign.drift(TOY, course) == []


def test_running_the_notebook_is_not_editing_it(course: Path) -> None:
    learner = course / "exercises/toy.ipynb"
    nb = nbformat.read(str(learner), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nb.cells[2].execution_count = 1
    nbformat.write(nb, str(learner))
    assign.assign([TOY], course, say=False)  # outputs only: safe to regenerate
    assert assign.drift(TOY, course) == []


def test_unknown_files_are_not_overwritten(tmp_path: Path) -> None:
    learner = tmp_path / "exercises/toy.ipynb"
    learner.parent.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), str(learner))
    with pytest.raises(OverwriteRefused):
        assign.assign([TOY], tmp_path, say=False)


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.txt"
    assign.write_atomic(target, b"first")

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        assign.write_atomic(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # no temporary file left


def test_cli_assign_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masters = tmp_path / "masters"
    masters.mkdir()
    (masters / "toy.ipynb").write_bytes(TOY.read_bytes())
    (masters / "toy-data.txt").write_bytes((TOY.parent / "toy-data.txt").read_bytes())
    root = tmp_path / "course"
    assert main(["assign", str(masters), "--root", str(root), "--no-validate"]) == 0
    out = capsys.readouterr().out
    assert "toy: 4 questions, 7 points" in out
    assert "Not validated (--no-validate)" in out  # skipping the grading is said, not silent
    assert main(["assign", str(masters), "--root", str(root), "--check"]) == 0
    (root / "exercises/tests/toy.json").write_text("{}")
    assert main(["assign", str(masters), "--root", str(root), "--check"]) == 1
    assert "out of date: exercises/tests/toy.json" in capsys.readouterr().out
    assert main(["assign", str(tmp_path / "nothing.txt")]) == 1  # a clear error, not a crash


@pytest.mark.skipif(
    not list((PROJECT / "masters").glob("*.ipynb")), reason="the course has no masters yet"
)
def test_course_exercises_match_their_masters() -> None:
    """exercises/, solutions/ and grading/ must be regenerated whenever a master changes."""
    assign.assert_in_sync(PROJECT / "masters", PROJECT)


def test_a_hole_in_a_function_with_a_multiline_signature_raises_not_implemented() -> None:
    from labkit.grader.versions import _inside_function

    cell = [
        "def robust_chat(",
        "    base_url: str,",
        "    prompt: str,",
        ") -> str:",
        "    return base_url + prompt",
        "x = 1",
    ]
    assert _inside_function(cell, 4)
    assert not _inside_function(cell, 5)


def test_manual_questions_keep_their_points(tmp_path: Path) -> None:
    master = _master(
        tmp_path,
        [
            ("raw", "# BEGIN QUESTION\nname: q1\npoints: 2"),
            ("code", "x = 1"),
            ("raw", "# BEGIN TESTS"),
            ("code", "assert x == 1"),
            ("raw", "# END TESTS"),
            ("raw", "# END QUESTION"),
            ("raw", "# BEGIN QUESTION\nname: q2\nmanual: true\npoints: 3"),
            ("md", "Explain your choice."),
            ("raw", "# END QUESTION"),
        ],
    )
    exercise = assign.parse_master(master).exercise
    assert exercise.question("q2").points == 3.0  # worth what the master says
    assert exercise.possible == 2.0  # automatic grading still counts only q1
    public = {q["name"]: q for q in exercise.to_public()["questions"]}
    assert public["q2"]["points"] == 3.0 and public["q2"]["manual"]
