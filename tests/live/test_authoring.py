"""labkit assign grades each master's solution on the runtime before writing anything.

The masters here are the minimal master of docs/authoring.md, and the "fifth exercise" an
instructor new to the format might write: a public test calling a misspelt name and a
hidden test its own solution fails. Validation uses the grader's own code, so these runs
cost one small notebook each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit import discovery
from labkit.cli import main
from labkit.grader import assign

PROJECT = Path(__file__).resolve().parents[2]
DOCS = PROJECT / "docs" / "authoring.md"
TIMEOUT = 120.0  # seconds per cell and test: generous on a busy machine, never reached here


def docs_master(folder: Path) -> Path:
    """The minimal master of docs/authoring.md, built cell by cell from its fenced blocks."""
    text = DOCS.read_text(encoding="utf-8")
    name, _, rest = text.split("<!-- master: ", 1)[1].partition(" -->")
    body = rest.split("<!-- end master -->", 1)[0]
    makers = {
        "raw": nbformat.v4.new_raw_cell,
        "markdown": nbformat.v4.new_markdown_cell,
        "python": nbformat.v4.new_code_cell,
    }
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        makers[kind](source.strip("\n"))
        for kind, source in re.findall(r"^```(\w+)\n(.*?)^```$", body, re.M | re.S)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, str(path))
    return path


def _fifth_exercise(folder: Path) -> Path:
    """A master with a public test on a misspelt name and a hidden test the solution fails."""
    nb = nbformat.v4.new_notebook()
    raw, code, md = (
        nbformat.v4.new_raw_cell,
        nbformat.v4.new_code_cell,
        nbformat.v4.new_markdown_cell,
    )
    nb.cells = [
        raw("# BEGIN QUESTION\nname: q1\npoints: 3"),
        md("**Question 1 (3 points).** Write `count_words(text)`."),
        raw("# BEGIN SOLUTION"),
        code(
            "def count_words(text):\n    # BEGIN SOLUTION\n"
            "    return len(text.split(' '))\n    # END SOLUTION"
        ),
        raw("# END SOLUTION"),
        raw("# BEGIN TESTS"),
        code("assert count_words('one two') == 2"),
        code("assert count_wrds('one') == 1"),
        code(
            '""" # BEGIN TEST CONFIG\nhidden: true\n'
            "failure_message: Split on any whitespace.\n"
            '""" # END TEST CONFIG\n'
            'assert count_words("tab\\there") == 2, "a tab separates words too"'
        ),
        raw("# END TESTS"),
        raw("# END QUESTION"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "05-words.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_the_minimal_master_validates_once(
    tmp_path: Path, rt: discovery.Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    master = docs_master(tmp_path / "masters")
    root = tmp_path / "course"
    args = ["assign", str(master), "--root", str(root), "--runtime", rt.url]
    assert main([*args, "--timeout", str(TIMEOUT)]) == 0
    out = capsys.readouterr().out
    assert "05-words: grading its solution against its 4 tests" in out
    assert "05-words: the solution gets 3/3" in out
    assert (root / "exercises/05-words.ipynb").is_file()
    record = json.loads((root / assign.VALIDATED).read_text())
    assert list(record) == ["05-words"]
    # Unchanged: not graded again. A test changed: graded again.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "already validated" in out and "grading its solution" not in out
    nb = nbformat.read(str(master), as_version=4)
    hidden = next(c for c in nb.cells if c.source.startswith("# HIDDEN"))
    hidden.source = hidden.source.replace("by their length", "by length")
    nbformat.write(nb, str(master))
    assert main(args) == 0
    assert "grading its solution" in capsys.readouterr().out


def test_a_solution_short_of_full_marks_is_refused_naming_each_test(
    tmp_path: Path, rt: discovery.Runtime
) -> None:
    master = _fifth_exercise(tmp_path / "masters")
    root = tmp_path / "course"
    with pytest.raises(assign.ValidationFailed) as caught:
        assign.assign([master], root, say=False, validate=True, runtime_url=rt.url, timeout=TIMEOUT)
    message = str(caught.value)
    assert f"{master}: its solution gets 1/3 from its own tests" in message
    assert "q1.2 (public, error): 0 of 1 — NameError: name 'count_wrds' is not defined" in message
    assert "q1.3 (hidden, failed): 0 of 1" in message
    assert "Split on any whitespace." in message  # the hint, whatever else the grader says
    assert "Nothing was written" in message and "--no-validate" in message
    assert not (root / "exercises").exists() and not (root / assign.VALIDATED).exists()
    kept = re.search(r"are in (\S+)\.\n", message)
    assert kept and (Path(kept[1]) / "gradebook.csv").is_file()  # the graded solution, kept


def test_no_validate_writes_and_says_it_did_not_grade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    master = _fifth_exercise(tmp_path / "masters")
    root = tmp_path / "course"
    assert main(["assign", str(master), "--root", str(root), "--no-validate"]) == 0
    out = capsys.readouterr().out
    assert "Not validated (--no-validate)" in out
    assert "q1.2 uses `count_wrds`" in out  # the name is still warned about
    assert (root / "exercises/05-words.ipynb").is_file()
