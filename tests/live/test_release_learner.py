"""A learner handed the release follows its README: both commands do what it says.

A fresh release is made from this course; the learner answers one question of exercise 1
(the solution's code for q1, pasted into their notebook), then runs the two commands in the
README's first block, as written. To stay cheap it reuses this checkout's environment through
``LABKIT_VENV`` (which the release's ``./lab`` documents) and the live runtime through
``LABKIT_BASE_URL``, instead of installing packages and starting a model of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import pytest
import requests

from labkit import discovery
from labkit.grader import assign
from labkit.grader.release import release

# Four notebooks in fresh kernels and one JupyterLab start: seconds each, not a unit test's.
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
INSTRUCTOR_ONLY = ("sudo", "labkit grade", "labkit assign", "masters/", "grading/", "SUBMISSIONS")


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh release, in which the learner has answered q1 of exercise 1."""
    target = tmp_path_factory.mktemp("learner") / "course"
    generated = [assign.parse_master(m) for m in assign.masters_in(PROJECT / "masters")]
    release(PROJECT, target, generated)
    solution = nbformat.read(PROJECT / "solutions/01-api-script.ipynb", as_version=4)
    answer = next(c.source for c in solution.cells if "def reply_text" in c.source)
    mine = nbformat.read(target / "exercises/01-api-script.ipynb", as_version=4)
    cell = next(c for c in mine.cells if "def reply_text" in c.source)
    cell.source = answer
    nbformat.write(mine, target / "exercises/01-api-script.ipynb")
    return target


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    url = discovery.find_runtime(start=False).url
    return {
        **os.environ,
        "LABKIT_VENV": str(PROJECT / ".venv"),
        "LABKIT_BASE_URL": url,
        "PYTHONPATH": "",  # the release's ./lab puts its own folder first
    }


def _readme_commands(folder: Path) -> list[str]:
    """The commands of the README's first code block, without their comments."""
    block = re.search(r"```bash\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert block is not None, "the README starts with its commands"
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_the_readme_is_the_learners(course: Path) -> None:
    text = (course / "README.md").read_text()
    for heading in ("## Start the lab", "## Work an exercise", "## Check it", "## Hand it in"):
        assert heading in text
    assert 'check("q1")' in text and "labkit update" in text
    assert [w for w in INSTRUCTOR_ONLY if w in text] == []
    assert not (course / "docs/authoring.md").exists()  # the instructors' guide stays behind
    assert _readme_commands(course) == ["./lab", "./lab test"]


def test_lab_test_runs_the_public_checks_of_every_exercise(
    course: Path, env: dict[str, str]
) -> None:
    command = _readme_commands(course)[1]
    done = subprocess.run(
        shlex.split(command),
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = done.stdout
    assert "no tests ran" not in out
    assert not (course / ".venv").exists()  # LABKIT_VENV was used as it is
    questions = 0
    for key in sorted((course / "exercises/tests").glob("*.json")):
        assert f"exercises/{key.stem}.ipynb" in out, f"{key.stem} was not checked:\n{out}"
        data = json.loads(key.read_text())
        names = [q["name"] for q in data["questions"] if not q.get("manual")]
        questions += len(names)
    # Exercise 1's q1 is answered: each of its checks passes; its other questions wait.
    section = out.split("exercises/01-api-script.ipynb", 1)[1].split("exercises/02", 1)[0]
    q1 = section.split("  q2:", 1)[0]
    assert re.search(r"q1: (\d+) of \1 tests passed", q1), section
    assert "✔" in q1 and "✘" not in q1
    assert "q2: not implemented yet" in section and "✘" in section.split("  q2:", 1)[1]
    assert f"Public checks: 1 of {questions} questions pass." in out, out[-2000:]
    assert done.returncode == 1  # not everything passes yet, and the exit code says so
    # The learner's notebook is only read.
    assert "def reply_text" in (course / "exercises/01-api-script.ipynb").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lab_opens_jupyterlab_on_the_course(course: Path, env: dict[str, str]) -> None:
    port = _free_port()
    command = [*shlex.split(_readme_commands(course)[0]), "--headless", "--port", str(port)]
    lab = subprocess.Popen(
        command,
        cwd=course,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    assert lab.stdout is not None
    reader = threading.Thread(target=lambda: seen.extend(lab.stdout or []), daemon=True)
    reader.start()
    try:
        # JupyterLab prints its address with the token, e.g. http://127.0.0.1:PORT/lab/...?token=
        pattern = re.compile(rf"http://127\.0\.0\.1:{port}/\S*\?token=\w+")
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline and lab.poll() is None:
            found = pattern.search("".join(seen))
            url = found[0] if found else None
            time.sleep(0.5)
        assert url is not None, "".join(seen)[-3000:]
        token = url.split("token=")[1]
        root = requests.get(
            f"http://127.0.0.1:{port}/api/contents", params={"token": token}, timeout=60
        )
        names = {item["name"] for item in root.json()["content"]}
        # JupyterLab serves this release, not the course it was made from.
        assert {"notebooks", "exercises", "README.md", "lab"} <= names
        assert "solutions" not in names and "masters" not in names
        lesson = requests.get(
            f"http://127.0.0.1:{port}/api/contents/notebooks/00-check-your-setup.ipynb",
            params={"token": token, "content": "0"},
            timeout=60,
        )
        assert lesson.status_code == 200
        assert "Runtime: " in "".join(seen)  # it found the runtime before opening the lab
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
