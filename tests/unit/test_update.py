"""labkit update: a new course version arrives, a learner's edited files are kept, nothing is lost."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from labkit import update
from labkit.cli import main
from labkit.errors import CourseUpdateError

TODAY = datetime.date.today().strftime("%Y%m%d")
LESSON = "notebooks/01-local-model-apis.ipynb"
EXERCISE = "exercises/03-hr-rag.ipynb"


def _notebook(path: Path, cells: list[tuple[str, str, str]]) -> None:
    """Write a notebook of (id, kind, source) cells."""
    nb = nbformat.v4.new_notebook()
    for cell_id, kind, source in cells:
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(source, id=cell_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _version_1(folder: Path) -> Path:
    _notebook(folder / LESSON, [("l1", "markdown", "# Lesson 1"), ("l2", "code", "x = 1")])
    _notebook(
        folder / EXERCISE,
        [("e1", "markdown", "# Exercise 3"), ("q1", "code", "def chunk(text):\n    ...")],
    )
    (folder / "exercises/tests").mkdir(parents=True)
    (folder / "exercises/tests/03-hr-rag.json").write_text('{"questions": []}\n')
    (folder / "data").mkdir()
    (folder / "data/old.txt").write_text("retired next version\n")
    (folder / "README.md").write_text("# The course\n")
    update.write_manifest(folder, update.manifest_for(folder), version="v1")
    return folder


@pytest.fixture
def course(tmp_path: Path) -> dict[str, Path]:
    """Version 1 as released, a learner's copy of it, and version 2."""
    v1 = _version_1(tmp_path / "v1")
    learner = tmp_path / "alice"
    shutil.copytree(v1, learner)
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    (v2 / update.MANIFEST).unlink()
    # The instructor fixes a lesson and the exercise the learner is working on, adds a
    # lesson and retires a data file.
    _notebook(v2 / LESSON, [("l1", "markdown", "# Lesson 1 (fixed)"), ("l2", "code", "x = 2")])
    _notebook(
        v2 / EXERCISE,
        [("e1", "markdown", "# Exercise 3, clearer"), ("q1", "code", "def chunk(text):\n    ...")],
    )
    _notebook(v2 / "notebooks/05-new.ipynb", [("n1", "markdown", "# New")])
    (v2 / "data/old.txt").unlink()
    return {"v1": v1, "learner": learner, "v2": v2}


