"""Turn a master notebook into what learners get, what instructors keep, and the tests.

A master notebook uses otter-grader's notebook format (raw delimiter cells), so masters
written for otter work here unchanged:

- a raw cell ``# ASSIGNMENT CONFIG`` (YAML) — optional, usually first;
- per question, raw cells ``# BEGIN QUESTION`` (YAML with ``name:``, ``points:``,
  ``manual:``, ``check_cell:``) … ``# END QUESTION``;
- inside a question: ``# BEGIN PROMPT`` / ``# END PROMPT`` (cells only learners see),
  ``# BEGIN SOLUTION`` / ``# END SOLUTION`` (the answer) and ``# BEGIN TESTS`` /
  ``# END TESTS`` (one test per code cell);
- inside code: ``# BEGIN SOLUTION`` … ``# END SOLUTION`` lines (``NO PROMPT`` drops the
  placeholder), a line ending in ``# SOLUTION`` (for ``x = value  # SOLUTION`` only the
  value goes), ``# SOLUTION NO PROMPT`` and ``# SEED`` lines, and ``\"\"\" # BEGIN PROMPT``
  … ``\"\"\" # END PROMPT`` strings whose text learners see instead;
- a test cell may start with ``# HIDDEN`` or a ``\"\"\" # BEGIN TEST CONFIG`` string (YAML:
  ``hidden``, ``points``, ``success_message``, ``failure_message``; labkit also reads
  ``name`` and ``description``); lines ending in ``# IGNORE`` are dropped;
- a cell starting with ``## Ignore ##`` is left out of everything.

``labkit assign`` writes four files per master (paths relative to the course root):
``exercises/NAME.ipynb`` (learner version), ``exercises/tests/NAME.json`` (public tests, what
``check()`` runs), ``solutions/NAME.ipynb`` and ``grading/hidden/NAME.json`` (every test,
public and hidden: the grading key, for instructors only). The bytes depend only on the
master, so running it twice gives identical files, and ``drift()`` can tell when the
generated files no longer match their master.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import yaml

from labkit.errors import LabkitError

LEARNER_DIR = "exercises"
SOLUTION_DIR = "solutions"
PUBLIC_TESTS_DIR = "exercises/tests"
KEY_DIR = "grading/hidden"
KEY_FORMAT = "labkit-grading-key/1"
PUBLIC_FORMAT = "labkit-checks/1"
MANUAL_PROMPT = "_Type your answer here, replacing this text._"

# The kernel every generated notebook asks for: the course's Python environment.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

_BOUNDARY = re.compile(r"#\s+(begin|end)\s+(question|prompt|solution|tests)\s*$", re.IGNORECASE)
_CONFIG_CELL = re.compile(r"#\s+assignment\s+config\s*$", re.IGNORECASE)
_IGNORE_CELL = re.compile(r"##\s*ignore\s*##\s*$", re.IGNORECASE)
_HIDDEN_LINE = re.compile(r"#\s*hidden\s*$", re.IGNORECASE)
_BEGIN_SOLUTION = re.compile(r"^(\s*)#\s*BEGIN SOLUTION( NO PROMPT)?\s*$")
_END_SOLUTION = re.compile(r"#\s*END SOLUTION\s*$")
_SOLUTION_LINE = re.compile(r"^(\s*)(.*?)\s*#\s*SOLUTION\s*$")
_DROPPED_LINE = re.compile(r"#\s*(SOLUTION NO PROMPT|SEED)\s*$")
_SEED_LINE = re.compile(r"\s*#\s*SEED\s*$")
_BEGIN_PROMPT = re.compile(r"^\s*(\"\"\"|''')\s*#\s*BEGIN PROMPT\s*$")
_END_PROMPT = re.compile(r"^\s*(\"\"\"|''')\s*;?\s*#\s*END PROMPT\s*$")
_BEGIN_TEST_CONFIG = re.compile(r"^\s*(\"\"\"|''')\s*#\s*BEGIN TEST CONFIG\s*$")
_END_TEST_CONFIG = re.compile(r"^\s*(\"\"\"|''')\s*;?\s*#\s*END TEST CONFIG\s*$")
_IGNORE_LINE = re.compile(r"#\s*IGNORE\s*$")
# The left side of an assignment such as ``answer =`` or ``a, b =`` (not ``==``).
_ASSIGNMENT = re.compile(r"^([A-Za-z_][\w\s,.\[\]'\"]*?)\s*(?<![=!<>])=(?!=)\s*(.*)$")


class MasterFormatError(LabkitError):
    """A master notebook does not follow the marker format."""


class OverwriteRefused(LabkitError):
    """A generated file was edited by hand since it was generated."""


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


# --------------------------------------------------------------------------- parsing


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


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        return line.strip()
    return ""


def _unfence(cell: Any) -> tuple[str, str]:
    """A cell's (type, source); a Markdown cell that is one ```otter block counts as raw."""
    kind, text = str(cell.get("cell_type", "")), _source(cell)
    if kind == "markdown":
        lines = text.strip().splitlines()
        if len(lines) >= 2 and lines[0].strip() == "```otter" and lines[-1].strip() == "```":
            return "raw", "\n".join(lines[1:-1])
    return kind, text


