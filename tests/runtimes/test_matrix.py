"""Every lesson, exercise and solution on three kinds of runtime, as a learner would run them.

* ``kit`` — the kit's runtime (``labkit up``: Ollama's dialect and ``/v1``, both models);
* ``llamacpp`` — two plain llama.cpp servers, chat on one address and embeddings on a second
  (``LABKIT_EMBED_URL``); no ``/api/*``, and each model is named by its file;
* ``openai-only`` — one address that speaks only ``/v1/*`` and names the models as LM Studio
  does (``smollm2-135m-instruct``, ``text-embedding-all-minilm-l6-v2``), in front of the same
  two llama.cpp servers.

Lessons and exercises must run without an error (exercises are expected to lose points: they
are the learner's starting point). Solutions are graded with the grader, hidden tests included,
and must get full marks. The kit's runtime runs lessons and exercises in the main nbval run
already, so here it only grades the solutions (nbval does not run them again).

Each kind of runtime is started once for the whole run and shared by every xdist worker, so
each notebook here is a test of its own that either worker can take.

On the other kinds, a lesson's repeated measurements run a few times instead of many (see
``LIGHTER``): nothing compares their figures there (nbval does, on the kit's runtime), and every
kind of request a lesson makes still reaches the runtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from processes import processes

from labkit import runtime
from labkit.grader import assign

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).with_name("launch.py")
LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
EXERCISES = sorted(p.name for p in (ROOT / "exercises").glob("[0-9]*.ipynb"))
CELL_TIMEOUT = 600
START_TIMEOUT = 180  # s for the llama.cpp pair to answer on a busy machine
OTHERS = [pytest.param(kind, marks=pytest.mark.matrix) for kind in ("llamacpp", "openai-only")]

# (what a lesson's cell says, what it says on the other kinds): the same requests, fewer times.
LIGHTER = {
    "02-prompting.ipynb": [
        (
            "for seed, (note, expected) in enumerate(NOTES):",
            "for seed, (note, expected) in enumerate(NOTES[:2]):",
        ),
        ("TRIES = 10 ", "TRIES = 2 "),
    ],
    "03-rag.ipynb": [
        ('split(every_question, "holdout")[::6]', 'split(every_question, "holdout")[::40]'),
        ("SIZES, OVERLAPS, KS = (50, 100, 250),", "SIZES, OVERLAPS, KS = (100, 250),"),
    ],
    "04b-production-operations.ipynb": [("BURSTS = 4 ", "BURSTS = 2 ")],
}


@dataclass(frozen=True)
class Served:
    """One kind of runtime: the environment a learner's kernel gets for it."""

    kind: str
    env: dict[str, str]
    shared: Path  # seen by every worker

    @contextlib.contextmanager
    def turn(self, what: str) -> Iterator[None]:
        """Run ``what`` on the llama.cpp pair's two kinds one after the other, never at once.

        The second then finds the first one's embeddings in the launcher's cache (lesson 3 takes
        a fifth of the time); at once, both would compute them.
        """
        if self.kind == "kit":
            yield
            return
        with (self.shared / "matrix" / f"{what}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _env(base_url: str, embed_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABKIT_", "OLLAMA_"))}
    # A private temporary folder too: the same notebook may run on another kind at once.
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env |= {"LABKIT_HOME": str(home), "PYTHONPATH": str(ROOT), "TMPDIR": str(home / "tmp")}
    env["LABKIT_BASE_URL"] = base_url
    if embed_url:
        env["LABKIT_EMBED_URL"] = embed_url
    return env


def _launch(folder: Path) -> dict[str, str]:
    """Start launch.py in a session of its own; the pytest controller stops it at the end."""
    record, log_path = folder / "runtime.json", folder / "launch.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(LAUNCH), str(record)],
            stdout=log,
            stderr=log,
            env=_env("", "", folder / "launcher-home"),
            start_new_session=True,  # its own process group: stopped as one, by conftest
        )
    (folder.parent / "matrix.pid").write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT
    while not record.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            why = f"the llama.cpp pair did not start; log: {log_path}"
            (folder / "failed").write_text(why)
            pytest.fail(why)
        # The launcher writes the record only once every server answers: nothing to wait on
        # but the file itself.
        time.sleep(0.2)
    return dict(json.loads(record.read_text()))


