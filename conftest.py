"""Shared by tests/ and the notebooks: every live test runs against a real runtime, started once.

The pytest controller process (not the xdist workers) makes sure the kit's embedded runtime
is up before any live test starts, and stops it afterwards only if it started it. A run of
``tests/unit/`` alone needs no runtime and starts none.

It also sorts the tests by what they need (markers, registered in pyproject.toml):

* ``live`` — a real runtime (everything outside tests/unit/, the notebooks included);
* ``slow`` — left out by ``./lab test --fast``: the lessons (minutes each), the runtime matrix
  and the solutions' grading, the browser, class-scale grading in the sandbox, the RAG evaluation;
* ``matrix`` — the other kinds of runtime (marked in tests/runtimes/ itself);
* ``sandbox``, ``browser``, ``nginx``, ``jupyterhub`` — root, Chromium, nginx, JupyterHub's
  proxy (configurable-http-proxy, from npm). A test that needs one this
  machine lacks is skipped, and one line at the end of the run says what is missing and the
  command that adds it. With ``CI=true`` or ``LABKIT_REQUIRE_ALL=1`` such a skip is a failure:
  CI has them all, so none of these tests may pass there without running.

At the end of a run it prints the wall time of each group of tests (unit, live, notebooks,
matrix, grading, browser), and schedules xdist work so the longest groups start first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labkit import discovery, runtime

ROOT = Path(__file__).resolve().parent
UNIT = ROOT / "tests" / "unit"

_started_here = False

# Notebooks under tests/data are inputs of the grading tests (some loop forever or kill their
# kernel on purpose), not lessons for nbval to run.
collect_ignore_glob = ["tests/data/*", "*/.ipynb_checkpoints/*"]

# Processes that one xdist worker starts for the whole session (the runtime matrix's servers)
# put their pid files here; the controller stops them when every worker is done.
SHARED_ENV = "LABKIT_TEST_SHARED"
# `./lab test` runs pytest twice (unit tests first); each run adds its group times to this file
# and the last prints them all.
TIMES_ENV = "LABKIT_TEST_TIMES"


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _unit_only(config: pytest.Config) -> bool:
    """True when every path asked for lies under tests/unit/ (which needs no runtime)."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(p == UNIT or UNIT in p.parents for p in paths)


def pytest_configure(config: pytest.Config) -> None:
    global _started_here
    config.pluginmanager.register(_Times(), "labkit-times")
    if not _is_controller(config):
        return
    if SHARED_ENV not in os.environ:
        # Set before the workers start, so they inherit it.
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="labkit-tests-")
        config.add_cleanup(_stop_shared)
    if not _unit_only(config) and runtime.read_record() is None:
        runtime.up(say=False)
        _started_here = True


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_controller(config) and _started_here:
        runtime.down(say=False)


def _stop_shared() -> None:
    """Stop what workers started for the whole session, then remove the shared folder."""
    shared = Path(os.environ.pop(SHARED_ENV))
    for home in shared.glob("*/labkit-home"):
        # A notebook may have started the kit's runtime under a private LABKIT_HOME.
        runtime.down(state_dir=home, say=False)
    for pid_file in shared.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    shutil.rmtree(shared, ignore_errors=True)


# --- groups and markers ---------------------------------------------------------------------

GROUPS = ("unit", "live", "notebooks", "matrix", "grading", "browser")