def _yaml(text: str, where: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MasterFormatError(f"{where}: the YAML does not parse ({exc}).") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MasterFormatError(f"{where}: expected `key: value` lines, got {value!r}.")
    return value


@dataclass
class _Cell:
    """A cell on its way into the generated notebooks."""

    kind: str
    source: str
    cell_id: str
    tags: list[str]


@dataclass
class _Parse:
    """Mutable state while walking a master."""

    where: str
    config: dict[str, Any] = field(default_factory=dict)
    learner: list[_Cell] = field(default_factory=list)
    solution: list[_Cell] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    raw_tests: dict[str, list[tuple[str, str | None, str]]] = field(default_factory=dict)
    question_points: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    uses_not_implemented: bool = False


def parse_master(path: Path) -> Generated:
    """Read a master notebook and build the learner, solution and test files in memory."""
    try:
        nb = nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:  # nbformat raises several unrelated types for bad files
        raise MasterFormatError(
            f"{path} is not a readable notebook ({exc}). Open it in Jupyter and save it again."
        ) from exc
    name = path.stem
    state = _Parse(where=str(path))
    _walk(nb.cells, state)
    questions = _finish_questions(state)
    exercise = Exercise(
        name=name,
        questions=questions,
        master=path.name,
        files=[str(f) for f in state.config.get("files", []) or []],
    )
    learner_cells = _with_boilerplate(state.learner, state, exercise, learner=True)
    solution_cells = _with_boilerplate(state.solution, state, exercise, learner=False)
    learner = _notebook_bytes(learner_cells, name, "learner")
    solution = _notebook_bytes(solution_cells, name, "solution")
    generated = Generated(exercise=exercise, files={}, warnings=state.warnings)
    outputs = {
        generated.learner_path: work_fingerprint(learner),
        generated.solution_path: work_fingerprint(solution),
    }
    generated.files = {
        generated.learner_path: learner,
        generated.solution_path: solution,
        generated.public_path: _json_bytes(exercise.to_public()),
        generated.key_path: _json_bytes(exercise.to_key(outputs)),
    }
    for rel in exercise.files:  # data the notebook reads goes next to both versions
        content = _extra_file(path.parent, rel)
        generated.files[f"{LEARNER_DIR}/{rel}"] = content
        generated.files[f"{SOLUTION_DIR}/{rel}"] = content
    return generated


def _extra_file(folder: Path, rel: str) -> bytes:
    """A file listed under ``files:`` in the assignment config, relative to the master."""
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise MasterFormatError(f"files: {rel!r} must be a path inside the master's folder.")
    try:
        return (folder / rel).read_bytes()
    except OSError as exc:
        raise MasterFormatError(
            f"files: {rel!r} is listed in the assignment config but cannot be read ({exc})."
        ) from exc


def _walk(cells: list[Any], st: _Parse) -> None:
    """Route every master cell to the learner version, the solution version or the tests."""
    question: dict[str, Any] | None = None
    block: str | None = None  # "prompt" | "solution" | "tests" inside a question
    had_prompt = had_md_solution = False
    for index, cell in enumerate(cells):
        where = f"{st.where}, cell {index + 1}"
        kind, text = _unfence(cell)
        first = _first_line(text)
        cell_id = str(cell.get("id") or "")
        tags = [str(t) for t in cell.get("metadata", {}).get("tags", [])]
        if kind == "raw" and _CONFIG_CELL.match(first):
            st.config = _yaml(text, where)
            continue
        if kind == "raw" and (m := _BOUNDARY.match(first)):
            edge, what = m.group(1).lower(), m.group(2).lower()
            if what == "question":
                if edge == "begin":
                    if question is not None:
                        raise MasterFormatError(
                            f"{where}: # BEGIN QUESTION inside question {question['name']!r}; "
                            "close it with a raw cell # END QUESTION first."
                        )
                    question = _question_config(text, where, st)
                    had_prompt = had_md_solution = False
                else:
                    if question is None or block is not None:
                        raise MasterFormatError(
                            f"{where}: # END QUESTION without a matching # BEGIN QUESTION "
                            "(or with a block still open)."
                        )
                    _add_check_cell(question, st)
                    question = None
                continue
            if question is None:
                raise MasterFormatError(
                    f"{where}: # {edge.upper()} {what.upper()} outside a question; "
                    "put it between # BEGIN QUESTION and # END QUESTION."
                )
            if edge == "begin":
                if block is not None:
                    raise MasterFormatError(f"{where}: # BEGIN {what.upper()} inside {block}.")
                block = what
                had_prompt = had_prompt or what == "prompt"
            else:
                if block != what:
                    raise MasterFormatError(
                        f"{where}: # END {what.upper()} does not close a # BEGIN {what.upper()}."
                    )
                if what == "solution" and had_md_solution and not had_prompt:
                    # A written answer with no prompt: give learners a place to write.
                    st.learner.append(_Cell("markdown", MANUAL_PROMPT, "", []))
                block = None
            continue
        if kind in ("code", "markdown") and _IGNORE_CELL.match(first):
            continue
        qname = question["name"] if question else None
        if block == "tests":
            if kind == "code":
                st.raw_tests.setdefault(str(qname), []).append((text, _test_outputs(cell), where))
            continue
        if block == "prompt":
            st.learner.append(_Cell(kind, text, cell_id, tags))
            continue
        if kind == "code":
            st.learner.append(_Cell(kind, _learner_code(text, qname, st, where), cell_id, tags))
            st.solution.append(_Cell(kind, _solution_code(text, where), cell_id, tags))
        elif block == "solution":
            had_md_solution = True
            st.solution.append(_Cell(kind, text, cell_id, tags))
        else:
            st.learner.append(_Cell(kind, text, cell_id, tags))
            st.solution.append(_Cell(kind, text, cell_id, tags))
    if question is not None or block is not None:
        raise MasterFormatError(
            f"{st.where}: question {question['name'] if question else '?'!r} is never closed; "
            "add the missing # END ... raw cells."
        )


def _question_config(text: str, where: str, st: _Parse) -> dict[str, Any]:
    config = _yaml("\n".join(text.splitlines()[1:]), where)
    name = config.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise MasterFormatError(
            f"{where}: every question needs `name:` (letters, digits, - _ .), got {name!r}."
        )
    if any(q.name == name for q in st.questions):
        raise MasterFormatError(f"{where}: question name {name!r} is used twice.")
    st.questions.append(Question(name=name, points=0.0, manual=bool(config.get("manual"))))
    st.question_points[name] = config.get("points")
    return config


def _add_check_cell(config: dict[str, Any], st: _Parse) -> None:
    """At the end of an autograded question, a ``check("q1")`` cell (as otter adds one)."""
    name = str(config["name"])
    if config.get("manual") or not st.raw_tests.get(name) or not config.get("check_cell", True):
        return
    check = _Cell("code", f'check("{name}")', f"check-{name}", [])
    st.learner.append(check)
    st.solution.append(_Cell("code", check.source, check.cell_id, []))


def _test_outputs(cell: Any) -> str | None:
    """What a test cell showed in the master: printed text plus the value of its last line."""
    shown = []
    for out in cell.get("outputs", []) or []:
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            shown.append("".join(out.get("text", "")))
        elif out.get("output_type") == "execute_result":
            data = out.get("data", {}).get("text/plain", "")
            shown.append(("".join(data) if isinstance(data, list) else str(data)) + "\n")
    return "".join(shown) if shown else None


# ------------------------------------------------------------------ solution removal


def _not_written(question: str | None) -> str:
    what = question or "This part"
    return f'raise NotImplementedYet("{what} is not written yet: replace this line with your code")'


def _learner_code(text: str, question: str | None, st: _Parse, where: str) -> str:
    """The learner's view of a code cell: solutions become placeholders."""
    out: list[str] = []
    holes: dict[int, str | None] = {}  # output line -> assigned name (None: a statement)
    in_solution = in_prompt = False
    for line in text.splitlines():
        if in_prompt:
            if _END_PROMPT.match(line):
                in_prompt = False
            else:
                out.append(line)
            continue
        if _BEGIN_PROMPT.match(line):
            in_prompt = True
            continue
        if in_solution:
            if _END_SOLUTION.search(line):
                in_solution = False
            continue
        if m := _BEGIN_SOLUTION.match(line):
            in_solution = True
            if not m.group(2):
                holes[len(out)] = None
                out.append(m.group(1) + "...")
            continue
        if _END_SOLUTION.search(line):
            raise MasterFormatError(f"{where}: # END SOLUTION without # BEGIN SOLUTION.")
        if _DROPPED_LINE.search(line):
            continue
        if m := _SOLUTION_LINE.match(line):
            indent, code = m.group(1), m.group(2)
            target = _ASSIGNMENT.match(code)
            holes[len(out)] = target.group(1).strip() if target else None
            out.append(f"{indent}{target.group(1).strip()} = ..." if target else f"{indent}...")
            continue
        out.append(line)
    if in_solution or in_prompt:
        raise MasterFormatError(f"{where}: a BEGIN SOLUTION/PROMPT block is never closed.")
    return "\n".join(_friendly_holes(out, holes, question, st))


def _friendly_holes(
    lines: list[str], holes: dict[int, str | None], question: str | None, st: _Parse
) -> list[str]:
    """Placeholders inside a function raise a clear error; top-level ``x = ...`` stays put.

    A function whose body is ``...`` would quietly return None; raising NotImplementedYet
    tells the learner what is missing the moment the function is called.
    """
    result: list[str] = []
    for index, line in enumerate(lines):
        if index not in holes:
            result.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if _inside_function(lines, index):
            raised = indent + _not_written(question)
            st.uses_not_implemented = True
            if not (result and result[-1] == raised):  # one raise per hole is enough
                result.append(raised)
            continue
        name = holes[index]
        if name and not indent and name.isidentifier() and question:
            q = next(q for q in st.questions if q.name == question)
            if name not in q.placeholders:
                q.placeholders.append(name)
        result.append(line)
    return result


def _inside_function(lines: list[str], index: int) -> bool:
    """True if line ``index`` sits in the body of a ``def`` (looking at indentation)."""
    level = len(lines[index]) - len(lines[index].lstrip())
    for line in reversed(lines[:index]):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent < level:
            if stripped.startswith((")", "]", "}")):
                # The closing bracket of a header split over lines (how ruff formats a long
                # signature): the header's first line is further up, at this same indent.
                level = indent + 1
                continue
            if stripped.startswith(("def ", "async def ")):
                return True
            level = indent
            if level == 0:
                return False
    return False


def _solution_code(text: str, where: str) -> str:
    """The solution view of a code cell: markers and learner prompts removed."""
    out: list[str] = []
    in_prompt = False
    for line in text.splitlines():
        if in_prompt:
            in_prompt = not _END_PROMPT.match(line)
            continue
        if _BEGIN_PROMPT.match(line):
            in_prompt = True
            continue
        if _BEGIN_SOLUTION.match(line) or _END_SOLUTION.search(line):
            continue
        line = re.sub(r"\s*#\s*SOLUTION( NO PROMPT)?\s*$", "", line)
        out.append(_SEED_LINE.sub("", line))
    if in_prompt:
        raise MasterFormatError(f"{where}: a BEGIN PROMPT block is never closed.")
    return "\n".join(out)


# --------------------------------------------------------------------------- tests


def _finish_questions(st: _Parse) -> list[Question]:
    function_tests = st.config.get("tests", {}) or {}
    ok_format = function_tests.get("ok_format", True) if isinstance(function_tests, dict) else True
    for q in st.questions:
        raw = st.raw_tests.get(q.name, [])
        tests = [
            _test_case(q.name, i + 1, text, outputs, where, ok_format)
            for i, (text, outputs, where) in enumerate(raw)
        ]
        points = _resolve_points(st.question_points.get(q.name), tests, q.name, st.where)
        for test, value in zip(tests, points, strict=True):
            test.points = value
        q.tests = tests
        q.points = float(round(sum(points), 6))
        given = st.question_points.get(q.name)
        if q.manual and not tests and isinstance(given, (int, float)):
            q.points = float(given)  # a person grades it: its worth is what the master says
        if not q.manual and not tests:
            st.warnings.append(f"{q.name} has no tests, so it is worth 0 points.")
        for test in tests:
            if test.kind == "output" and test.expected is None and _ends_in_value(test.code):
                st.warnings.append(
                    f"{test.name} ends in an expression but the master shows no output for it, "
                    "so it passes whenever it raises no error. Run the master notebook before "
                    "`labkit assign` to record the expected output, or use `assert`."
                )
    return st.questions


def _test_case(
    question: str, number: int, text: str, outputs: str | None, where: str, ok_format: bool
) -> TestCase:
    lines = text.splitlines()
    config: dict[str, Any] = {}
    if lines and _HIDDEN_LINE.match(lines[0].strip()):
        config["hidden"] = True
        lines = lines[1:]
    if lines and _BEGIN_TEST_CONFIG.match(lines[0]):
        end = next((i for i, line in enumerate(lines) if _END_TEST_CONFIG.match(line)), None)
        if end is None:
            raise MasterFormatError(f"{where}: # BEGIN TEST CONFIG is never closed.")
        config.update(_yaml("\n".join(lines[1:end]), where))
        lines = lines[end + 1 :]
    code = "\n".join(line for line in lines if not _IGNORE_LINE.search(line)).strip("\n")
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise MasterFormatError(f"{where}: the test does not parse ({exc}).") from exc
    kind = "function" if (not ok_format or _defines_only_tests(tree)) else "output"
    if kind == "function" and not _test_functions(tree):
        raise MasterFormatError(f"{where}: this test defines no function named test_...")
    description = str(config.get("description") or _describe(tree, code))
    points = config.get("points")
    return TestCase(
        name=str(config.get("name") or f"{question}.{number}"),
        code=code,
        kind=kind,
        points=float(points) if isinstance(points, (int, float)) else -1.0,
        hidden=bool(config.get("hidden", False)),
        expected=outputs if kind == "output" else None,
        description=description,
        success_message=config.get("success_message"),
        failure_message=config.get("failure_message"),
    )


def _test_functions(tree: ast.Module) -> list[str]:
    return [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
    ]


def _defines_only_tests(tree: ast.Module) -> bool:
    """True for an exception-style test cell: only imports, constants and test functions."""
    allowed = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Import, ast.ImportFrom, ast.Assign)
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and _is_docstring(n))]
    return bool(_test_functions(tree)) and all(isinstance(n, allowed) for n in body)