@pytest.fixture(scope="session")
def pair(shared_dir: Path) -> dict[str, str]:
    """The llama.cpp pair and its OpenAI-only router: started by the first worker to ask."""
    folder = shared_dir / "matrix"
    folder.mkdir(exist_ok=True)
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait here while it starts
        if (folder / "failed").exists():
            pytest.fail((folder / "failed").read_text())
        if (folder / "runtime.json").exists():
            return dict(json.loads((folder / "runtime.json").read_text()))
        return _launch(folder)


def served(kind: str, request: pytest.FixtureRequest) -> Served:
    """The environment for one kind of runtime (its LABKIT_HOME is shared across workers)."""
    shared: Path = request.getfixturevalue("shared_dir")
    # Exercise 1 starts the kit's runtime under this LABKIT_HOME when no Ollama-dialect
    # runtime answers on a known port; conftest stops it with the rest.
    home = shared / f"matrix-{kind}" / "labkit-home"
    if kind == "kit":
        record = runtime.read_record()
        assert record is not None, "the kit's runtime should have been started by conftest"
        return Served(kind, _env(record.url, "", home), shared)
    urls = request.getfixturevalue("pair")
    if kind == "llamacpp":
        return Served(kind, _env(urls["chat_url"], urls["embed_url"], home), shared)
    return Served(kind, _env(urls["openai_url"], "", home), shared)


def lighter(nb: nbformat.NotebookNode, name: str) -> None:
    """Apply ``LIGHTER[name]`` to ``nb``; each change must match exactly one cell, or the test fails."""
    for old, new in LIGHTER.get(name, []):
        cells = [cell for cell in nb.cells if cell.cell_type == "code" and old in cell.source]
        assert len(cells) == 1, (
            f"{name}: {old!r} is in {len(cells)} code cells, not one: update LIGHTER in "
            f"{Path(__file__).name} to what the lesson says now"
        )
        cells[0].source = cells[0].source.replace(old, new)


def run_notebook(path: Path, env: dict[str, str], *, light: bool = False) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel with ``env``; an error fails the test."""
    nb = nbformat.read(str(path), as_version=4)
    if light:
        lighter(nb, path.name)
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
    # Exercise 1 starts the kit's runtime when none answers in Ollama's dialect: the grader
    # must stop it with the notebook's box, even without the sandbox.
    commands = [command for _, command in processes().values()]
    left = [c for c in commands if "labkit.runtime.server" in c and "labkit-grading" in c]
    assert not left, f"grading left a runtime running: {left}"
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


@pytest.mark.parametrize("kind", OTHERS)
@pytest.mark.parametrize("name", LESSONS)
def test_lesson_runs(name: str, kind: str, request: pytest.FixtureRequest) -> None:
    rt = served(kind, request)
    with rt.turn(f"lesson-{name}"):
        run_notebook(ROOT / "notebooks" / name, rt.env, light=True)


@pytest.mark.parametrize("kind", OTHERS)
@pytest.mark.parametrize("name", EXERCISES)
def test_exercise_runs(name: str, kind: str, request: pytest.FixtureRequest) -> None:
    rt = served(kind, request)
    with rt.turn(f"exercise-{name}"):
        run_notebook(ROOT / "exercises" / name, rt.env)


@pytest.mark.parametrize("kind", [pytest.param("kit", marks=pytest.mark.slow), *OTHERS])
@pytest.mark.parametrize("name", EXERCISES)
def test_solution_gets_full_marks(
    name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    rt = served(kind, request)
    with rt.turn(f"solution-{name}"):
        result = grade_solution(name, rt, tmp_path)
    assert_full_marks(result, f"the {kind} runtime")


@pytest.mark.matrix
def test_setup_notebook_explains_a_missing_embedding_model(
    pair: dict[str, str], shared_dir: Path
) -> None:
    """A llama.cpp chat server alone: the setup notebook says what to start, and passes."""
    env = _env(pair["chat_url"], "", shared_dir / "matrix-chat-only" / "labkit-home")
    nb = run_notebook(ROOT / "notebooks/00-check-your-setup.ipynb", env)
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "--embeddings --pooling mean" in printed and "LABKIT_EMBED_URL" in printed, printed
    assert "embeddings skipped" in printed and "✅ streaming works" in printed, printed
