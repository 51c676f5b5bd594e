"""Shared by tests/ and the notebooks: every live test runs against a real runtime, started once.

The pytest controller process (not the xdist workers) makes sure the kit's embedded runtime
is up before any live test starts, and stops it afterwards only if it started it. A run of
``tests/unit/`` alone needs no runtime and starts none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import discovery, runtime

ROOT = Path(__file__).resolve().parent
UNIT = ROOT / "tests" / "unit"

_started_here = False

# Notebooks under tests/data are inputs of the grading tests (some loop forever or kill their
# kernel on purpose), not lessons for nbval to run.
collect_ignore_glob = ["tests/data/*", "*/.ipynb_checkpoints/*"]


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _unit_only(config: pytest.Config) -> bool:
    """True when every path asked for lies under tests/unit/ (which needs no runtime)."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(p == UNIT or UNIT in p.parents for p in paths)


def pytest_configure(config: pytest.Config) -> None:
    global _started_here
    if _is_controller(config) and not _unit_only(config) and runtime.read_record() is None:
        runtime.up(say=False)
        _started_here = True


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_controller(config) and _started_here:
        runtime.down(say=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Generated notebooks (exercises/, solutions/) store no outputs: nbval runs their cells
    # and fails on any error, but has nothing to compare.
    for item in items:
        options = getattr(item, "options", None)
        if isinstance(options, dict) and item.path.parent.name in ("exercises", "solutions"):
            options["check"] = False


@pytest.fixture(scope="session")
def embedded() -> runtime.RuntimeRecord:
    """The kit's embedded runtime (llama.cpp behind the Ollama dialect)."""
    record = runtime.read_record()
    assert record is not None, "the embedded runtime should have been started by conftest"
    return record


@pytest.fixture(scope="session")
def rt() -> discovery.Runtime:
    """The runtime a notebook would use here (the one labkit finds)."""
    return discovery.find_runtime(start=False)


@pytest.fixture
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """A private LABKIT_HOME, so a test's own runtime never touches the shared one."""
    home = tmp_path_factory.mktemp("labkit-home")
    monkeypatch.setenv("LABKIT_HOME", str(home))
    yield home
    runtime.down(state_dir=home, say=False)