def _is_docstring(node: ast.Expr) -> bool:
    return isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _ends_in_value(code: str) -> bool:
    tree = ast.parse(code)
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return False
    # A bare call such as test_helper(x) usually returns None, so no output is expected.
    return not isinstance(last.value, ast.Call)


def _describe(tree: ast.Module, code: str) -> str:
    """A one-line description: the test function's docstring or the first comment."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                return doc.strip().splitlines()[0]
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
    return ""


def _resolve_points(
    question_points: Any, tests: list[TestCase], question: str, where: str
) -> list[float]:
    """Points per test, following otter's rules for mixing question and test points."""
    if not tests:
        return []
    if isinstance(question_points, list):
        if len(question_points) != len(tests):
            raise MasterFormatError(
                f"{where}: {question} lists {len(question_points)} point values "
                f"for {len(tests)} tests."
            )
        return [float(p) for p in question_points]
    if question_points is not None and not isinstance(question_points, (int, float)):
        raise MasterFormatError(f"{where}: {question} has points: {question_points!r}.")
    given = [t.points for t in tests]
    unset = [i for i, p in enumerate(given) if p < 0]
    set_total = sum(p for p in given if p >= 0)
    if len(unset) == len(tests):  # nobody said anything per test: share the question's points
        total = float(question_points) if question_points is not None else 1.0
        return [total / len(tests)] * len(tests)
    if question_points is None:
        share = 0.0
        if set_total == 0 and unset:  # only zeros were given: the question is worth 1
            share = 1.0 / len(unset)
    else:
        share = (float(question_points) - set_total) / len(unset) if unset else 0.0
        if share < 0:
            raise MasterFormatError(
                f"{where}: the tests of {question} add up to more than its {question_points} points."
            )
    return [share if p < 0 else p for p in given]


