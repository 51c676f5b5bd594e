"""An exercise as data: its questions and tests, the grading key and public test files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError, MasterFormatError, OverwriteRefused

__all__ = [
    "KERNELSPEC",
    "KEY_DIR",
    "LEARNER_DIR",
    "MANUAL_PROMPT",
    "PUBLIC_TESTS_DIR",
    "SOLUTION_DIR",
    "Exercise",
    "Generated",
    "MasterFormatError",
    "OverwriteRefused",
    "Question",
    "TestCase",
    "cell_source",
    "exercise_from_dict",
    "json_bytes",
    "load_key",
    "work_fingerprint",
    "write_atomic",
]


LEARNER_DIR = "exercises"


SOLUTION_DIR = "solutions"


PUBLIC_TESTS_DIR = "exercises/tests"


KEY_DIR = "grading/hidden"


KEY_FORMAT = "labkit-grading-key/1"


PUBLIC_FORMAT = "labkit-checks/1"


MANUAL_PROMPT = "_Type your answer here, replacing this text._"


# The kernel every generated notebook asks for: the course's Python environment.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


@dataclass
class TestCase:
    """One test of one question: code to run and how many points it earns."""

    name: str
    code: str
    kind: str  # "output": compare what the code shows; "function": call its test_ functions
    points: float
    hidden: bool = False
    expected: str | None = None  # what the master showed for an "output" test
    description: str = ""
    success_message: str | None = None
    failure_message: str | None = None


@dataclass
class Question:
    """A graded question: its name, its worth and its tests."""

    name: str
    points: float
    manual: bool = False
    tests: list[TestCase] = field(default_factory=list)
    # Top-level names a learner must fill in (``answer = ...``): still ``...`` means "not done".
    placeholders: list[str] = field(default_factory=list)

    @property
    def public_tests(self) -> list[TestCase]:
        """The tests learners can run themselves."""
        return [t for t in self.tests if not t.hidden]


@dataclass
class Exercise:
    """Everything the grader needs to know about one exercise."""

    name: str
    questions: list[Question]
    master: str = ""  # file name of the master notebook
    files: list[str] = field(default_factory=list)  # extra files learners' code may read

    @property
    def graded_questions(self) -> list[Question]:
        """Questions scored automatically (manual ones are left to a person)."""
        return [q for q in self.questions if not q.manual]

    @property
    def possible(self) -> float:
        """The most points an automatically graded submission can get."""
        return sum(q.points for q in self.graded_questions)

    def question(self, name: str) -> Question:
        """The question called ``name``."""
        for q in self.questions:
            if q.name == name:
                return q
        known = ", ".join(q.name for q in self.questions) or "none"
        raise LabkitError(f"There is no question {name!r} in {self.name}; questions: {known}.")

    def to_key(self, outputs: dict[str, str] | None = None) -> dict[str, Any]:
        """The grading key as JSON-ready data (every test, hidden ones included)."""
        return {
            "format": KEY_FORMAT,
            "exercise": self.name,
            "master": self.master,
            "files": self.files,
            "questions": [asdict(q) for q in self.questions],
            "generated": outputs or {},
        }

    def to_public(self) -> dict[str, Any]:
        """What ``check()`` needs: public tests only, plus how many hidden ones exist."""
        questions = []
        for q in self.questions:
            public = [asdict(t) for t in q.public_tests]
            questions.append(
                {
                    "name": q.name,
                    "points": q.points,
                    "manual": q.manual,
                    "placeholders": q.placeholders,
                    "hidden_tests": len(q.tests) - len(public),
                    "tests": public,
                }
            )
        return {"format": PUBLIC_FORMAT, "exercise": self.name, "questions": questions}


def exercise_from_dict(data: dict[str, Any]) -> Exercise:
    """Rebuild an ``Exercise`` from a grading key (or a public tests file)."""
    questions = []
    for q in data.get("questions", []):
        tests = [TestCase(**t) for t in q.get("tests", [])]
        questions.append(
            Question(
                name=q["name"],
                points=float(q["points"]),
                manual=bool(q.get("manual", False)),
                tests=tests,
                placeholders=list(q.get("placeholders", [])),
            )
        )
    return Exercise(
        name=str(data.get("exercise", "")),
        questions=questions,
        master=str(data.get("master", "")),
        files=list(data.get("files", [])),
    )


def load_key(path: Path) -> Exercise:
    """Read a grading key written by ``labkit assign``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabkitError(
            f"Cannot read the grading key {path}: {exc}. Regenerate it with `labkit assign`."
        ) from exc
    if data.get("format") != KEY_FORMAT:
        raise LabkitError(f"{path} is not a labkit grading key (format {data.get('format')!r}).")
    return exercise_from_dict(data)


@dataclass
class Generated:
    """The four generated files of one master, as bytes, keyed by path relative to the root."""

    exercise: Exercise
    files: dict[str, bytes]
    warnings: list[str] = field(default_factory=list)

    @property
    def learner_path(self) -> str:
        """Where the learner version goes."""
        return f"{LEARNER_DIR}/{self.exercise.name}.ipynb"

    @property
    def solution_path(self) -> str:
        """Where the solution version goes."""
        return f"{SOLUTION_DIR}/{self.exercise.name}.ipynb"

    @property
    def key_path(self) -> str:
        """Where the grading key goes."""
        return f"{KEY_DIR}/{self.exercise.name}.json"

    @property
    def public_path(self) -> str:
        """Where the public tests go."""
        return f"{PUBLIC_TESTS_DIR}/{self.exercise.name}.json"


def json_bytes(data: Any) -> bytes:
    """``data`` as the stable JSON every generated file uses (sorted keys, one-space indent)."""
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def cell_source(cell: Any) -> str:
    """A notebook cell's source as one string (notebooks store it as a string or lines)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def work_fingerprint(notebook: bytes) -> str:
    """A hash of what a person wrote in a notebook (cell types and sources, not outputs)."""
    nb = json.loads(notebook)
    cells = [[c.get("cell_type"), cell_source(c)] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode("utf-8")).hexdigest()


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
