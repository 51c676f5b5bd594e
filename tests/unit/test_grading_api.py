"""The grader's modules lean on each other's public names only, each listed in its ``__all__``.

A name with a leading underscore belongs to its module: it can be renamed or changed there
without reading the rest of the grader. What another module needs is public and declared.
"""

from __future__ import annotations

import ast
from pathlib import Path

import labkit.grader

GRADER = Path(labkit.grader.__file__).parent
MODULES = {path.stem: path for path in sorted(GRADER.glob("*.py")) if path.stem != "__init__"}


def _declared(path: Path) -> list[str]:
    """The names ``path`` lists in its ``__all__``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__":
            assert isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} has no __all__")


def _crossings() -> list[tuple[str, str, str]]:
    """Every (importer, grader module, name) where one grader module takes a name from another.

    ``from labkit.grader.X import y`` and ``X.y`` after ``from labkit.grader import X`` both
    count, wherever in the file they are (in-function imports too).
    """
    found = []
    for importer, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}  # local name -> grader module it stands for
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            for alias in node.names:
                if node.module == "labkit.grader" and alias.name in MODULES:
                    aliases[alias.asname or alias.name] = alias.name
                elif node.module.startswith("labkit.grader."):
                    found.append((importer, node.module.rsplit(".", 1)[1], alias.name))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                found.append((importer, aliases[node.value.id], node.attr))
    return [(a, b, name) for a, b, name in found if a != b]


def test_the_scan_sees_the_grader_importing_itself() -> None:
    """The scan below finds the imports it checks (run takes grade's pieces from many modules)."""
    from_run = {(module, name) for importer, module, name in _crossings() if importer == "run"}
    assert ("notebook", "grade_in_worker") in from_run
    assert ("exercise", "LEARNER_DIR") in from_run or ("assign", "LEARNER_DIR") in from_run


def test_no_grader_module_imports_another_ones_private_names() -> None:
    private = [
        f"{importer}.py uses {module}.{name}"
        for importer, module, name in _crossings()
        if name.startswith("_")
    ]
    assert private == [], "make these public (and list them in __all__), or keep them in one module"


def test_every_name_used_across_grader_modules_is_in_its_all() -> None:
    undeclared = sorted(
        {
            f"{module}.{name} (used by {importer}.py)"
            for importer, module, name in _crossings()
            if name not in _declared(MODULES[module])
        }
    )
    assert undeclared == []
