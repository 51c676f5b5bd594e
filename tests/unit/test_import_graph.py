"""labkit's modules import one way: no cycles, and the client stack reads top to bottom.

The graph is read from the source with ``ast``, so it holds every import a module can make:
those at the top, those inside functions (made on first use) and those only for type hints
(under ``if TYPE_CHECKING:``). A cycle is a pair of modules that each need the other to be
read, whether or not Python happens to load them in an order that works today.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import labkit

PACKAGE = Path(labkit.__file__).parent

# The client stack in reading order: each module imports only modules above it.
LADDER = [
    # data: what a call gives back, and the rules it follows
    "labkit.errors",
    "labkit.structured",
    "labkit.reply",
    "labkit.tokens",
    "labkit.models",
    "labkit.calllog",
    "labkit.retry",
    # wire: HTTP, and the two dialects' request and answer shapes
    "labkit.transport",
    "labkit.dialects",
    # one address: what answers there, and is it healthy
    "labkit.probe",
    # which address: the runtime the notebooks use
    "labkit.discovery",
    # one runtime: session, limits, retries, each call's deadline, reply and log line
    "labkit.connection",
    "labkit.stream",
    # the verbs
    "labkit.client",
    # watching a runtime over time
    "labkit.health",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str) -> str:
    """The labkit module that importing ``name`` runs (a package's __init__ for its names)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set[str]:
    """Every labkit module that ``module`` imports, wherever in the file the import is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_known(a.name) for a in node.names if a.name.split(".")[0] == "labkit"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] != "labkit":
                continue
            for alias in node.names:  # a submodule by name, or a name from a module
                found.add(_known(f"{base}.{alias.name}"))
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("labkit")
        ):
            found.add(_known(str(node.args[0].value)))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _path(start: str, goal: str, within: set[str]) -> list[str] | None:
    """The shortest import chain from ``start`` to ``goal`` through ``within`` (None if none)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for there in sorted(GRAPH[here]):
            if there == goal:
                chain = [goal, here]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return chain[::-1]
            if there in within and there not in came_from and there != start:
                came_from[there] = here
                queue.append(there)
    return None


def _cycles() -> list[str]:
    """One cycle per tangle of modules that import each other, written a → b → a."""
    reach = {m: {m} for m in GRAPH}
    for module in GRAPH:  # everything each module leads to
        queue = deque([module])
        while queue:
            for there in GRAPH[queue.popleft()]:
                if there not in reach[module]:
                    reach[module].add(there)
                    queue.append(there)
    seen: set[str] = set()
    cycles = []
    for module in sorted(GRAPH):
        tangle = {m for m in reach[module] if module in reach[m]}
        if len(tangle) > 1 and module not in seen:
            seen |= tangle
            chain = _path(module, module, tangle)
            assert chain is not None
            cycles.append(" → ".join(chain))
    return cycles


def test_the_graph_sees_imports_in_functions_and_for_type_hints() -> None:
    """The reader finds the imports a top-level scan would miss (else every check here is hollow)."""
    assert "labkit.client" in GRAPH["labkit.conversation"]  # under TYPE_CHECKING
    assert "labkit.discovery" in GRAPH["labkit.rag.embeddings"]  # inside a function
    assert "labkit.grader.assign" in GRAPH["labkit.cli"]  # inside a function
    assert {"labkit.errors", "labkit.transport"} <= GRAPH["labkit.dialects"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    GRAPH["labkit.errors"].add("labkit.client")  # errors → client → ... → errors
    try:
        found = _cycles()
    finally:
        GRAPH["labkit.errors"].discard("labkit.client")
    assert any({"labkit.client", "labkit.errors"} <= set(c.split(" → ")) for c in found), found


def test_the_ladder_lists_real_modules() -> None:
    assert set(LADDER) <= set(MODULES), sorted(set(LADDER) - set(MODULES))
    assert len(LADDER) == len(set(LADDER))


@pytest.mark.parametrize("module", LADDER)
def test_the_client_stack_imports_only_what_is_above(module: str) -> None:
    """Reading order is import order: nothing a module leads to sits below it on the ladder."""
    below = set(LADDER[LADDER.index(module) :])
    for other in sorted(below - {module}):
        chain = _path(module, other, set(MODULES) - below)
        assert chain is None, f"{' → '.join(chain)}: {other} sits below {module} on the ladder"


def test_the_client_stack_has_no_cycles() -> None:
    stack = set(LADDER)
    tangled = [c for c in _cycles() if set(c.split(" → ")) & stack]
    assert tangled == [], f"import cycles through the client stack: {tangled}"


def test_labkit_has_no_import_cycles_outside_the_grader() -> None:
    found = [c for c in _cycles() if not c.startswith("labkit.grader.")]
    assert found == [], f"import cycles: {found}"


def test_the_grader_has_no_import_cycles() -> None:
    found = [c for c in _cycles() if c.startswith("labkit.grader.")]
    assert found == [], f"import cycles: {found}"