def _edit_exercise(learner: Path) -> bytes:
    """The learner writes an answer in the exercise's code cell."""
    nb = nbformat.read(learner / EXERCISE, as_version=4)
    nb.cells[1].source = "def chunk(text):\n    return text.split('\\n\\n')  # my answer"
    nbformat.write(nb, learner / EXERCISE)
    return (learner / EXERCISE).read_bytes()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_new_lesson_arrives_and_edited_exercise_is_kept(
    course: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    learner, v2 = course["learner"], course["v2"]
    mine = _edit_exercise(learner)
    assert main(["update", str(v2), "--folder", str(learner)]) == 0
    out = capsys.readouterr().out
    # The lesson the learner never touched is the new version.
    assert (learner / LESSON).read_bytes() == (v2 / LESSON).read_bytes()
    # The exercise keeps the learner's answer; the new version is saved beside it.
    assert (learner / EXERCISE).read_bytes() == mine
    beside = learner / f"exercises/03-hr-rag.updated-{TODAY}.ipynb"
    assert beside.read_bytes() == (v2 / EXERCISE).read_bytes()
    nbformat.validate(nbformat.read(beside, as_version=4))
    assert "my answer" in nbformat.read(learner / EXERCISE, as_version=4).cells[1].source
    # New files arrive; a file that left the course stays (nothing is deleted).
    assert (learner / "notebooks/05-new.ipynb").read_bytes() == (
        v2 / "notebooks/05-new.ipynb"
    ).read_bytes()
    assert (learner / "data/old.txt").read_text() == "retired next version\n"
    # What the command said, file by file.
    assert f"updated     {LESSON}" in out
    assert f"kept yours  {EXERCISE}" in out and beside.name in out
    assert "added       notebooks/05-new.ipynb" in out
    assert "left as is  data/old.txt" in out
    assert "1 new, 1 updated, 1 kept as you changed them" in out
    # The manifest now records the course as delivered this time; no temporary files left.
    recorded = update.read_manifest(learner)
    assert recorded is not None
    assert recorded["files"] == update.manifest_for(v2)
    assert recorded["source"] == str(v2.resolve())
    assert not [p for p in learner.rglob("*") if p.name.endswith(".tmp")]


def test_dry_run_lists_the_changes_and_writes_nothing(
    course: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    learner = course["learner"]
    _edit_exercise(learner)
    before = _snapshot(learner)
    assert main(["update", str(course["v2"]), "--folder", str(learner), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _snapshot(learner) == before
    assert out.startswith(f"Would change {learner.resolve()}")
    assert f"kept yours  {EXERCISE}" in out and f"updated     {LESSON}" in out
    assert "Dry run, nothing written" in out


def test_a_second_run_changes_nothing_and_a_later_version_goes_beside_again(
    course: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    learner, v2 = course["learner"], course["v2"]
    mine = _edit_exercise(learner)
    update.update(str(v2), learner)
    after = _snapshot(learner)
    assert main(["update", "--folder", str(learner)]) == 0  # the source is remembered
    assert "already up to date" in capsys.readouterr().out
    assert _snapshot(learner) == after
    # Version 3 changes the exercise again, the same day: a second copy, never overwritten.
    v3 = learner.parent / "v3"
    shutil.copytree(v2, v3)
    _notebook(v3 / EXERCISE, [("e1", "markdown", "# Exercise 3, v3")])
    result = update.update(str(v3), learner)
    assert [c.beside for c in result.changes] == [f"exercises/03-hr-rag.updated-{TODAY}-2.ipynb"]
    assert (learner / EXERCISE).read_bytes() == mine
    assert (learner / f"exercises/03-hr-rag.updated-{TODAY}.ipynb").read_bytes() == (
        v2 / EXERCISE
    ).read_bytes()


def test_a_deleted_course_file_comes_back(course: dict[str, Path]) -> None:
    learner = course["learner"]
    (learner / LESSON).unlink()
    result = update.update(str(course["v2"]), learner)
    assert update.Change(LESSON, "restored") in result.changes
    assert (learner / LESSON).read_bytes() == (course["v2"] / LESSON).read_bytes()


def test_without_a_manifest_every_differing_file_is_kept(
    course: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    learner = course["learner"]
    (learner / update.MANIFEST).unlink()
    lesson = (learner / LESSON).read_bytes()
    assert main(["update", str(course["v2"]), "--folder", str(learner)]) == 0
    assert "treated as yours and kept" in capsys.readouterr().out
    assert (learner / LESSON).read_bytes() == lesson  # it cannot know: it keeps it
    assert (learner / f"notebooks/01-local-model-apis.updated-{TODAY}.ipynb").exists()
    assert update.read_manifest(learner) is not None  # the next update knows


def test_an_interrupted_update_leaves_whole_files_and_finishes_next_time(
    course: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, v2 = course["learner"], course["v2"]
    mine = _edit_exercise(learner)
    real = update._copy_atomic
    calls = []

    def stop_after_one(source: Path, target: Path) -> None:
        if calls:
            raise KeyboardInterrupt
        calls.append(target)
        real(source, target)

    monkeypatch.setattr(update, "_copy_atomic", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        update.update(str(v2), learner)
    monkeypatch.setattr(update, "_copy_atomic", real)
    update.update(str(v2), learner)
    assert (learner / EXERCISE).read_bytes() == mine
    assert (learner / LESSON).read_bytes() == (v2 / LESSON).read_bytes()
    assert (learner / "notebooks/05-new.ipynb").exists()
    assert not [p for p in learner.rglob("*") if p.name.endswith(".tmp")]
    assert len(list(learner.glob("exercises/*.updated-*"))) == 1


def test_updates_from_a_git_address(course: dict[str, Path]) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    v2 = course["v2"]
    git = ["git", "-C", str(v2), "-c", "user.name=i", "-c", "user.email=i@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v2"], check=True)
    learner = course["learner"]
    mine = _edit_exercise(learner)
    result = update.update(v2.as_uri(), learner)
    assert result.version and (learner / LESSON).read_bytes() == (v2 / LESSON).read_bytes()
    assert (learner / EXERCISE).read_bytes() == mine
    assert not (learner / ".git").exists()
    recorded = update.read_manifest(learner)
    assert recorded is not None and recorded["source"] == v2.as_uri()


def test_bad_sources_get_a_clear_message_and_change_nothing(
    course: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    learner, v2 = course["learner"], course["v2"]
    before = _snapshot(learner)
    (v2 / "grading/hidden").mkdir(parents=True)
    assert main(["update", str(v2), "--folder", str(learner)]) == 1
    assert "instructor's course" in capsys.readouterr().err
    assert main(["update", str(learner / "nowhere"), "--folder", str(learner)]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["update", "https://127.0.0.1:9/none.git", "--folder", str(learner)]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert _snapshot(learner) == before
    (learner / update.MANIFEST).write_text(
        json.dumps({"format": "labkit-course/1", "files": {"../x": "0"}})
    )
    with pytest.raises(CourseUpdateError, match="is damaged"):
        update.plan(course["v1"], learner)


def test_the_course_folder_is_found_from_inside_it(course: dict[str, Path]) -> None:
    learner = course["learner"]
    assert update.find_course(learner / "exercises") == learner.resolve()
    home = learner.parent / "home"
    shutil.copytree(learner, home / "course")
    assert update.find_course(home) == (home / "course").resolve()  # ~ holds one: ~/course
    with pytest.raises(CourseUpdateError, match=r"several courses \(alice, v1\); pass --folder"):
        update.find_course(learner.parent)  # which one is meant?
    with pytest.raises(CourseUpdateError, match="not inside a course folder"):
        update.find_course(learner.parent / "v2" / "data")


def test_a_release_is_a_learners_course_with_its_manifest(tmp_path: Path) -> None:
    from labkit.grader.release import release

    project = Path(__file__).resolve().parents[2]
    target = tmp_path / "course"
    release(project, target, [])  # no exercises given: the copy alone, without the checks
    recorded = update.read_manifest(target)
    assert recorded is not None and recorded["files"] == update.manifest_for(target)
    assert {"README.md", "lab", EXERCISE, LESSON} <= set(recorded["files"])
    readme = (target / "README.md").read_text()
    assert "## Hand it in" in readme and "./lab test" in readme
    assert [
        w for w in ("sudo", "labkit grade", "masters/", "## For instructors") if w in readme
    ] == []
    assert "## The runtime" in readme  # the course README's shared sections come along
    assert (
        os.access(target / "lab", os.X_OK)
        and "labkit.course.selftest" in (target / "lab").read_text()
    )
    assert not (target / "docs/authoring.md").exists() and not (target / "docs/class.md").exists()
    # A learner's copy of it updates from the next release like any other.
    learner = tmp_path / "alice"
    shutil.copytree(target, learner)
    mine = _edit_exercise(learner)
    v2 = tmp_path / "v2"
    shutil.copytree(target, v2)
    lesson = nbformat.read(v2 / LESSON, as_version=4)
    lesson.cells[0].source += "\n\nA fix."
    nbformat.write(lesson, v2 / LESSON)
    result = update.update(str(v2), learner)
    assert [c.action for c in result.changes] == ["updated"]
    assert (learner / EXERCISE).read_bytes() == mine
