"""labkit assign: masters in otter's format become learner, solution and test files."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest

from labkit.cli import build_parser, main
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


# ---------------------------------------------------------------- authoring that cannot leak

DOCS = PROJECT / "docs" / "authoring.md"


def docs_master(folder: Path) -> Path:
    """The minimal master of docs/authoring.md, built cell by cell from its fenced blocks."""
    text = DOCS.read_text(encoding="utf-8")
    name, _, rest = text.split("<!-- master: ", 1)[1].partition(" -->")
    body = rest.split("<!-- end master -->", 1)[0]
    kinds = {"raw": "raw", "markdown": "md", "python": "code"}
    cells = [
        (kinds[kind], source.strip("\n"))
        for kind, source in re.findall(r"^```(\w+)\n(.*?)^```$", body, re.M | re.S)
    ]
    return _master(folder, cells, name.removesuffix(".ipynb"))


def _fifth_exercise(tmp_path: Path, solution: str, *tests: str) -> Path:
    """A one-question master as an instructor new to the format might write it."""
    return _master(
        tmp_path,
        [
            ("raw", "# BEGIN QUESTION\nname: q1\npoints: 2"),
            ("md", "**Question 1 (2 points).** Write `count_words(text)`."),
            ("raw", "# BEGIN SOLUTION"),
            ("code", solution),
            ("raw", "# END SOLUTION"),
            ("raw", "# BEGIN TESTS"),
            *(("code", t) for t in tests),
            ("raw", "# END TESTS"),
            ("raw", "# END QUESTION"),
        ],
        "05-words",
    )


MARKED = (
    "def count_words(text):\n    # BEGIN SOLUTION\n    return len(text.split())\n    # END SOLUTION"
)


def test_the_minimal_master_in_the_docs_is_accepted_without_a_warning(tmp_path: Path) -> None:
    master = docs_master(tmp_path)
    assert [c.cell_type for c in _cells(master)].count("raw") == 13
    root = tmp_path / "course"
    generated = assign.assign([master], root, say=False)[0]
    assert generated.warnings == []
    exercise = generated.exercise
    assert [(q.name, q.points) for q in exercise.questions] == [("q1", 2.0), ("q2", 1.0)]
    assert [t.points for t in exercise.question("q1").tests] == [1.0, 1.0]
    assert [t.hidden for q in exercise.questions for t in q.tests] == [False, True, False, True]
    learner = _sources(root / "exercises/05-words.ipynb")
    assert "text.split()" not in learner and "max(" not in learner
    assert "longest = ..." in learner and "NotImplementedYet" in learner
    assert "max(SENTENCE.split(), key=len)" in _sources(root / "solutions/05-words.ipynb")


def test_a_solution_cell_without_in_code_markers_is_refused(tmp_path: Path) -> None:
    """The whole cell would have reached learners, answer included."""
    unmarked = "def count_words(text):\n    return len(text.split())"
    master = _fifth_exercise(tmp_path, unmarked, "assert count_words('a b') == 2")
    root = tmp_path / "course"
    with pytest.raises(MasterFormatError) as caught:
        assign.assign([master], root, say=False)
    message = str(caught.value)
    assert "05-words.ipynb, cell 4" in message  # the master and the cell
    assert "# BEGIN SOLUTION" in message and "# SOLUTION" in message  # what to do
    assert "Nothing was written" in message and not root.exists()


@pytest.mark.parametrize(
    "solution",
    [
        "def count_words(text):\n    # begin solution\n    return len(text.split())\n    # end solution",
        "def count_words(text):\n    return len(text.split())  # solution",
        "def count_words(text):\n    # BEGIN SOLUTION:\n    return len(text.split())",
        "# BEGIN SOLUTION\ndef count_words(text):\n    return len(text.split())\n# END SOLUTION\nx = 1  # Solution",
    ],
)
def test_a_misspelt_marker_is_refused_rather_than_leaked(tmp_path: Path, solution: str) -> None:
    master = _fifth_exercise(tmp_path, solution, "assert count_words('a b') == 2")
    with pytest.raises(MasterFormatError, match="looks like a solution marker"):
        assign.parse_master(master)


def test_a_marker_in_a_prompt_cell_is_refused(tmp_path: Path) -> None:
    master = _master(
        tmp_path,
        [
            ("raw", "# BEGIN QUESTION\nname: q1"),
            ("raw", "# BEGIN PROMPT"),
            ("code", "def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION"),
            ("raw", "# END PROMPT"),
            ("raw", "# END QUESTION"),
        ],
    )
    with pytest.raises(MasterFormatError, match=r"cell 3.*looks like a solution marker"):
        assign.parse_master(master)


def test_a_solution_that_does_not_parse_is_named_without_a_runtime(tmp_path: Path) -> None:
    broken = "def count_words(text):\n    # BEGIN SOLUTION\n    return len(text.split()\n    # END SOLUTION"
    master = _fifth_exercise(tmp_path, broken, "assert count_words('a b') == 2")
    with pytest.raises(MasterFormatError, match=r"cell 4: the solution code does not parse") as e:
        assign.assign([master], tmp_path / "course", say=False, validate=True)
    assert "return len(text.split()" in str(e.value)
    assert not (tmp_path / "course").exists()


def test_ipython_syntax_in_a_master_is_not_a_syntax_error(tmp_path: Path) -> None:
    master = _master(tmp_path, [("code", "%time x = 1\n!echo hi\nlen?")])
    assert assign.parse_master(master).warnings == []


def test_a_learner_cell_that_does_not_parse_is_a_warning(tmp_path: Path) -> None:
    cut = "if True:\n    # BEGIN SOLUTION NO PROMPT\n    x = 1\n    # END SOLUTION"
    warnings = assign.parse_master(_master(tmp_path, [("code", cut)])).warnings
    assert len(warnings) == 1 and "learner version of this cell does not parse" in warnings[0]


@pytest.mark.parametrize(
    ("test", "names"),
    [
        ("assert count_wrds('a') == 1", "`count_wrds`"),
        ("def test_it(count_word):\n    assert count_word('a') == 1", "`count_word`"),
        ("assert helper(count_words) == 1", "`helper`"),
    ],
)
def test_a_test_using_an_undefined_name_is_warned_about(
    tmp_path: Path, test: str, names: str
) -> None:
    master = _fifth_exercise(tmp_path, MARKED, "assert count_words('a b') == 2", test)
    warnings = assign.parse_master(master).warnings
    assert [w for w in warnings if "neither the test nor the solution notebook" in w] == [
        f"q1.2 uses {names}, which neither the test nor the solution notebook defines: it "
        "would fail for everyone. Import or define it in the test, or fix the spelling."
    ]


def test_names_a_test_defines_itself_or_imports_are_not_warned_about(tmp_path: Path) -> None:
    test = "\n".join(
        [
            "import json",
            "from pathlib import Path as P",
            "words = [w for w in 'a b'.split()]",
            "try:",
            "    count_words(None)",
            "except TypeError as exc:",
            "    error = exc",
            "def test_it(count_words):",
            "    assert count_words(json.dumps(P('a').name)) == len(words) - 1",
        ]
    )
    master = _fifth_exercise(tmp_path, MARKED, test)
    assert assign.parse_master(master).warnings == []


def _points_master(tmp_path: Path, question: str, heading: str, *tests: str) -> Path:
    cells: list[tuple[str, str]] = [
        ("raw", "# BEGIN QUESTION\nname: q1" + question),
        ("md", heading),
        ("code", "x = 1  # SOLUTION"),
        ("raw", "# BEGIN TESTS"),
    ]
    for points in tests:
        config = f'""" # BEGIN TEST CONFIG\n{points}\n""" # END TEST CONFIG\n' if points else ""
        cells.append(("code", config + "assert x == 1"))
    cells += [("raw", "# END TESTS"), ("raw", "# END QUESTION")]
    return _master(tmp_path, cells)