# ----------------------------------------------------------------------- notebooks


def _init_source(exercise: Exercise, learner: bool, raises: bool) -> str:
    lines = [
        "# Run this cell first: it loads the checks for this exercise.",
        "from labkit.course.checks import check, check_all, use_tests",
    ]
    if learner and raises:
        lines.append("from labkit.errors import NotImplementedYet")
    lines += ["", f'use_tests("tests/{exercise.name}.json")']
    return "\n".join(lines)


def _with_boilerplate(
    cells: list[_Cell], st: _Parse, exercise: Exercise, *, learner: bool
) -> list[_Cell]:
    """Add the setup cell (before the first code cell) and a check-everything cell."""
    if not any(q.tests for q in exercise.questions) and not st.uses_not_implemented:
        return list(cells)
    init = _Cell(
        "code", _init_source(exercise, learner, st.uses_not_implemented), "labkit-setup", []
    )
    first_code = next((i for i, c in enumerate(cells) if c.kind == "code"), len(cells))
    result = [*cells[:first_code], init, *cells[first_code:]]
    if st.config.get("check_all_cell", True) and any(q.tests for q in exercise.questions):
        result.append(_Cell("markdown", "## Check everything", "check-all-title", []))
        result.append(_Cell("code", "check_all()", "check-all", []))
    return result