def group_of(nodeid: str) -> str:
    """The group a test belongs to, from its node id (also known to the xdist controller)."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if path.endswith(".ipynb"):
        return "notebooks"
    if path.startswith("tests/unit/"):
        return "unit"
    if path.startswith("tests/runtimes/"):
        return "matrix"
    if path.startswith("tests/browser/"):
        return "browser"
    if name.startswith("test_grading") or name == "test_authoring.py":
        return "grading"
    return "live"


@dataclass(frozen=True)
class Need:
    """Something beyond Python that some tests need, and how to get it."""

    marker: str
    what: str
    present: Callable[[], bool]
    how: str


def _chromium() -> str:
    return os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium")


def _nginx() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def _jupyterhub() -> bool:
    import importlib.util

    proxy = Path(sys.prefix) / "node/node_modules/.bin/configurable-http-proxy"
    found = shutil.which("configurable-http-proxy") or proxy.exists()
    return importlib.util.find_spec("jupyterhub") is not None and bool(found)


NEEDS = {
    need.marker: need
    for need in (
        Need(
            "sandbox",
            "root (the grading sandbox)",
            lambda: sys.platform == "linux" and os.geteuid() == 0,
            "run the tests as root: sudo ./lab test",
        ),
        Need(
            "browser",
            f"Chromium at {_chromium()}",
            lambda: Path(_chromium()).exists(),
            "sudo bash .ci/browser-deps.sh, or set LABKIT_CHROMIUM",
        ),
        Need("nginx", "nginx", lambda: _nginx() is not None, "sudo apt-get install nginx"),
        Need(
            "jupyterhub",
            "JupyterHub and configurable-http-proxy",
            _jupyterhub,
            "sudo bash .ci/hub-deps.sh",
        ),
    )
}


def required() -> bool:
    """True when a skip for a missing need must fail the run (CI, or LABKIT_REQUIRE_ALL=1)."""
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return ci or os.environ.get("LABKIT_REQUIRE_ALL", "") == "1"


def _marks(item: pytest.Item) -> list[str]:
    group = group_of(item.nodeid)
    marks = [] if group == "unit" else ["live"]
    if group == "browser":
        marks += ["browser", "slow"]
    elif group == "notebooks" and item.path.parent.name == "notebooks":
        marks.append("slow")  # a lesson takes minutes; an exercise seconds
    elif item.path.name.startswith("test_grading"):
        # The grading files skip by themselves when not root (some of their tests need none).
        marks += ["sandbox", "slow"]
    if "gateway" in getattr(item, "fixturenames", ()):
        marks.append("nginx")
    return marks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # Generated notebooks (exercises/, solutions/) store no outputs: nbval runs their
        # cells and fails on any error, but has nothing to compare.
        options = getattr(item, "options", None)
        if isinstance(options, dict) and item.path.parent.name in ("exercises", "solutions"):
            options["check"] = False
        for mark in _marks(item):
            item.add_marker(mark)
        # tests/runtimes/ marks the other kinds of runtime itself (the kit's is one runtime).
        if item.get_closest_marker("matrix"):
            item.add_marker("slow")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # The sandbox's tests say for themselves what they cannot do without root; Chromium and
    # nginx are checked here, before a fixture starts JupyterLab or a proxy for nothing.
    for name in ("browser", "nginx", "jupyterhub"):
        need = NEEDS[name]
        if item.get_closest_marker(name) and not need.present():
            pytest.skip(f"needs {need.what}: {need.how}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI (or LABKIT_REQUIRE_ALL=1), a test that needs root, Chromium or nginx and
    skipped fails instead: there, everything it needs is installed."""
    report = yield
    needs = [name for name in NEEDS if item.get_closest_marker(name)]
    if report.skipped and needs and not hasattr(report, "wasxfail") and required():
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs {', '.join(needs)} and skipped ({reason}); CI=true or "
            "LABKIT_REQUIRE_ALL=1 requires every such test to run"
        )
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line naming what this machine lacks for the tests it skipped, and how to add it."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        for name in NEEDS:
            # A test with several needs was skipped for the ones this machine lacks.
            missing = name in getattr(report, "keywords", {}) and not NEEDS[name].present()
            if missing and not hasattr(report, "wasxfail"):
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        return
    parts = [
        f"{NEEDS[name].what} ({count} {'test' if count == 1 else 'tests'}; add it: "
        f"{NEEDS[name].how})"
        for name, count in counts.items()
    ]
    terminalreporter.write_line(
        "Skipped for want of " + "; ".join(parts) + ". Under CI=true or LABKIT_REQUIRE_ALL=1 "
        "these skips are failures.",
        yellow=True,
        bold=True,
    )