@pytest.mark.parametrize(
    ("question", "heading", "tests", "warning"),
    [
        ("", "Question 1", ["", ""], "neither the question nor its tests give `points:`"),
        (
            "",
            "Question 1 (2 points)",
            ["", ""],
            "says (2 points), but it is worth 1 (no points given anywhere: 1 by default)",
        ),
        (
            "\npoints: 3",
            "Q1",
            ["points: 1", "points: 1"],
            "`points: 3` in # BEGIN QUESTION is ignored",
        ),
        (
            "",
            "Q1",
            ["points: 2", ""],
            "q1.2 give no `points:` and the question gives no `points:` to share",
        ),
        ("\npoints: 2", "Q1", ["points: 2", ""], "q1.2 give no `points:` and the other tests"),
        ("\npoints: [1, 2]", "Q1", ["points: 3", ""], "overrides the points of q1.1"),
        ("\npoints: 2", "**Q1** [3 pts]", ["", ""], "its text says [3 pts], but it is worth 2"),
    ],
)
def test_points_that_disagree_are_warned_about(
    tmp_path: Path, question: str, heading: str, tests: list[str], warning: str
) -> None:
    warnings = assign.parse_master(_points_master(tmp_path, question, heading, *tests)).warnings
    assert any(warning in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("question", "heading", "tests"),
    [
        ("\npoints: 2", "Question 1 (2 points)", ["", ""]),  # shared evenly
        ("", "Question 1 (1 point)", ["points: 0.5", "points: 0.5"]),  # summed
        ("\npoints: 3", "Question 1 (3 points)", ["points: 1", ""]),  # the rest shared
        ("\npoints: 3", "Question 1 (3 points)", ["points: 1", "points: 2"]),  # they agree
    ],
)
def test_points_that_agree_give_no_warning(
    tmp_path: Path, question: str, heading: str, tests: list[str]
) -> None:
    assert assign.parse_master(_points_master(tmp_path, question, heading, *tests)).warnings == []