def _notebook_bytes(cells: list[_Cell], name: str, version: str) -> bytes:
    """A clean notebook: no outputs, fixed metadata and cell ids, so the bytes are stable."""
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        "labkit": {"exercise": name, "version": version},
    }
    used: set[str] = set()
    for index, cell in enumerate(cells):
        cid = cell.cell_id if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cell.cell_id) else ""
        if not cid or cid in used:
            digest = hashlib.sha1(f"{index}:{cell.source}".encode()).hexdigest()[:12]
            cid = f"c{index}-{digest}"
        used.add(cid)
        meta: dict[str, Any] = {"tags": cell.tags} if cell.tags else {}
        if cell.kind == "code":
            node = nbformat.v4.new_code_cell(cell.source, metadata=meta)  # type: ignore[no-untyped-call]
        elif cell.kind == "markdown":
            node = nbformat.v4.new_markdown_cell(cell.source, metadata=meta)  # type: ignore[no-untyped-call]
        else:
            node = nbformat.v4.new_raw_cell(cell.source, metadata=meta)  # type: ignore[no-untyped-call]
        node["id"] = cid
        nb.cells.append(node)
    nb.nbformat, nb.nbformat_minor = 4, 5
    text: str = nbformat.writes(nb)  # type: ignore[no-untyped-call]
    return (text + "\n").encode("utf-8")


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def work_fingerprint(notebook: bytes) -> str:
    """A hash of what a person wrote in a notebook (cell types and sources, not outputs)."""
    nb = json.loads(notebook)
    cells = [[c.get("cell_type"), _source(c)] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------- writing


def masters_in(path: Path) -> list[Path]:
    """The master notebooks at ``path`` (a notebook, or every notebook in a folder)."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        if not found:
            raise LabkitError(f"No master notebooks (*.ipynb) in {path}.")
        return found
    if path.suffix != ".ipynb" or not path.is_file():
        raise LabkitError(f"{path} is not a notebook or a folder of notebooks.")
    return [path]


def drift(master: Path, root: Path) -> list[str]:
    """Generated files under ``root`` that no longer match ``master`` (missing ones too)."""
    generated = parse_master(master)
    return [
        rel
        for rel, content in generated.files.items()
        if not (root / rel).is_file() or (root / rel).read_bytes() != content
    ]


def assert_in_sync(masters: Path, root: Path) -> None:
    """Fail with a clear message if any generated file drifted from its master (for tests)."""
    stale = [rel for master in masters_in(masters) for rel in drift(master, root)]
    if stale:
        raise AssertionError(
            "These generated files do not match their masters: "
            + ", ".join(stale)
            + f". Edit the master, then run `labkit assign {masters}`."
        )


def assign(
    masters: list[Path], root: Path, *, force: bool = False, say: bool = True
) -> list[Generated]:
    """Generate every master's files under ``root``; refuse to replace hand-edited ones."""
    generated = [parse_master(m) for m in masters]
    names = [g.exercise.name for g in generated]
    if len(set(names)) != len(names):
        raise LabkitError(f"Two masters have the same file name: {sorted(names)}.")
    if not force:
        refused = [rel for g in generated for rel in _edited_outputs(g, root)]
        if refused:
            raise OverwriteRefused(
                "These files were changed since `labkit assign` wrote them: "
                + ", ".join(refused)
                + ". Nothing was written. Move your changes into the master, or copy the "
                "files elsewhere and run again with --force to replace them."
            )
    for g in generated:
        for rel, content in g.files.items():
            path = root / rel
            if path.is_file() and path.read_bytes() == content:
                continue
            write_atomic(path, content)
        if say:
            print(
                f"{g.exercise.name}: {len(g.exercise.questions)} questions, "
                f"{g.exercise.possible:g} points → {g.learner_path}, {g.solution_path}, "
                f"{g.public_path}, {g.key_path}"
            )
            for warning in g.warnings:
                print(f"  warning: {warning}")
    return generated


def _edited_outputs(g: Generated, root: Path) -> list[str]:
    """Notebooks on disk that differ from both the new output and what was last generated."""
    try:
        old_key = json.loads((root / g.key_path).read_text(encoding="utf-8"))
        previous: dict[str, str] = dict(old_key.get("generated", {}))
    except (OSError, ValueError, AttributeError):
        previous = {}
    edited = []
    for rel in (g.learner_path, g.solution_path):
        path = root / rel
        if not path.is_file():
            continue
        current = path.read_bytes()
        if current == g.files[rel]:
            continue
        try:
            work = work_fingerprint(current)
        except (ValueError, AttributeError):
            work = ""
        if work != previous.get(rel):
            edited.append(rel)
    return edited


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


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``labkit assign``."""
    parser.add_argument("path", help="a master notebook, or a folder of them (e.g. masters/)")
    parser.add_argument(
        "--root",
        default=".",
        help="course folder that receives exercises/, solutions/ and grading/ (default: .)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace generated notebooks even if edited by hand"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list generated files that no longer match their masters",
    )


def cli(args: argparse.Namespace) -> int:
    """Run ``labkit assign`` with parsed arguments."""
    masters = masters_in(Path(args.path))
    root = Path(args.root)
    if args.check:
        stale = [rel for master in masters for rel in drift(master, root)]
        for rel in stale:
            print(f"out of date: {rel}")
        if stale:
            print(f"Run `labkit assign {args.path}` to regenerate them.")
            return 1
        print(f"All generated files match their {len(masters)} master(s).")
        return 0
    assign(masters, root, force=args.force)
    return 0
