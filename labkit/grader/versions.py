"""Learner and solution versions of a master's code, and the notebooks they go into."""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import nbformat

from labkit.grader.exercise import KERNELSPEC, Exercise, MasterFormatError

__all__ = [
    "Cell",
    "check_syntax",
    "learner_code",
    "notebook_bytes",
    "notebook_names",
    "refuse_leftover_markers",
    "refuse_unmarked_solution",
    "solution_code",
    "undefined_names",
    "with_boilerplate",
]


@dataclass
class Cell:
    """A cell on its way into the generated notebooks."""

    kind: str
    source: str
    cell_id: str
    tags: list[str]


_BEGIN_SOLUTION = re.compile(r"^(\s*)#\s*BEGIN SOLUTION( NO PROMPT)?\s*$")


_END_SOLUTION = re.compile(r"#\s*END SOLUTION\s*$")


_SOLUTION_LINE = re.compile(r"^(\s*)(.*?)\s*#\s*SOLUTION\s*$")


_DROPPED_LINE = re.compile(r"#\s*(SOLUTION NO PROMPT|SEED)\s*$")


_SEED_LINE = re.compile(r"\s*#\s*SEED\s*$")


_BEGIN_PROMPT = re.compile(r"^\s*(\"\"\"|''')\s*#\s*BEGIN PROMPT\s*$")


_END_PROMPT = re.compile(r"^\s*(\"\"\"|''')\s*;?\s*#\s*END PROMPT\s*$")


# Anything that reads like a solution marker; a learner line matching it means the marker was
# misspelt (``# begin solution``, ``# BEGIN  SOLUTION:``) and the answer went through as is.
_MARKER_LIKE = re.compile(
    r"#\s*((BEGIN|END)[\s_:-]*SOLUTION\b|SOLUTION(\s+NO\s+PROMPT)?\s*:?\s*$)", re.IGNORECASE
)


# The left side of an assignment such as ``answer =`` or ``a, b =`` (not ``==``).
_ASSIGNMENT = re.compile(r"^([A-Za-z_][\w\s,.\[\]'\"]*?)\s*(?<![=!<>])=(?!=)\s*(.*)$")


def _not_written(question: str | None) -> str:
    what = question or "This part"
    return f'raise NotImplementedYet("{what} is not written yet: replace this line with your code")'


@dataclass
class _LearnerCode:
    """A code cell as the learner gets it, and what the master's parse learns from it."""

    text: str
    placeholders: list[str]  # top-level names left as ``...`` for the learner to fill in
    raises: bool  # a placeholder inside a function became ``raise NotImplementedYet``


def learner_code(text: str, question: str | None, where: str) -> _LearnerCode:
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
    return _friendly_holes(out, holes, question)


def _friendly_holes(
    lines: list[str], holes: dict[int, str | None], question: str | None
) -> _LearnerCode:
    """Placeholders inside a function raise a clear error; top-level ``x = ...`` stays put.

    A function whose body is ``...`` would quietly return None; raising NotImplementedYet
    tells the learner what is missing the moment the function is called.
    """
    result: list[str] = []
    placeholders: list[str] = []
    raises = False
    for index, line in enumerate(lines):
        if index not in holes:
            result.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if _inside_function(lines, index):
            raised = indent + _not_written(question)
            raises = True
            if not (result and result[-1] == raised):  # one raise per hole is enough
                result.append(raised)
            continue
        name = holes[index]
        if name and not indent and name.isidentifier() and question and name not in placeholders:
            placeholders.append(name)
        result.append(line)
    return _LearnerCode("\n".join(result), placeholders, raises)


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


def solution_code(text: str, where: str) -> str:
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


def _marks_a_solution(text: str) -> bool:
    """True if a code cell says in its code which part is the answer."""
    return any(
        _BEGIN_SOLUTION.match(line) or _SOLUTION_LINE.match(line) or _DROPPED_LINE.search(line)
        for line in text.splitlines()
        if not _SEED_LINE.search(line)
    )


def refuse_unmarked_solution(text: str, where: str) -> None:
    """Stop when a code cell of a solution block would reach learners whole."""
    if _marks_a_solution(text):
        return
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    raise MasterFormatError(
        f"{where}: this code cell is inside a # BEGIN SOLUTION / # END SOLUTION block but marks "
        f"no answer in its code, so learners would get all of it (`{first[:60]}` …). Put the "
        "answer between `# BEGIN SOLUTION` and `# END SOLUTION` comment lines inside the cell "
        "(or end each answer line with `# SOLUTION`); move code learners should see out of "
        "the solution block. Nothing was written."
    )


