"""Check your answers: ``check("q1")`` runs the public tests of q1 in your notebook.

The first cell of every exercise loads its tests::

    from labkit.course.checks import check, check_all, use_tests
    use_tests("tests/01-example.json")

Then ``check("q1")`` runs q1's tests against the variables and functions you defined, and
shows which tests passed, what was expected and a hint — never a raw traceback. It returns
a ``CheckResult`` you can also inspect (``result.passed``, ``result.score``).

The instructor's grader runs the same tests, with hidden ones added, in a process of its own:
it calls your functions in your kernel and judges what they return there, so what your
notebook does to this module changes only what ``check()`` shows you.
"""

from __future__ import annotations

import ast
import contextlib
import html
import inspect
import io
import json
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from labkit.errors import (
    LabkitError,
    LabkitTimeout,
    NotImplementedYet,
    RuntimeUnavailable,
)

PASSED, FAILED, ERROR, NOT_DONE, TIMEOUT = "passed", "failed", "error", "not-implemented", "timeout"
_MAX_TEXT = 600  # characters of any message shown; long values only hide the point

_loaded: dict[str, Any] | None = None
_loaded_from: Path | None = None


@dataclass
class TestResult:
    """The outcome of one test."""

    name: str
    question: str
    status: str  # passed | failed | error | not-implemented | timeout
    points: float
    earned: float
    hidden: bool = False
    description: str = ""
    message: str = ""  # what went wrong, in the test author's words where possible
    hint: str = ""
    detail: str = ""  # what really went wrong in a hidden test: for the instructor only

    @property
    def passed(self) -> bool:
        """True if the test passed."""
        return self.status == PASSED


