"""The grader's shape: modules that use each other's public names only, and one options object.

A name with a leading underscore belongs to its module: it can be renamed or changed there
without reading the rest of the grader. What another module needs is public and declared.
How a class is graded is one ``GradeOptions``, made and checked once (by ``labkit grade``
from its flags, or by a script) and handed down.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import labkit.grader
from labkit.cli import build_parser, main
from labkit.errors import GradingError
from labkit.grader.cli import grade_options
from labkit.grader.options import GradeOptions

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


# ------------------------------------------------------------------ one options object


def _parsed(*flags: str) -> Any:
    return build_parser("grade").parse_args(["grade", "class/", "--exercise", "01", *flags])


def test_the_command_and_scripts_share_one_set_of_defaults() -> None:
    assert grade_options(_parsed()) == GradeOptions()


def test_each_flag_of_labkit_grade_reaches_its_option() -> None:
    options = grade_options(
        _parsed(
            *("--workers", "3", "--timeout", "7.5", "--regrade", "--no-sandbox"),
            *("--memory-mb", "1024", "--disk-mb", "64", "--notebook-timeout", "90"),
            *("--max-notebook-mb", "2.5", "--network", "host", "--no-cache", "--quiet"),
        )
    )
    assert options == GradeOptions(
        workers=3,
        timeout=7.5,
        regrade=True,
        sandbox=False,
        memory_mb=1024,
        disk_mb=64,
        notebook_timeout=90.0,
        max_notebook_mb=2.5,
        network="host",
        cache=False,
        progress=False,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "--workers must be at least 1."),
        ("memory_mb", 100, "--memory-mb 100 is too small to grade anything; use 256 or more."),
        ("disk_mb", 8, "--disk-mb 8 is too small to grade anything; use 16 or more."),
        ("timeout", 0.5, "--timeout 0.5 is too small to grade anything; use 1 or more."),
        ("notebook_timeout", 5, "--notebook-timeout 5 is too small"),
        ("max_notebook_mb", 0.001, "--max-notebook-mb 0.001 is too small"),
        ("network", "everywhere", "--network 'everywhere' is not one the grader knows"),
    ],
)
def test_options_no_notebook_could_be_graded_under_are_refused(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(GradingError, match=re.escape(message)):
        GradeOptions(**{field: value})


def test_the_command_refuses_a_too_small_limit_before_it_looks_for_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No runtime, key or submissions are looked for: the flag to fix comes first."""
    nowhere = str(tmp_path / "no-class")
    assert main(["grade", nowhere, "--exercise", "99", "--disk-mb", "1"]) == 1
    assert "--disk-mb 1 is too small" in capsys.readouterr().err


def test_options_cannot_change_once_made() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GradeOptions().workers = 4  # type: ignore[misc]


def test_kernels_without_a_sandbox_share_the_host_network() -> None:
    assert GradeOptions().kernel_network == "runtime"
    assert GradeOptions(network="host").kernel_network == "host"
    assert GradeOptions(sandbox=False).kernel_network == "host"


# ------------------------------------------------------------------ what scripts import

SCRIPT_NAMES = [
    "ISOLATION",
    "Exercise",
    "GradeOptions",
    "GradeReport",
    "GradingError",
    "MasterFormatError",
    "OverwriteRefused",
    "ValidationFailed",
    "assign",
    "feedback",
    "find_key",
    "find_submissions",
    "grade",
    "load_key",
    "parse_master",
    "pass_rates",
]


def test_the_grader_package_exports_what_scripts_use() -> None:
    """Pinned like labkit's own exports: adding or removing a name is a decision."""
    assert labkit.grader.__all__ == SCRIPT_NAMES
    from labkit.grader import assign, options, run

    assert labkit.grader.grade is run.grade
    assert labkit.grader.GradeOptions is options.GradeOptions
    assert labkit.grader.assign is assign  # the module: assign.assign, assign.drift…
    missing = [name for name in SCRIPT_NAMES if not hasattr(labkit.grader, name)]
    assert missing == []
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = labkit.grader.nothing


def test_importing_the_grader_package_loads_no_part_of_the_grader() -> None:
    """Learners' kernels import labkit.grader.bridge: the package itself must stay light."""
    code = (
        "import sys, labkit.grader\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('labkit.grader.', 'nbformat', "
        "'jupyter_client', 'nbclient'))))\n"
        "labkit.grader.grade\n"
        "print('labkit.grader.run' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, graded = done.stdout.splitlines()
    assert loaded == ""
    assert graded == "True"  # the first use loads it