# --- time per group -------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float | None:
    """CPU seconds every core of the machine has spent busy since boot (None off Linux)."""
    try:
        ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle and waiting for I/O
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _Times:
    """Wall time per group: from its first test's start to its last test's end."""

    def __init__(self) -> None:
        self.start = time.time()
        self.spans: dict[str, list[float]] = {}  # group -> [first start, last stop, work, count]
        # Where the cores went: the local runtimes' inference is most of a run's work.
        self.machine_start = _machine_cpu()
        self.runtime_start: tuple[int, float | None] | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        record = runtime.read_record()
        if record is not None:
            self.runtime_start = (record.pid, _cpu_seconds(record.pid))

    def cpu_line(self) -> str | None:
        """One line: how busy the cores were, and how much of it the local runtimes took."""
        machine, wall = _machine_cpu(), time.time() - self.start
        if machine is None or self.machine_start is None:
            return None
        used = machine - self.machine_start
        cores = os.cpu_count() or 1
        parts = [f"cores busy {used / (cores * wall):.0%} ({used:.0f} CPU-s on {cores} cores)"]
        if self.runtime_start is not None:
            pid, before = self.runtime_start
            now = _cpu_seconds(pid)
            if now is not None and before is not None:
                parts.append(f"the kit's runtime {now - before:.0f} CPU-s")
        shared = os.environ.get(SHARED_ENV)
        pid_file = Path(shared) / "matrix.pid" if shared else None
        if pid_file is not None and pid_file.exists():
            pair = _cpu_seconds(int(pid_file.read_text()))
            if pair is not None:
                parts.append(f"the runtime matrix's llama.cpp servers {pair:.0f} CPU-s")
        return "  cpu        " + ", ".join(parts)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        start, stop = getattr(report, "start", None), getattr(report, "stop", None)
        if start is None or stop is None:
            return
        span = self.spans.setdefault(group_of(report.nodeid), [start, stop, 0.0, 0])
        span[0], span[1] = min(span[0], start), max(span[1], stop)
        span[2] += report.duration
        span[3] += report.when == "call" or (report.when == "setup" and not report.passed)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if not _is_controller(config) or not self.spans:
            return
        # A short run of a file or two (the edit loop) needs no table; `./lab test` always does.
        if TIMES_ENV not in os.environ and time.time() - self.start < 60:
            return
        rows = [
            {"group": g, "wall": s[1] - s[0], "work": s[2], "tests": s[3]}
            for g, s in self.spans.items()
        ]
        rows.append({"group": "total", "wall": time.time() - self.start, "work": 0, "tests": 0})
        earlier: list[dict[str, Any]] = []
        if file := os.environ.get(TIMES_ENV):
            path = Path(file)
            if path.exists():
                earlier = [json.loads(line) for line in path.read_text().splitlines() if line]
            with path.open("a") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
        write = terminalreporter.write_line
        write("")
        write("time per group (wall: first start to last end, groups overlap; work: summed")
        write("test time over the workers):")
        order = {g: i for i, g in enumerate(GROUPS)}
        every = earlier + rows
        for row in sorted(every, key=lambda r: order.get(r["group"], len(order))):
            if row["group"] != "total":
                wall, work = _minutes(row["wall"]), _minutes(row["work"])
                write(
                    f"  {row['group']:<10} {wall:>9} wall {work:>9} work  {row['tests']:>4} tests"
                )
        total = sum(r["wall"] for r in every if r["group"] == "total")
        write(f"  {'total':<10} {_minutes(total):>9} wall")
        if line := self.cpu_line():
            write(line)


def _minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


# --- scheduling -----------------------------------------------------------------------------

# Rough seconds per test, per group, and for the few long pieces by name (from a measured run):
# xdist starts the costliest work first, so the run does not end with one worker alone on a
# long notebook. Only the order depends on these numbers.
COST = {"matrix": 40.0, "browser": 30.0, "grading": 15.0, "notebooks": 2.0, "live": 1.0}
LONG = {
    "03-rag": 300.0,
    "02-prompting": 150.0,
    "03-hr-rag": 120.0,
    "test_rag_eval.py": 120.0,
    "test_hardening.py": 60.0,
    "test_jupyterhub.py": 60.0,
}


def expected_seconds(scope: str, tests: int) -> float:
    """A guess at how long a scope (a notebook, a module, a class, one matrix test) takes."""
    named = [seconds for name, seconds in LONG.items() if name in scope]
    seconds = named[0] if named else COST.get(group_of(scope), 1.0) * tests
    # The matrix's OpenAI-only runs come second: they reuse the plain llama.cpp runs' vectors.
    return seconds / 4 if "openai-only" in scope else seconds


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):  # type: ignore[misc]
        """Loadscope, but each matrix test on its own and the costliest scopes first."""

        def _split_scope(self, nodeid: str) -> str:
            # The matrix's runtimes are shared by every worker: its tests need no grouping.
            if group_of(nodeid) == "matrix":
                return nodeid
            return str(super()._split_scope(nodeid))

        def _assign_work_unit(self, node: Any) -> None:
            def cost(scope: str) -> float:
                return expected_seconds(scope, len(self.workqueue[scope]))

            self.workqueue.move_to_end(max(self.workqueue, key=cost), last=False)
            super()._assign_work_unit(node)

    return Scheduler(config, log)


# --- fixtures -------------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """A folder every xdist worker sees; pid files put here are stopped after the session."""
    return Path(os.environ[SHARED_ENV])


@pytest.fixture
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """A private LABKIT_HOME, so a test's own runtime never touches the shared one."""
    home = tmp_path_factory.mktemp("labkit-home")
    monkeypatch.setenv("LABKIT_HOME", str(home))
    yield home
    runtime.down(state_dir=home, say=False)