def refuse_leftover_markers(learner: str, where: str) -> None:
    """Stop when a learner cell still holds something that reads like a solution marker."""
    for line in learner.splitlines():
        if _MARKER_LIKE.search(line):
            raise MasterFormatError(
                f"{where}: `{line.strip()[:70]}` looks like a solution marker labkit does not "
                "recognise, so the code around it would reach learners. Write the markers "
                "exactly as `# BEGIN SOLUTION`, `# END SOLUTION` (each on its own line) or "
                "`code  # SOLUTION` (capitals). Nothing was written."
            )


# Lines IPython rewrites before Python sees them: %magics, !shell commands, name? help.
_IPYTHON_SYNTAX = re.compile(r"^\s*[%!]|\?\s*$", re.MULTILINE)


def _as_python(code: str) -> str:
    """The cell as the kernel runs it (IPython's own rewriting of magics and shell lines)."""
    if not _IPYTHON_SYNTAX.search(code):
        return code
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(code))  # type: ignore[no-untyped-call]


def _parse_error(code: str) -> SyntaxError | None:
    try:
        ast.parse(_as_python(code))
    except SyntaxError as exc:
        return exc
    return None


def check_syntax(solution: str, learner: str, where: str) -> list[str]:
    """Refuse a solution that does not parse; warn when the learner version does not."""
    if exc := _parse_error(solution):
        line = (exc.text or "").strip()
        raise MasterFormatError(
            f"{where}: the solution code does not parse ({exc.msg}"
            + (f", at `{line[:70]}`" if line else "")
            + "). Fix it in the master; nothing was written."
        )
    if exc := _parse_error(learner):
        return [
            f"{where}: the learner version of this cell does not parse ({exc.msg}): learners "
            "start from a cell that fails before their code runs. Check where the solution "
            "markers cut the code (a `# BEGIN SOLUTION` block leaves `...` in its place)."
        ]
    return []


# Names every notebook has without defining them: Python's builtins, IPython's, the setup cell's.
_ALWAYS_THERE = frozenset(dir(builtins)) | {
    "display",
    "get_ipython",
    "In",
    "Out",
    "_",
    "__",
    "check",
    "check_all",
    "use_tests",
    "NotImplementedYet",
}


def _bound_names(tree: ast.AST) -> set[str] | None:
    """Every name ``tree`` binds anywhere (None after ``import *``: anything may be bound)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            if node.name == "*":
                return None
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


def notebook_names(cells: list[Cell]) -> set[str] | None:
    """The names a notebook's code defines (None if that cannot be known)."""
    names: set[str] = set()
    for cell in cells:
        if cell.kind != "code":
            continue
        try:
            bound = _bound_names(ast.parse(_as_python(cell.source)))
        except SyntaxError:
            continue
        if bound is None:
            return None
        names |= bound
    return names


def undefined_names(test_code: str, function_style: bool, notebook: set[str]) -> list[str]:
    """Names a test reads that neither it, the solution notebook nor Python defines."""
    tree = ast.parse(test_code)
    own = _bound_names(tree)
    if own is None:
        return []
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = read - own
    if function_style:  # a test function's parameters are filled from the notebook by name
        missing |= {
            a.arg
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test")
            for a in node.args.args + node.args.kwonlyargs
            if a.arg != "env"
        }
    return sorted(missing - notebook - _ALWAYS_THERE)


def _init_source(exercise: Exercise, learner: bool, raises: bool) -> str:
    lines = [
        "# Run this cell first: it loads the checks for this exercise.",
        "from labkit.course.checks import check, check_all, use_tests",
    ]
    if learner and raises:
        lines.append("from labkit.errors import NotImplementedYet")
    lines += ["", f'use_tests("tests/{exercise.name}.json")']
    return "\n".join(lines)


def with_boilerplate(
    cells: list[Cell], exercise: Exercise, *, learner: bool, raises: bool, check_all: bool
) -> list[Cell]:
    """Add the setup cell (before the first code cell) and a check-everything cell."""
    if not any(q.tests for q in exercise.questions) and not raises:
        return list(cells)
    init = Cell("code", _init_source(exercise, learner, raises), "labkit-setup", [])
    first_code = next((i for i, c in enumerate(cells) if c.kind == "code"), len(cells))
    result = [*cells[:first_code], init, *cells[first_code:]]
    if check_all and any(q.tests for q in exercise.questions):
        result.append(Cell("markdown", "## Check everything", "check-all-title", []))
        result.append(Cell("code", "check_all()", "check-all", []))
    return result


def notebook_bytes(cells: list[Cell], name: str, version: str) -> bytes:
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
