"""labkit assign --release: a learner-only course, without answers, keys or history."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from labkit.cli import main
from labkit.errors import LabkitError
from labkit.grader import assign
from labkit.grader.release import release

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("release") / "course"
    generated = [assign.parse_master(m) for m in assign.masters_in(PROJECT / "masters")]
    release(PROJECT, target, generated)
    return target


def test_release_holds_what_learners_need(released: Path) -> None:
    for rel in ("README.md", "labkit/__init__.py", "pyproject.toml", "environment.yml"):
        assert (released / rel).is_file(), rel
    masters = sorted(p.stem for p in (PROJECT / "masters").glob("*.ipynb"))
    for name in masters:
        assert (released / "exercises" / f"{name}.ipynb").is_file()
        assert (released / "exercises" / "tests" / f"{name}.json").is_file()
    assert list((released / "notebooks").glob("*.ipynb"))


def test_release_has_no_answers_keys_or_history(released: Path) -> None:
    for name in ("solutions", "masters", "grading", ".git", "tests", "bench", ".labkit"):
        assert not (released / name).exists(), name
    assert not list(released.rglob("*.pyc")) and not list(released.rglob(".git"))
    # Not a single hidden test of any exercise is anywhere in it, whole.
    text = "\n".join(p.read_text(errors="replace") for p in released.rglob("*") if p.is_file())
    for key in (PROJECT / "grading" / "hidden").glob("*.json"):
        for q in assign.load_key(key).questions:
            for t in q.tests:
                if t.hidden:
                    assert t.code not in text, t.name


def test_release_refuses_a_copied_key_and_writes_nothing(released: Path, tmp_path: Path) -> None:
    course = tmp_path / "course"
    shutil.copytree(released, course)
    shutil.copy(PROJECT / "grading/hidden/02-classification.json", course / "notebooks/k.json")
    generated = [assign.parse_master(m) for m in assign.masters_in(PROJECT / "masters")]
    with pytest.raises(LabkitError, match=r"notebooks/k\.json holds hidden test code"):
        release(course, tmp_path / "out", generated)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["course"]  # no half-written folder left


def test_release_never_writes_into_a_used_folder(released: Path, tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep me")
    with pytest.raises(LabkitError, match="not empty"):
        release(released, tmp_path / "used", [])
    assert (tmp_path / "used" / "mine.txt").read_text() == "keep me"


def test_cli_release_says_which_folder_to_hand_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy = PROJECT / "tests/data/grading/masters/toy.ipynb"
    root, out = tmp_path / "course", tmp_path / "handout"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "lesson.ipynb").write_text("{}")
    args = ["assign", str(toy), "--root", str(root), "--release", str(out), "--no-validate"]
    assert main(args) == 0
    assert f"into {out}" in capsys.readouterr().out
    assert (out / "exercises/toy.ipynb").is_file() and (out / "exercises/toy-data.txt").is_file()
    assert (out / "notebooks/lesson.ipynb").is_file()
    assert not (out / "solutions").exists() and not (out / "grading").exists()


def test_release_refuses_an_exercise_holding_solution_code(released: Path, tmp_path: Path) -> None:
    """A solution notebook copied over its exercise is caught, even under another name."""
    course = tmp_path / "course"
    shutil.copytree(released, course)
    shutil.copy(PROJECT / "solutions/01-api-script.ipynb", course / "exercises/01-extra.ipynb")
    generated = [assign.parse_master(m) for m in assign.masters_in(PROJECT / "masters")]
    with pytest.raises(LabkitError, match=r"exercises/01-extra\.ipynb holds solution code of "):
        release(course, tmp_path / "out", generated)
    assert not (tmp_path / "out").exists()


def test_one_line_of_solution_code_in_an_exercise_is_enough(released: Path, tmp_path: Path) -> None:
    course = tmp_path / "course"
    shutil.copytree(released, course)
    generated = [assign.parse_master(m) for m in assign.masters_in(PROJECT / "masters")]
    learner = course / "exercises/01-api-script.ipynb"
    nb = nbformat.read(str(learner), as_version=4)
    cell = next(c for c in nb.cells if "def should_stream" in c.source)
    cell.source += "\n    return answers[use_case]"  # a line of the solution, nothing else
    nbformat.write(nb, str(learner))
    with pytest.raises(LabkitError, match=r"'return answers\[use_case\]'"):
        release(course, tmp_path / "out", generated)
    (course / "exercises/01-api-script.ipynb").write_bytes(
        (PROJECT / "exercises/01-api-script.ipynb").read_bytes()
    )
    (course / "exercises/helper.py").write_text("x = 1\nreturn answers[use_case]\n")
    with pytest.raises(LabkitError, match=r"exercises/helper\.py holds solution code .*line 2"):
        release(course, tmp_path / "out", generated)
