"""The README's "Read the code" table is true: files exist, are short, and lessons name them.

A row may name a folder (``labkit/rag/``): every ``.py`` file under it is then on the map
through that row, and must be as short as a file the table names itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LIMIT = 450  # lines: a file a learner reads top to bottom
NOTEBOOKS: dict[int, str] = {}  # module number -> its notebooks' text (module 4 has 04a and 04b)
for _path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
    NOTEBOOKS[int(_path.name[:2])] = NOTEBOOKS.get(int(_path.name[:2]), "") + _path.read_text(
        encoding="utf-8"
    )
# Kit machinery, not for lessons: the command line and the package's own entry points.
NOT_FOR_LEARNERS = {"__init__.py", "__main__.py", "cli.py"}
# Subpackages that are the kit's machinery: the README says so below the table, and no
# lesson opens them, so their files are not held to the limit.
MACHINERY = {"labkit/runtime/", "labkit/course/", "labkit/grader/"}


def _rows() -> list[tuple[list[str], list[int]]]:
    """(files, lesson numbers) of each row of the table."""
    section = README.split("## Read the code", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `labkit/"):
            continue
        files_cell, _, lessons_cell = line.strip("|").split("|")
        files = re.findall(r"`(labkit/[^`]+)`", files_cell)
        span = re.search(r"(\d)\u2013(\d)", lessons_cell)  # "1 to 3", written with an en dash
        numbers = [int(n) for n in re.findall(r"\d", lessons_cell)]
        lessons = list(range(int(span[1]), int(span[2]) + 1)) if span else numbers
        rows.append((files, lessons))
    return rows


ROWS = _rows()


FOLDERS = [f for files, _ in ROWS for f in files if f.endswith("/")]
# Every Python file a folder row puts on the map.
UNDER_FOLDERS = sorted(
    p.relative_to(ROOT).as_posix() for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
)


def test_the_table_is_found() -> None:
    assert len(ROWS) >= 10
    assert FOLDERS and len(UNDER_FOLDERS) > len(FOLDERS)  # the folder rows hold files


@pytest.mark.parametrize("path", [f for files, _ in ROWS for f in files])
def test_each_file_exists_and_is_short(path: str) -> None:
    target = ROOT / path
    assert target.exists(), f"README names {path}, which does not exist"
    if target.suffix == ".py":
        lines = len(target.read_text(encoding="utf-8").splitlines())
        assert lines <= LIMIT, f"{path} has {lines} lines; split it by concept"


@pytest.mark.parametrize("path", UNDER_FOLDERS)
def test_each_file_under_a_folder_row_is_short(path: str) -> None:
    lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    folder = next(f for f in FOLDERS if path.startswith(f))
    assert lines <= LIMIT, f"{path} has {lines} lines (on the map through {folder}); split it"


def test_every_subpackage_is_a_row_or_named_as_machinery() -> None:
    packages = {f"labkit/{p.parent.name}/" for p in (ROOT / "labkit").glob("*/__init__.py")}
    section = README.split("## Read the code", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{folder}`" in section for folder in MACHINERY), "README names the machinery"
    assert sorted(packages - set(FOLDERS) - MACHINERY) == []


def test_every_learner_module_is_on_the_map() -> None:
    mapped = {f for files, _ in ROWS for f in files}
    modules = {f"labkit/{p.name}" for p in (ROOT / "labkit").glob("*.py")}
    missing = sorted(m for m in modules if m.split("/")[1] not in NOT_FOR_LEARNERS)
    assert [m for m in missing if m not in mapped] == []


@pytest.mark.parametrize(("files", "lessons"), ROWS, ids=lambda v: str(v))
def test_each_row_is_named_in_each_of_its_lessons(files: list[str], lessons: list[int]) -> None:
    for lesson in lessons:
        text = NOTEBOOKS[lesson]
        # A lesson names a file by its path (labkit/retry.py) or as a module (labkit.retry).
        names = [*files, *(f.removesuffix(".py").replace("/", ".") for f in files)]
        assert any(name.rstrip("/.") in text for name in names), (
            f"module {lesson} names none of {files}"
        )
