"""Reading a master notebook in otter's format: questions, solutions, tests, points."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import yaml

from labkit.grader.exercise import (
    LEARNER_DIR,
    MANUAL_PROMPT,
    SOLUTION_DIR,
    Exercise,
    Generated,
    MasterFormatError,
    Question,
    TestCase,
    cell_source,
    json_bytes,
    work_fingerprint,
)
from labkit.grader.versions import (
    Cell,
    check_syntax,
    learner_code,
    notebook_bytes,
    notebook_names,
    refuse_leftover_markers,
    refuse_unmarked_solution,
    solution_code,
    undefined_names,
    with_boilerplate,
)

__all__ = ["parse_master"]


_BOUNDARY = re.compile(r"#\s+(begin|end)\s+(question|prompt|solution|tests)\s*$", re.IGNORECASE)


_CONFIG_CELL = re.compile(r"#\s+assignment\s+config\s*$", re.IGNORECASE)


_IGNORE_CELL = re.compile(r"##\s*ignore\s*##\s*$", re.IGNORECASE)


_HIDDEN_LINE = re.compile(r"#\s*hidden\s*$", re.IGNORECASE)


_BEGIN_TEST_CONFIG = re.compile(r"^\s*(\"\"\"|''')\s*#\s*BEGIN TEST CONFIG\s*$")


_END_TEST_CONFIG = re.compile(r"^\s*(\"\"\"|''')\s*;?\s*#\s*END TEST CONFIG\s*$")


_IGNORE_LINE = re.compile(r"#\s*IGNORE\s*$")


# "(2 points)", "(1 point)", "[3 pts]" in a question's text: what learners are told it is worth.
_HEADING_POINTS = re.compile(
    r"[(\[]\s*(\d+(?:\.\d+)?)\s*(?:points?|pts?)\.?\s*[)\]]", re.IGNORECASE
)


# The settings each YAML block may hold. Otter's own keys that labkit has no use for are
# accepted with a note; anything else is most likely a typo that would change a score.
_ASSIGNMENT_KEYS = frozenset({"name", "files", "check_all_cell", "tests"})
_QUESTION_KEYS = frozenset({"name", "points", "manual", "check_cell"})
_TEST_KEYS = frozenset(
    {"hidden", "points", "success_message", "failure_message", "name", "description"}
)
_OTTER_ONLY_KEYS = frozenset({"export"})


def _first_line(text: str) -> str:
    for line in text.splitlines():
        return line.strip()
    return ""


def _unfence(cell: Any) -> tuple[str, str]:
    """A cell's (type, source); a Markdown cell that is one ```otter block counts as raw."""
    kind, text = str(cell.get("cell_type", "")), cell_source(cell)
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
class _Parse:
    """Mutable state while walking a master."""

    where: str
    config: dict[str, Any] = field(default_factory=dict)
    learner: list[Cell] = field(default_factory=list)
    solution: list[Cell] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    raw_tests: dict[str, list[tuple[str, str | None, str]]] = field(default_factory=dict)
    question_points: dict[str, Any] = field(default_factory=dict)
    headings: dict[str, str] = field(default_factory=dict)  # question -> its Markdown text
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
    extras = {
        "raises": state.uses_not_implemented,
        "check_all": state.config.get("check_all_cell", True),
    }
    learner_cells = with_boilerplate(state.learner, exercise, learner=True, **extras)
    solution_cells = with_boilerplate(state.solution, exercise, learner=False, **extras)
    learner = notebook_bytes(learner_cells, name, "learner")
    solution = notebook_bytes(solution_cells, name, "solution")
    generated = Generated(exercise=exercise, files={}, warnings=state.warnings)
    outputs = {
        generated.learner_path: work_fingerprint(learner),
        generated.solution_path: work_fingerprint(solution),
    }
    generated.files = {
        generated.learner_path: learner,
        generated.solution_path: solution,
        generated.public_path: json_bytes(exercise.to_public()),
        generated.key_path: json_bytes(exercise.to_key(outputs)),
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
            st.config = _yaml("\n".join(text.splitlines()[1:]), where)
            unused = sorted(set(st.config) - _ASSIGNMENT_KEYS)
            if unused:
                st.warnings.append(
                    f"{where}: labkit does not use these ASSIGNMENT CONFIG keys: "
                    f"{', '.join(unused)} (it reads {', '.join(sorted(_ASSIGNMENT_KEYS))})."
                )
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
                    st.learner.append(Cell("markdown", MANUAL_PROMPT, "", []))
                block = None
            continue
        if kind in ("code", "markdown") and _IGNORE_CELL.match(first):
            continue
        qname = question["name"] if question else None
        if block == "tests":
            if kind == "code":
                st.raw_tests.setdefault(str(qname), []).append((text, _test_outputs(cell), where))
            continue
        if kind == "markdown" and qname and block in (None, "prompt"):
            st.headings[qname] = st.headings.get(qname, "") + text + "\n"
        if block == "prompt":
            if kind == "code":
                refuse_leftover_markers(text, where)
            st.learner.append(Cell(kind, text, cell_id, tags))
            continue
        if kind == "code":
            found = learner_code(text, qname, where)
            learner = found.text
            st.uses_not_implemented |= found.raises
            if found.placeholders:
                asked = next(q for q in st.questions if q.name == qname)
                asked.placeholders += [n for n in found.placeholders if n not in asked.placeholders]
            refuse_leftover_markers(learner, where)  # first: a misspelt marker is the likely cause
            if block == "solution":
                refuse_unmarked_solution(text, where)
            solution = solution_code(text, where)
            st.warnings.extend(check_syntax(solution, learner, where))
            st.learner.append(Cell(kind, learner, cell_id, tags))
            st.solution.append(Cell(kind, solution, cell_id, tags))
        elif block == "solution":
            had_md_solution = True
            st.solution.append(Cell(kind, text, cell_id, tags))
        else:
            st.learner.append(Cell(kind, text, cell_id, tags))
            st.solution.append(Cell(kind, text, cell_id, tags))
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
    st.warnings.extend(_unknown_keys(config, _QUESTION_KEYS, f"{where} (question {name})"))
    _require_bool(config, ("manual", "check_cell"), where)
    st.questions.append(Question(name=name, points=0.0, manual=bool(config.get("manual"))))
    st.question_points[name] = config.get("points")
    return config


def _unknown_keys(config: dict[str, Any], known: frozenset[str], where: str) -> list[str]:
    """A warning per key labkit would silently ignore."""
    warnings = []
    for key in sorted(set(config) - known):
        if key in _OTTER_ONLY_KEYS:
            warnings.append(f"{where}: `{key}:` is an otter setting labkit ignores.")
        else:
            warnings.append(
                f"{where}: `{key}:` is not a setting here, so it is ignored "
                f"(known: {', '.join(sorted(known))}). Is it a typo?"
            )
    return warnings


def _require_bool(config: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Refuse ``hidden: "false"`` and the like: a string would count as true."""
    for key in keys:
        if key in config and not isinstance(config[key], bool):
            raise MasterFormatError(
                f"{where}: `{key}: {config[key]!r}` must be true or false (without quotes)."
            )


def _add_check_cell(config: dict[str, Any], st: _Parse) -> None:
    """At the end of an autograded question, a ``check("q1")`` cell (as otter adds one)."""
    name = str(config["name"])
    if config.get("manual") or not st.raw_tests.get(name) or not config.get("check_cell", True):
        return
    check = Cell("code", f'check("{name}")', f"check-{name}", [])
    st.learner.append(check)
    st.solution.append(Cell("code", check.source, check.cell_id, []))


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


def _finish_questions(st: _Parse) -> list[Question]:
    function_tests = st.config.get("tests", {}) or {}
    ok_format = function_tests.get("ok_format", True) if isinstance(function_tests, dict) else True
    notebook = notebook_names(st.solution)
    for q in st.questions:
        raw = st.raw_tests.get(q.name, [])
        tests = [
            _test_case(q.name, i + 1, text, outputs, where, ok_format, st.warnings)
            for i, (text, outputs, where) in enumerate(raw)
        ]
        given = st.question_points.get(q.name)
        points = _resolve_points(given, tests, q.name, st.where)
        st.warnings.extend(_points_warnings(q, given, tests, points))
        worth = _worth(tests, given)  # before the tests' points are filled in
        for test, value in zip(tests, points, strict=True):
            test.points = value
        q.tests = tests
        q.points = float(round(sum(points), 6))
        if q.manual and not tests and isinstance(given, (int, float)):
            q.points = float(given)  # a person grades it: its worth is what the master says
        if not q.manual and not tests:
            st.warnings.append(f"{q.name} has no tests, so it is worth 0 points.")
        heading = _HEADING_POINTS.search(st.headings.get(q.name, ""))
        if heading and abs(float(heading.group(1)) - q.points) > 1e-6:
            st.warnings.append(
                f"{q.name}: its text says {heading.group(0)}, but it is worth {q.points:g} "
                f"({worth}). Make the two agree."
            )
        for test in tests:
            if test.kind == "output" and test.expected is None and _ends_in_value(test.code):
                st.warnings.append(
                    f"{test.name} ends in an expression but the master shows no output for it, "
                    "so it passes whenever it raises no error. Run the master notebook before "
                    "`labkit assign` to record the expected output, or use `assert`."
                )
            if notebook is not None:
                missing = undefined_names(test.code, test.kind == "function", notebook)
                if missing:
                    st.warnings.append(
                        f"{test.name} uses {', '.join(f'`{n}`' for n in missing)}, which "
                        "neither the test nor the solution notebook defines: it would fail "
                        "for everyone. Import or define it in the test, or fix the spelling."
                    )
    return st.questions


def _worth(tests: list[TestCase], given: Any) -> str:
    """Where a question's points came from, in words."""
    if not tests:
        return "it has no tests"
    if given is None and all(t.points < 0 for t in tests):
        return "no points given anywhere: 1 by default"
    return "the sum of its tests' points"


def _points_warnings(
    q: Question, given: Any, tests: list[TestCase], points: list[float]
) -> list[str]:
    """Where the points a master gives disagree with each other or are left to defaults."""
    if not tests or q.manual:
        return []
    unset = [t.name for t in tests if t.points < 0]
    set_total = sum(t.points for t in tests if t.points >= 0)
    if isinstance(given, list):
        differ = [t.name for t, p in zip(tests, given, strict=True) if 0 <= t.points != p]
        if differ:
            return [
                f"{q.name}: the `points:` list of the question overrides the points of "
                f"{', '.join(differ)}. Give points in one place only."
            ]
        return []
    if given is None and len(unset) == len(tests):
        return [
            f"{q.name}: neither the question nor its tests give `points:`, so it is worth 1 "
            "point. Add `points: N` to its # BEGIN QUESTION cell (split evenly across its "
            "tests) or to each test's TEST CONFIG."
        ]
    zero = [t.name for t, p in zip(tests, points, strict=True) if t.points < 0 and p == 0]
    if zero:
        why = (
            "the question gives no `points:` to share"
            if given is None
            else f"the other tests already use all {given:g} of the question's points"
        )
        return [f"{q.name}: {', '.join(zero)} give no `points:` and {why}, so they are worth 0."]
    if given is not None and not unset and abs(set_total - float(given)) > 1e-6:
        return [
            f"{q.name}: `points: {given:g}` in # BEGIN QUESTION is ignored: its tests give "
            f"{set_total:g} points in all. Make them agree, or drop one of them."
        ]
    return []


def _test_case(
    question: str,
    number: int,
    text: str,
    outputs: str | None,
    where: str,
    ok_format: bool,
    warnings: list[str],
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
        warnings.extend(_unknown_keys(config, _TEST_KEYS, f"{where} (TEST CONFIG)"))
        _require_bool(config, ("hidden",), where)
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
    if points is not None and (not isinstance(points, (int, float)) or isinstance(points, bool)):
        raise MasterFormatError(
            f"{where}: `points: {points!r}` must be a number, such as 1 or 0.5."
        )
    if isinstance(points, (int, float)) and points < 0:
        raise MasterFormatError(f"{where}: `points: {points}` must not be negative.")
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