def test_the_course_masters_give_no_warning() -> None:
    for master in assign.masters_in(PROJECT / "masters"):
        assert assign.parse_master(master).warnings == [], master.name


def test_unknown_settings_are_warned_about(tmp_path: Path) -> None:
    master = _master(
        tmp_path,
        [
            ("raw", "# ASSIGNMENT CONFIG\nfiles: []\ngenerate: true"),
            ("raw", "# BEGIN QUESTION\nname: q1\npoints: 1\nexport: true\npoint: 2"),
            ("code", "x = 1  # SOLUTION"),
            ("raw", "# BEGIN TESTS"),
            ("code", '""" # BEGIN TEST CONFIG\nhiden: true\n""" # END TEST CONFIG\nassert x'),
            ("raw", "# END TESTS"),
            ("raw", "# END QUESTION"),
        ],
    )
    warnings = "\n".join(assign.parse_master(master).warnings)
    assert "does not use these ASSIGNMENT CONFIG keys: generate" in warnings
    assert "`export:` is an otter setting labkit ignores" in warnings
    assert "`point:` is not a setting here" in warnings and "`hiden:` is not a setting" in warnings


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('hidden: "false"', "must be true or false"),
        ('points: "2"', "must be a number"),
        ("points: -1", "must not be negative"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(tmp_path: Path, config: str, message: str) -> None:
    master = _points_master(tmp_path, "", "Q1", config)
    with pytest.raises(MasterFormatError, match=message):
        assign.parse_master(master)


def test_check_names_force_for_files_edited_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masters = tmp_path / "masters"
    masters.mkdir()
    shutil.copy(TOY, masters)
    shutil.copy(TOY.parent / "toy-data.txt", masters)
    root = tmp_path / "course"
    assign.assign([masters / "toy.ipynb"], root, say=False)
    learner = root / "exercises/toy.ipynb"
    nb = nbformat.read(str(learner), as_version=4)
    nb.cells[0].source += "\nmy own note"
    nbformat.write(nb, str(learner))
    capsys.readouterr()
    assert main(["assign", str(masters), "--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "out of date: exercises/toy.ipynb (edited by hand)" in out
    assert f"labkit assign {masters} --force" in out
    assert main(["assign", str(masters), "--root", str(root), "--no-validate"]) == 1  # refused


def test_validation_is_what_the_command_does_unless_told_not_to() -> None:
    parser = build_parser("assign")
    assert parser.parse_args(["assign", "masters"]).no_validate is False
    assert parser.parse_args(["assign", "masters", "--no-validate"]).no_validate is True
