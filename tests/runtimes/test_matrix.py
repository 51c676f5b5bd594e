"""Every lesson, exercise and solution on three kinds of runtime, as a learner would run them.

* ``kit`` — the kit's runtime (``labkit up``: Ollama's dialect and ``/v1``, both models);
* ``llamacpp`` — two plain llama.cpp servers, chat on one address and embeddings on a second
  (``LABKIT_EMBED_URL``); no ``/api/*``, and each model is named by its file;
* ``openai-only`` — one address that speaks only ``/v1/*`` and names the models as LM Studio
  does (``smollm2-135m-instruct``, ``text-embedding-all-minilm-l6-v2``).

Lessons and exercises must run without an error (exercises are expected to lose points: they
are the learner's starting point). Solutions are graded with the grader, hidden tests included,
and must get full marks. The kit's runtime runs lessons and exercises in the main nbval run
already, so here it only grades the solutions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from labkit import runtime
from labkit.grader import assign

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).with_name("launch.py")
LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
EXERCISES = sorted(p.name for p in (ROOT / "exercises").glob("[0-9]*.ipynb"))
CELL_TIMEOUT = 600


class Served:
    """A runtime started for the matrix: its environment for kernels, and how to stop it."""

    def __init__(self, kind: str, env: dict[str, str], process: subprocess.Popen[bytes] | None):
        self.kind, self.env, self.process = kind, env, process

    def stop(self) -> None:
        # Exercise 1 starts the kit's runtime under this LABKIT_HOME when no Ollama-dialect
        # runtime answers on a known port: stop it with the rest.
        runtime.down(state_dir=Path(self.env["LABKIT_HOME"]), say=False)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _env(base_url: str, embed_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABKIT_", "OLLAMA_"))}
    env |= {"LABKIT_BASE_URL": base_url, "LABKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    if embed_url:
        env["LABKIT_EMBED_URL"] = embed_url
    return env


def start(kind: str, home: Path) -> Served:
    """Start one kind of runtime (the kit's is already running) and wait until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    if kind == "kit":
        record = runtime.read_record()
        assert record is not None, "the kit's runtime should have been started by conftest"
        return Served(kind, _env(record.url, "", home), None)
    info = home / "runtime.json"
    log = (home / "launch.log").open("wb")
    env = _env("", "", home)
    process = subprocess.Popen(
        [sys.executable, str(LAUNCH), kind, str(info)], stdout=log, stderr=log, env=env
    )
    deadline = time.monotonic() + 120
    while not info.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{kind} runtime did not start; log: {home / 'launch.log'}")
        time.sleep(0.2)
    data = json.loads(info.read_text())
    return Served(kind, _env(data["base_url"], data["labkit_embed_url"], home), process)


@pytest.fixture(scope="class")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The runtime named by the test class, for the whole class."""
    kind: str = request.cls.kind
    home = tmp_path_factory.mktemp(f"runtime-{kind}")
    rt = start(kind, home)
    yield rt
    rt.stop()


def run_notebook(path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel with ``env``; an error fails the test."""
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} failed on {env['LABKIT_BASE_URL']}:\n{exc}")
    return nb


def grade_solution(name: str, rt: Served, tmp: Path) -> dict[str, Any]:
    """Grade ``solutions/name`` with ``labkit grade`` (hidden tests included) against ``rt``."""
    subs = tmp / "subs"
    subs.mkdir()
    shutil.copy(ROOT / "solutions" / name, subs / "solution.ipynb")
    exercise = name.removesuffix(".ipynb")
    # A process of its own: the grader hands its own environment ($LABKIT_EMBED_URL & co.)
    # on to the kernels, as it does for an instructor who grades against this runtime.
    args = ["grade", str(subs), "--exercise", exercise, "--root", str(ROOT), "--quiet"]
    args += ["--out", str(tmp / "out"), "--workers", "1", "--timeout", "300", "--no-sandbox"]
    args += ["--runtime", rt.env["LABKIT_BASE_URL"]]
    done = subprocess.run(
        [sys.executable, "-m", "labkit", *args],
        env=rt.env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f"labkit grade failed:\n{done.stdout}\n{done.stderr}"
    state = json.loads((tmp / "out/state.json").read_text())
    result: dict[str, Any] = state["results"]["solution"]
    key = assign.load_key(ROOT / "grading/hidden" / f"{exercise}.json")
    result["possible"] = key.possible
    result["total"] = sum(float(t.get("earned", 0)) for t in result["tests"])
    return result


def assert_full_marks(result: dict[str, Any], where: str) -> None:
    lost = [
        f"  {t['question']}/{t['name']}: {t['earned']:g} of {t['points']:g} — {t['message']}"
        for t in result["tests"]
        if t["earned"] < t["points"]
    ]
    assert not lost and result["total"] == result["possible"], (
        f"the solution got {result['total']:g}/{result['possible']:g} on {where} "
        f"(status: {result['status']}; notes: {result['notes']}):\n" + "\n".join(lost)
    )


class Matrix:
    """One runtime: every lesson and exercise runs, every solution gets full marks."""

    kind = ""
    lessons = True

    @pytest.mark.parametrize("name", LESSONS)
    def test_lesson_runs(self, served: Served, name: str) -> None:
        if not self.lessons:
            pytest.skip("the main nbval run covers the lessons on the kit's runtime")
        run_notebook(ROOT / "notebooks" / name, served.env)

    @pytest.mark.parametrize("name", EXERCISES)
    def test_exercise_runs(self, served: Served, name: str) -> None:
        if not self.lessons:
            pytest.skip("the main nbval run covers the exercises on the kit's runtime")
        run_notebook(ROOT / "exercises" / name, served.env)

    @pytest.mark.parametrize("name", EXERCISES)
    def test_solution_gets_full_marks(self, served: Served, name: str, tmp_path: Path) -> None:
        assert_full_marks(grade_solution(name, served, tmp_path), f"the {self.kind} runtime")


class TestKitRuntime(Matrix):
    kind = "kit"
    lessons = False


class TestPlainLlamaCpp(Matrix):
    kind = "llamacpp"


class TestOpenAIOnly(Matrix):
    kind = "openai-only"


def test_setup_notebook_explains_a_missing_embedding_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A llama.cpp chat server alone: the setup notebook says what to start, and passes."""
    rt = start("llamacpp", tmp_path_factory.mktemp("runtime-chat-only"))
    try:
        env = {k: v for k, v in rt.env.items() if k != "LABKIT_EMBED_URL"}
        nb = run_notebook(ROOT / "notebooks/00-check-your-setup.ipynb", env)
    finally:
        rt.stop()
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "--embeddings --pooling mean" in printed and "LABKIT_EMBED_URL" in printed, printed
    assert "embeddings skipped" in printed and "✅ streaming works" in printed, printed
