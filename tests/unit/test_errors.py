"""One error tree: every public exception is defined in labkit/errors.py and drawn in its doc."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import labkit
from labkit import errors

PACKAGE = Path(labkit.__file__).parent
TOP_LEVEL = sorted(p for p in PACKAGE.glob("*.py") if p.name != "errors.py")
# Not labkit errors: what the standard library and HTTP libraries raise, caught inside labkit.
FOREIGN = {"ValueError", "TypeError", "KeyError", "RuntimeError", "LabkitError", "Exception"}
# The fault proxy's and the grader's errors: importable where they are raised, not from labkit.
RAISED_IN = {
    "CourseUpdateError": ("labkit.update",),
    "FaultSpecError": ("labkit.faults", "labkit.faults.rules"),
    "GradingError": ("labkit.grader.settings",),
    "MasterFormatError": ("labkit.grader.exercise",),
    "OverwriteRefused": ("labkit.grader.exercise",),
    "ValidationFailed": ("labkit.grader.assign",),
}


def _error_classes() -> list[type[errors.LabkitError]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, errors.LabkitError)
    ]


def _drawn() -> dict[str, int]:
    """Class name -> indentation of its branch in the tree drawn in errors.py's docstring."""
    drawn: dict[str, int] = {}
    for line in (errors.__doc__ or "").splitlines():
        if line.strip() == "LabkitError":
            drawn["LabkitError"] = 0
        elif "── " in line:
            branch = line.index("── ")
            drawn[line[branch + 3 :].split()[0]] = branch
    return drawn


def test_the_docstring_draws_every_error_under_its_parent() -> None:
    drawn = _drawn()
    for cls in _error_classes():
        assert cls.__name__ in drawn, f"{cls.__name__} is missing from the tree in errors.py"
        if cls is errors.LabkitError:
            continue
        parent = next(b for b in cls.__bases__ if issubclass(b, errors.LabkitError))
        assert drawn[cls.__name__] > drawn[parent.__name__], f"{cls.__name__} not under {parent}"
    assert set(drawn) == {cls.__name__ for cls in _error_classes()}  # nothing drawn that is gone


def test_every_error_is_exported_from_labkit_or_where_it_is_raised() -> None:
    for cls in _error_classes():
        if cls.__name__ not in RAISED_IN:
            assert cls.__name__ in labkit.__all__, f"labkit does not export {cls.__name__}"
        for where in RAISED_IN.get(cls.__name__, ()):
            assert getattr(importlib.import_module(where), cls.__name__) is cls, where


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_labkit_error_anywhere_is_defined_in_errors_py_and_drawn() -> None:
    """Import every labkit module and find each LabkitError subclass: all live in the tree."""
    for module in pkgutil.walk_packages(labkit.__path__, "labkit."):
        if not module.name.endswith("__main__"):  # that one runs the command
            importlib.import_module(module.name)
    found = [c for c in _subclasses(errors.LabkitError) if c.__module__.startswith("labkit")]
    assert len(found) >= len(_error_classes()) - 1  # the walk sees the classes of errors.py
    drawn = _drawn()
    for cls in found:
        where = f"{cls.__module__}.{cls.__name__}"
        assert cls.__module__ == "labkit.errors", f"{where}: define it in labkit/errors.py"
        assert cls.__name__ in drawn, f"{where} is missing from the tree in errors.py"


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.name)
def test_no_module_defines_its_own_exception(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
            assert not bases & ({"Exception", "BaseException"} | {c.__name__ for c in _error_classes()}), (
                f"{path.name} defines the exception {node.name}: define it in labkit/errors.py"
            )  # fmt: skip


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.name)
def test_no_module_raises_a_bare_base_class_or_a_foreign_error(path: Path) -> None:
    """Bad arguments raise InvalidInput; every other failure a specific LabkitError."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = ast.unparse(node.exc.func).rsplit(".", 1)[-1]
            assert name not in FOREIGN, f"{path.name}:{node.lineno} raises {name}"