@dataclass
class CheckResult:
    """What ``check()`` found for one question."""

    question: str
    results: list[TestResult] = field(default_factory=list)
    hidden_tests: int = 0

    @property
    def passed(self) -> bool:
        """True if every public test passed."""
        return all(r.passed for r in self.results)

    @property
    def score(self) -> float:
        """Points earned on the public tests."""
        return sum(r.earned for r in self.results)

    @property
    def possible(self) -> float:
        """Points the public tests are worth."""
        return sum(r.points for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    def _headline(self) -> str:
        done = sum(r.passed for r in self.results)
        if not self.results:
            return f"{self.question}: no public tests (it is graded by hidden tests only)"
        if all(r.status == NOT_DONE for r in self.results):
            return f"{self.question}: not implemented yet"
        return (
            f"{self.question}: {done} of {len(self.results)} tests passed"
            f" ({self.score:g}/{self.possible:g} points)"
        )

    def _footer(self) -> str:
        if not self.hidden_tests:
            return ""
        tests = "test" if self.hidden_tests == 1 else "tests"
        return f"{self.hidden_tests} more hidden {tests} will run when your work is graded."

    def __repr__(self) -> str:
        lines = [self._headline()]
        for r in self.results:
            mark = "✔" if r.passed else "✘"
            about = f" — {r.description}" if r.description else ""
            lines.append(f"  {mark} {r.name}{about}")
            if not r.passed and r.message:
                lines.append(f"      {r.message}")
            if not r.passed and r.hint:
                lines.append(f"      hint: {r.hint}")
        if footer := self._footer():
            lines.append(f"  ({footer})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#b35900"
        items = []
        for r in self.results:
            mark = "✅" if r.passed else ("🚧" if r.status == NOT_DONE else "❌")
            about = f" — {html.escape(r.description)}" if r.description else ""
            detail = ""
            if not r.passed and r.message:
                detail += f'<div style="margin-left:1.6em">{_html(r.message)}</div>'
            if not r.passed and r.hint:
                detail += f'<div style="margin-left:1.6em"><i>Hint: {_html(r.hint)}</i></div>'
            items.append(f"<li>{mark} <code>{html.escape(r.name)}</code>{about}{detail}</li>")
        footer = f"<p><small>{html.escape(self._footer())}</small></p>" if self._footer() else ""
        return (
            f'<div class="labkit-check" style="border-left:4px solid {color};padding-left:8px">'
            f"<b>{html.escape(self._headline())}</b>"
            f'<ul style="list-style:none;padding-left:0">{"".join(items)}</ul>{footer}</div>'
        )


def _html(text: str) -> str:
    """Escape text for HTML, showing `code` in backticks as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


@dataclass
class CheckSummary:
    """What ``check_all()`` found: one ``CheckResult`` per question."""

    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        """True if every public test of every question passed."""
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return "\n".join(repr(c) for c in self.checks)

    def _repr_html_(self) -> str:
        return "".join(c._repr_html_() for c in self.checks)


# ------------------------------------------------------------------- learner side


def use_tests(path: str | Path) -> None:
    """Load an exercise's public tests (the first cell of each exercise calls this)."""
    global _loaded, _loaded_from
    found = _find_tests(Path(path))
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabkitError(
            f"Cannot read the checks in {found} ({exc}). Get a fresh copy of the exercise."
        ) from exc
    _loaded, _loaded_from = data, found


def _find_tests(path: Path) -> Path:
    """Look next to the notebook first, then in the course's exercises/ folder."""
    candidates = [path]
    if not path.is_absolute():
        project = Path(__file__).resolve().parents[2]
        # solutions/ sits next to exercises/, which holds the tests of both versions
        candidates = [Path.cwd() / path, Path.cwd().parent / "exercises" / path]
        candidates.append(project / "exercises" / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LabkitError(
        f"Cannot find the checks file {path} (looked in {', '.join(map(str, candidates))}). "
        "Open the notebook from the course's exercises/ folder and run its first cell."
    )


def check(question: str) -> CheckResult:
    """Run the public tests of ``question`` against your notebook's variables."""
    namespace = sys._getframe(1).f_globals
    return _check(question, namespace)


def check_all() -> CheckSummary:
    """Run the public tests of every question."""
    namespace = sys._getframe(1).f_globals
    questions = [q["name"] for q in _tests()["questions"] if not q.get("manual")]
    return CheckSummary([_check(name, namespace) for name in questions])


def _tests() -> dict[str, Any]:
    if _loaded is None:
        raise LabkitError(
            "No checks are loaded. Run the first code cell of the exercise "
            "(the one with use_tests(...)), then check again."
        )
    return _loaded


def _check(question: str, namespace: dict[str, Any]) -> CheckResult:
    data = _tests()
    spec = next((q for q in data["questions"] if q["name"] == question), None)
    if spec is None:
        known = ", ".join(q["name"] for q in data["questions"])
        raise LabkitError(f"There is no question {question!r} in this exercise; try: {known}.")
    results = [
        run_test(test, namespace, question=question, placeholders=spec.get("placeholders", []))
        for test in spec["tests"]
    ]
    return CheckResult(question, results, int(spec.get("hidden_tests", 0)))


# ----------------------------------------------------------------- running a test


def run_test(
    test: dict[str, Any],
    namespace: dict[str, Any],
    *,
    question: str,
    placeholders: list[str] | tuple[str, ...] = (),
    grading: bool = False,
) -> TestResult:
    """Run one test against ``namespace`` and describe the outcome in plain words."""
    hidden = bool(test.get("hidden"))
    result = TestResult(
        name=str(test["name"]),
        question=question,
        status=PASSED,
        points=float(test.get("points", 0)),
        earned=0.0,
        hidden=hidden,
        description=str(test.get("description") or ""),
    )
    # Still ``...`` means "not done yet"; a missing name is left to the tests (NameError hint).
    missing = [n for n in placeholders if n in namespace and namespace[n] is ...]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        verb = "is" if len(missing) == 1 else "are"
        result.status = NOT_DONE
        result.message = f"{question} is not implemented yet: {names} {verb} still `...`."
        result.hint = "Replace the `...` with your answer, run the cell, then check again."
        return result
    # The test sees your variables, but works on a copy so it cannot rebind them.
    scope = dict(namespace)
    filename = f"<test {result.name}>"
    try:
        if test.get("kind") == "function":
            _run_function_test(str(test["code"]), scope, filename)
            shown = None
        else:
            shown = _run_output_test(str(test["code"]), scope, filename)
        expected = test.get("expected")
        if expected is not None and _normal(shown or "") != _normal(str(expected)):
            result.status = FAILED
            public = f"Expected {_clip(_normal(str(expected)))}, got {_clip(_normal(shown or '')) or 'nothing'}."
            result.message = "The result is not the expected one." if hidden else public
            result.detail = public if hidden and grading else ""
            result.hint = str(test.get("failure_message") or "")
    except NotImplementedYet as exc:
        result.status = NOT_DONE
        result.message = f"{question} is not implemented yet."
        if not hidden:
            result.message = _clip(str(exc)) or result.message
        result.hint = "Write the missing code, run its cell, then check again."
        _forget(exc)
    except AssertionError as exc:
        result.status = FAILED
        where = _Where(exc.__traceback__, filename, str(test["code"]), namespace)
        public = _clip(str(exc)) or _clip(f"This check failed: {where.line}{where.case}")
        # A hidden test's text may be built from your values: only its verdict is shown.
        result.message = "A hidden check failed." if hidden else public
        result.detail = public if hidden and grading else ""
        result.hint = str(test.get("failure_message") or "")
        _forget(exc)
    except KeyboardInterrupt:
        if not grading:
            raise  # you pressed stop: let the notebook stop
        result.status = TIMEOUT
        result.message = "The test took too long and was stopped."
        result.hint = "Look for a loop that never ends, or a call that waits forever."
    except Exception as exc:
        result.status = ERROR
        where = _Where(exc.__traceback__, filename, str(test["code"]), namespace)
        if hidden:  # an exception's text is whatever the code that raised it chose
            # The learner gets the error's name and the test's hint (which names the cases
            # it covers); the line and the case it was on are for the instructor only.
            result.message = f"The hidden test stopped with {safe_error_name(exc)}."
            result.hint = str(test.get("failure_message") or "")
            if grading:
                at = f" (at: {where.line}{where.case})" if where.line else ""
                yours = f", raised in {where.calls}" if where.calls else ""
                result.detail = _clip(f"{type(exc).__name__}: {exc}{yours}{at}")
        else:
            # The error, then the test line and the case it was on (which input): a long
            # error text is cut first, so the case stays in view.
            error = f"{type(exc).__name__}: {exc}"
            error = error if len(error) <= _MAX_TEXT // 2 else error[: _MAX_TEXT // 2 - 1] + "…"
            at = f" (in the test line: {where.line}{where.case})" if where.line else ""
            result.message = _clip(error + at)
            result.hint = str(test.get("failure_message") or "") or _hint_for(exc)
        _forget(exc)
    if result.status == PASSED:
        result.earned = result.points
        result.message = str(test.get("success_message") or "")
    return result


def _forget(exc: BaseException) -> None:
    """Drop what an exception's traceback holds: the test's frames and their locals.

    Learner code may keep the exception it raised; without this it could walk from it
    into the test's frames after the test ended.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a chain made into a loop still ends
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def safe_error_name(exc: BaseException) -> str:
    """The exception's built-in or labkit class name, or "an error" (never its own text)."""
    import builtins

    import labkit.errors

    name = type(exc).__name__
    for module in (builtins, labkit.errors):
        if getattr(module, name, None) is type(exc):
            return name
    return "an error"


def _run_output_test(code: str, scope: dict[str, Any], filename: str) -> str:
    """Run code like a notebook cell: return what it printed plus its last value's display."""
    tree = ast.parse(code, filename)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        tree.body.pop()  # the last line's value is shown, as a notebook cell would show it
    else:
        last = None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, filename, "exec"), scope)
        value = None
        if last is not None:
            expr = ast.Expression(last.value)
            value = eval(compile(expr, filename, "eval"), scope)
    text = printed.getvalue()
    if value is not None:
        text += _display(value) + "\n"
    return text


def _run_function_test(code: str, scope: dict[str, Any], filename: str) -> None:
    """Define the test's functions apart, then call each, passing your variables by name."""
    own: dict[str, Any] = {"__name__": "labkit_test"}
    exec(compile(code, filename, "exec"), own)
    for name, func in own.items():
        if name.startswith("test") and inspect.isfunction(func):
            args = {
                p: (scope if p == "env" else scope.get(p))
                for p in inspect.signature(func).parameters
            }
            func(**args)


def _display(value: Any) -> str:
    """How a notebook shows a value (IPython's pretty printer when available)."""
    try:
        from IPython.lib.pretty import pretty

        return str(pretty(value))  # type: ignore[no-untyped-call]
    except ImportError:
        return repr(value)


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _failing_line(tb: TracebackType | None, filename: str, code: str) -> str:
    """The line of the test that failed, e.g. ``assert square(3) == 9``."""
    return _Where(tb, filename, code, {}).line


_PLAIN = (str, bytes, int, float, bool, type(None))
_SHOWN = 4  # values named per failure: the case, not a dump of the test's variables
_VALUE_CHARS = 160


class _Where:
    """Where a test failed: its line, the case it was on, and the learner's functions it called.

    The case is what the test was working on when your code raised: the variables of the
    loops around the line (``shape = 'Ollama generate'``) and the test's own values the line
    uses (``body = {...}``). Only plain data is shown, never an object of yours (showing it
    would run your code).
    """

    def __init__(
        self, tb: TracebackType | None, filename: str, code: str, learner: dict[str, Any]
    ) -> None:
        self.line = self.case = self.calls = ""
        found = None
        for frame, number in traceback.walk_tb(tb):
            if frame.f_code.co_filename == filename:
                found = (frame, number)
        lines = code.splitlines()
        if found is None or not 0 < found[1] <= len(lines):
            return
        frame, number = found
        self.line = lines[number - 1].strip()
        try:
            tree = ast.parse(code)
        except SyntaxError:
            return
        values = {**frame.f_globals, **frame.f_locals}
        names = _loop_names(tree, number) + _line_names(tree, number)
        shown: list[str] = []
        for name in dict.fromkeys(names):
            if name not in values or len(shown) >= _SHOWN:
                continue
            value = values[name]
            if name in learner and learner[name] is value:
                continue  # your own variable, not the test's input
            if _is_plain(value):
                text = repr(value)
                clipped = text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"
                shown.append(f"{name} = {clipped}")
        self.case = f"; with {', '.join(shown)}" if shown else ""
        called = [
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.lineno <= number <= (node.end_lineno or node.lineno)
            and callable(learner.get(node.func.id))
        ]
        self.calls = " or ".join(f"{name}()" for name in dict.fromkeys(called))


def _loop_names(tree: ast.AST, number: int) -> list[str]:
    """The names bound by the for loops and comprehensions around line ``number``."""
    names: list[str] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            targets = [generator.target for generator in node.generators]
        else:
            continue
        if node.lineno <= number <= (node.end_lineno or node.lineno):
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return names


def _line_names(tree: ast.AST, number: int) -> list[str]:
    """The names read on line ``number``."""
    return [
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.lineno == number
    ]


def _is_plain(value: Any, depth: int = 3) -> bool:
    """True for data made of str, numbers, None, lists, tuples, sets and dicts only."""
    if type(value) in _PLAIN:
        return True
    if depth <= 0 or type(value) not in (list, tuple, set, frozenset, dict):
        return False
    items = list(value.items()) if isinstance(value, dict) else [(v, None) for v in value]
    return len(items) <= 50 and all(
        _is_plain(k, depth - 1) and _is_plain(v, depth - 1) for k, v in items
    )


def _hint_for(exc: BaseException) -> str:
    """A hint for common mistakes, from the kind of error."""
    if isinstance(exc, NameError):
        name = getattr(exc, "name", None) or str(exc)
        return f"`{name}` is not defined yet: run the cell that defines it (or Run All above)."
    if isinstance(exc, TypeError) and "ellipsis" in str(exc):
        return "Something is still `...`: replace the placeholder with your code."
    if isinstance(exc, RuntimeUnavailable):
        return "The model runtime is not reachable: start it with `labkit up`."
    if isinstance(exc, LabkitTimeout):
        return "The runtime took too long: ask for fewer tokens, or try again."
    return ""
