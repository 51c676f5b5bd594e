"""Drive the lab the way a learner meets it: `labkit lab --headless`, then Chromium on top.

Used by the fixtures in conftest.py and by the tests:

- ``JupyterLab`` starts ``labkit lab --headless --port N`` (what ``./lab --headless`` runs) with a
  private Jupyter configuration, waits until it answers, and stops it with all its kernels.
- ``LabPage`` wraps one Playwright page: open a notebook, use the menus, wait for the kernel,
  read the outputs, and collect what only a browser shows (console errors, widgets that failed
  to render). Screenshots of each step go to an artefacts folder.
- ``run_and_check`` runs a course notebook from the menu and checks what the learner reads;
  ``ask_assistant``, ``quiz_boxes`` and friends use the widgets of labkit.course.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
from playwright.sync_api import ConsoleMessage, Locator, Page

from labkit import runtime

PROJECT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

CHROMIUM = os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's services,
# which a machine without internet refuses noisily; the rest suit a headless root session.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Generous: the machine may be busy with the rest of the suite.
START_TIMEOUT = 120.0  # s for JupyterLab to answer
UI_TIMEOUT = 60_000  # ms for the page to react (load, kernel start, a widget to render)
RUN_TIMEOUT = 240_000  # ms for "Run All Cells" to finish a whole notebook
REPLY_TIMEOUT = 120_000  # ms for the assistant's streamed reply to finish

ARTIFACTS = Path(os.environ.get("LABKIT_BROWSER_ARTIFACTS", HERE / "artifacts"))
# Scratch notebooks must live inside the folder JupyterLab serves (the project).
SCRATCH_ROOT = HERE / "artifacts" / "scratch"

# --- what a broken widget looks like in the page ------------------------------------------------

# Texts the ipywidgets front end writes into an output area when it cannot show a widget
# (most often: the kernel's ipywidgets and the lab's jupyterlab_widgets do not match).
WIDGET_ERRORS = (
    "Error displaying widget",
    "Failed to load model class",
    "Could not create a model",
    "Could not create a view",
    "widget model not found",
)
# A widget shown as its text repr, e.g. "VBox(children=(HTML(value='<b>…" in a plain-text output:
# the front end did not render it (no widget manager, or the output was not trusted).
PLAIN_WIDGET = re.compile(
    r"\b(?:VBox|HBox|Box|Button|Dropdown|Text|Textarea|RadioButtons|HTML|Label|Output)"
    r"\((?:children|value|description|options|layout|placeholder)="
)
# The page shows a Python error like any text on stderr; the notebook's model (read through
# window.jupyterapp, which the test configuration exposes) says which outputs are errors.
MODEL_ERRORS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    return Array.from({length: cells.length}, (_, i) => (cells.get(i).toJSON().outputs || [])
        .filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`));
}"""

# --- console messages that are not errors of the lab ----------------------------------------

# Each entry: a pattern matched against "type: text" of a console message, and why it is
# harmless. Anything else of type "error" (and every uncaught page error) fails the test.
CONSOLE_NOISE: list[tuple[re.Pattern[str], str]] = []


def _allowed(text: str) -> bool:
    return any(pattern.search(text) for pattern, _why in CONSOLE_NOISE)


# --- the server ------------------------------------------------------------------------------


def _labkit_command() -> list[str]:
    """The `labkit` entry point of this environment (what ./lab runs)."""
    script = Path(sys.executable).with_name("labkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "labkit"]


@dataclass
class JupyterLab:
    """JupyterLab started by `labkit lab --headless`, with a private Jupyter configuration."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    url: str = ""  # e.g. http://127.0.0.1:8890/ (from the server's own record)
    process: subprocess.Popen[bytes] | None = None
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        """Where the server's output goes (shown when it fails to start)."""
        return self.workdir / "jupyterlab.log"

    def _environment(self) -> dict[str, str]:
        """The learner's environment, with Jupyter's per-user folders made private.

        A private settings folder turns autosave off (a test must never write outputs into the
        course's notebooks) and stops the "fetch Jupyter news?" toast from covering the page; a
        private workspaces folder means no tabs from an earlier session are restored.
        """
        folders = {
            name: self.workdir / name for name in ("config", "data", "runtime", "workspaces")
        }
        settings = self.workdir / "settings"
        for folder in [*folders.values(), settings]:
            folder.mkdir(parents=True, exist_ok=True)
        user_settings = {
            "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
            "@jupyterlab/apputils-extension/notification": {
                "fetchNews": "false",
                "checkForUpdates": False,
            },
        }
        # For the tests only: window.jupyterapp lets them read the notebook's model (which
        # outputs are errors); it changes nothing a learner sees.
        config = {"LabApp": {"expose_app_in_browser": True}}
        (folders["config"] / "jupyter_server_config.json").write_text(json.dumps(config))
        for plugin, values in user_settings.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        return {
            **os.environ,
            "JUPYTER_TOKEN": self.token,
            "JUPYTER_CONFIG_DIR": str(folders["config"]),
            "JUPYTER_DATA_DIR": str(folders["data"]),
            "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(folders["workspaces"]),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "IPYTHONDIR": str(self.workdir / "ipython"),
        }

    def start(self) -> None:
        """Run `labkit lab --headless --port N` and wait until the server answers."""
        port = runtime.free_port()
        command = [*_labkit_command(), "lab", "--headless", "--port", str(port)]
        with self.log_path.open("wb") as log:
            # A session of its own: stopping the lab signals labkit and Jupyter together,
            # the way Ctrl+C in a terminal reaches the whole foreground group.
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self._failure(f"exited with code {self.process.returncode}"))
            if self._answers():
                return
            time.sleep(0.25)
        raise RuntimeError(self._failure(f"did not answer within {START_TIMEOUT:.0f} s"))

    def _answers(self) -> bool:
        """True once the server wrote its record (jpserver-PID.json) and its API answers."""
        records = sorted((self.workdir / "runtime").glob("jpserver-*.json"))
        if not records:
            return False
        try:
            self.url = json.loads(records[-1].read_text())["url"]
            return self.api("GET", "api/status") is not None
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return False  # the record is half-written or the port not yet open

    def _failure(self, what: str) -> str:
        log = self.log_path.read_text(errors="replace")
        hint = ""
        if "Running as root is not recommended" in log:
            hint = (
                "\nJupyterLab refuses to run as root unless it is given --allow-root: "
                "`labkit lab` (and so `./lab --headless`) must pass it when the user is root."
            )
        tail = "\n".join(log.splitlines()[-25:])
        return f"`labkit lab --headless` {what}.{hint}\n--- its output ---\n{tail}"

    def api(self, method: str, path: str) -> Any:
        """Call the Jupyter server's REST API; the decoded JSON reply (None if empty)."""
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def page_url(self, path: str = "") -> str:
        """An address in the lab, logged in with the token."""
        return f"{self.url}{path}?token={self.token}"

    def shut_down_sessions(self, notebook: str) -> None:
        """Shut down the kernels of every session open on ``notebook`` (a path in the project)."""
        for session in self.api("GET", "api/sessions") or []:
            if session.get("path") == notebook:
                self.api("DELETE", f"api/sessions/{session['id']}")

    def stop(self) -> list[str]:
        """Stop the server and all its kernels; the processes that had to be killed, if any."""
        if self.process is None:
            return []
        with contextlib.suppress(psutil.Error):
            self.descendants = psutil.Process(self.process.pid).children(recursive=True)
        # Ask the server to shut its kernels down first: that is the gentle way.
        with contextlib.suppress(OSError, ValueError):  # URLError is an OSError
            for kernel in (self.api("GET", "api/kernels") if self.url else None) or []:
                self.api("DELETE", f"api/kernels/{kernel['id']}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # Jupyter stops cleanly on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(map(_running, self.descendants)) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = []
        for process in filter(_running, self.descendants):
            with contextlib.suppress(psutil.Error):
                leftovers.append(f"{process.pid} {' '.join(process.cmdline())}")
                process.kill()
        if self.process.poll() is None:
            leftovers.append(f"{self.process.pid} labkit lab")
            self.process.kill()
        return leftovers


def _running(process: psutil.Process) -> bool:
    """True while ``process`` runs; a zombie (exited, not yet reaped by its parent) has ended."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


# --- the page --------------------------------------------------------------------------------


@dataclass
class Problems:
    """What is wrong in the page, as lines a person can read (empty when all is well)."""

    lines: list[str]

    def __bool__(self) -> bool:
        return bool(self.lines)

    def __str__(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


class LabPage:
    """One browser tab on the lab, with helpers that wait for conditions (never fixed sleeps)."""

    open_pages: ClassVar[list[LabPage]] = []  # for a screenshot of each when a test fails

    def __init__(self, page: Page, lab: JupyterLab, shots: Path) -> None:
        self.page, self.lab, self.shots = page, lab, shots
        LabPage.open_pages.append(self)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.console: list[str] = []  # every console message, for the artefacts
        self.errors: list[str] = []  # console errors and uncaught exceptions, not yet reported
        self.opened: list[str] = []  # notebooks opened, so their kernels can be shut down
        self._step = 0
        page.set_default_timeout(UI_TIMEOUT)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        line = f"{message.type}: {message.text}"
        self.console.append(line)
        if message.type == "error" and not _allowed(line):
            location = message.location
            self.errors.append(
                f"{line} (at {location.get('url', '?')}:{location.get('lineNumber')})"
            )

    # --- steps ---

    def shot(self, name: str, target: Locator | None = None) -> Path:
        """Save a screenshot of the page (or of one element) as the next numbered step."""
        self._step += 1
        path = self.shots / f"{self._step:02d}-{name}.png"
        if target is None:
            self.page.screenshot(path=path)
        else:
            target.scroll_into_view_if_needed()
            target.screenshot(path=path)
        return path

    def goto(self, path: str = "") -> None:
        """Load an address of the lab and wait for JupyterLab's shell to appear."""
        self.page.goto(self.lab.page_url(path))
        self.page.locator("#jp-main-dock-panel").wait_for()

    def open_notebook(self, notebook: str) -> None:
        """Open ``notebook`` (a path in the project) in a workspace of its own, kernel idle."""
        # A fresh workspace: no tabs restored from another test.
        self.goto(f"lab/workspaces/t{uuid.uuid4().hex[:8]}/tree/{notebook}")
        self.wait_notebook(notebook)

    def wait_notebook(self, notebook: str) -> None:
        """Wait until ``notebook`` shows its cells and its kernel is idle."""
        self.opened.append(notebook)
        self.notebook.locator(".jp-Cell").first.wait_for()
        # A long notebook's cells are attached to the page a few at a time: wait for all.
        self.page.wait_for_function(
            """nb => nb.querySelectorAll('.jp-Notebook-cell').length
                === window.jupyterapp.shell.currentWidget.content.model.cells.length""",
            arg=self.notebook.element_handle(),
        )
        self.wait_kernel_idle()

    @property
    def notebook(self) -> Locator:
        """The notebook in the current tab of the main area."""
        return self.page.locator("#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)")

    def wait_kernel_idle(self, timeout: float = UI_TIMEOUT) -> None:
        """Wait until the status bar says the kernel is idle (it is started on opening)."""
        status = self.page.locator(".jp-StatusBar-TextItem[title^='Change kernel']")
        status.filter(has_text=re.compile(r"\|\s*Idle\s*$")).wait_for(timeout=timeout)

    def menu(self, top: str, item: str) -> None:
        """Click a menu of the menu bar, then one of its items (by their visible labels)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
        label = self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$"))
        label.click()

    def clear_outputs(self) -> None:
        """Edit → Clear Outputs of All Cells, and wait until no output is left."""
        self.menu("Edit", "Clear Outputs of All Cells")
        self.page.wait_for_function(
            "nb => nb.querySelectorAll('.jp-OutputArea-output').length === 0",
            arg=self.notebook.element_handle(),
        )

    def run_all(self, timeout: float = RUN_TIMEOUT) -> None:
        """Run → Run All Cells, then wait until every code cell ran (or one failed)."""
        self.menu("Run", "Run All Cells")
        # Done when every code cell has an execution number, or when none is queued or
        # running any more and an error stopped the run. Outputs were cleared first, so a
        # number means this run executed the cell.
        self.page.wait_for_function(
            f"""nb => {{
                const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                    .map(p => p.textContent.trim());
                const ran = prompts.filter(t => /^\\[\\d+\\]:$/.test(t)).length;
                if (prompts.length && ran === prompts.length) return true;
                const failed = ({MODEL_ERRORS})().some(errors => errors.length);
                return failed && ran > 0 && !prompts.includes('[*]:');
            }}""",
            arg=self.notebook.element_handle(),
            timeout=timeout,
        )
        self.wait_kernel_idle()

    def cells(self) -> list[dict[str, Any]]:
        """Each cell of the notebook: kind, prompt, outputs (MIME type, text) and errors."""
        # JupyterLab adds a long notebook's cells to the page a few at a time, when the
        # browser is idle: on a busy machine some are not there yet. Read them all.
        self.page.wait_for_function(
            """nb => nb.querySelectorAll('.jp-Notebook-cell').length
                === window.jupyterapp.shell.currentWidget.content.model.cells.length""",
            arg=self.notebook.element_handle(),
            timeout=60_000,
        )
        errors: list[list[str]] = self.page.evaluate(MODEL_ERRORS)
        shown: list[dict[str, Any]] = self.notebook.evaluate(
            """nb => [...nb.querySelectorAll('.jp-Notebook-cell')].map(cell => ({
                kind: cell.classList.contains('jp-CodeCell') ? 'code' : 'other',
                prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
                outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
                    mime: o.getAttribute('data-mime-type') || '',
                    text: o.textContent,
                    widget: o.querySelector('.jupyter-widgets') !== null,
                    broken: o.querySelector('.jupyter-widgets-error-widget') !== null,
                })),
            }))"""
        )
        return [
            {**cell, "errors": cell_errors} for cell, cell_errors in zip(shown, errors, strict=True)
        ]

    def output_text(self) -> str:
        """The text of every output area of the open notebook (not the code, not the page)."""
        text: str = self.notebook.evaluate(
            "nb => [...nb.querySelectorAll('.jp-OutputArea-output')]"
            ".map(o => o.textContent).join('\\n')"
        )
        return text

    def wait_widgets_rendered(self) -> None:
        """Wait until no widget says "Loading widget..." (views are created asynchronously)."""
        self.page.wait_for_function(
            """nb => ![...nb.querySelectorAll('.jp-OutputArea-output')]
                .some(o => o.textContent.includes('Loading widget...'))""",
            arg=self.notebook.element_handle(),
        )

    def problems(self) -> Problems:
        """Console errors, page errors and broken widgets since the last call."""
        lines, self.errors = self.errors, []
        text = self.output_text()
        lines += [f"an output shows {error!r}" for error in WIDGET_ERRORS if error in text]
        for index, cell in enumerate(self.cells()):
            for output in cell["outputs"]:
                if output["broken"]:
                    lines.append(
                        f"cell {index} shows the widget error icon: its front end could not "
                        "create the widget (see the console errors)"
                    )
                if output["mime"] == "text/plain" and PLAIN_WIDGET.search(output["text"]):
                    lines.append(
                        f"cell {index} shows a widget as plain text instead of rendering it: "
                        f"{output['text'][:120]!r}"
                    )
        return Problems(lines)

    def close(self) -> None:
        """Write the console log, close the tab, shut down the kernels it started."""
        if self in LabPage.open_pages:
            LabPage.open_pages.remove(self)
        if self.page.is_closed():
            return
        (self.shots / "console.log").write_text("\n".join(self.console) + "\n")
        self.page.close()
        for notebook in self.opened:
            with contextlib.suppress(OSError, ValueError):
                self.lab.shut_down_sessions(notebook)


def digest(path: Path) -> str:
    """The SHA-256 of a file: to show a test left the course's files as they were."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_and_check(page: LabPage, notebook: str) -> None:
    """Clear the outputs, run every cell from the menu, and check what the learner sees."""
    path = PROJECT / notebook
    page.shot("opened")
    page.clear_outputs()
    assert not any(cell["outputs"] for cell in page.cells()), "clearing left outputs behind"
    page.run_all()
    page.wait_widgets_rendered()
    page.shot("ran")

    cells = page.cells()
    allowed_errors = cells_expected_to_fail(path)
    failures = [
        f"cell {index}: {error}"
        for index, cell in enumerate(cells)
        for error in cell["errors"]
        if index not in allowed_errors
    ]
    assert not failures, f"{notebook} shows errors:\n" + "\n".join(failures)
    not_run = [i for i, c in enumerate(cells) if c["kind"] == "code" and "[" not in c["prompt"]]
    not_run += [i for i, c in enumerate(cells) if re.search(r"\[[ *]\]", c["prompt"])]
    assert not not_run, f"cells {not_run} of {notebook} did not run"

    missing = []
    for index in expected_checkmarks(path):
        text = " ".join(output["text"] for output in cells[index]["outputs"])
        if "✅" in text:
            line = next(line for line in text.splitlines() if "✅" in line)
            output = page.notebook.locator(".jp-Notebook-cell").nth(index)
            page.shot(
                "check-" + re.sub(r"\W+", "-", line.split("✅", 1)[1]).strip("-")[:40], output
            )
        else:
            missing.append(f"cell {index} printed no ✅ line; it shows {text[-300:]!r}")
    assert not missing, "\n".join(missing)

    problems = page.problems()
    assert not problems, f"the browser shows problems with {notebook}:\n{problems}"


PageMaker = Callable[[str], LabPage]  # the make_page fixture: a fresh tab, named for its artefacts


def expected_checkmarks(notebook: Path) -> list[int]:
    """The cells of ``notebook`` whose code prints a ✅ line (their index among all cells)."""
    cells = json.loads(notebook.read_text())["cells"]
    return [
        index
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "code" and "✅" in "".join(cell["source"])
    ]


def cells_expected_to_fail(notebook: Path) -> set[int]:
    """Cells tagged raises-exception: an error there is the lesson, not a failure."""
    cells = json.loads(notebook.read_text())["cells"]
    return {
        index
        for index, cell in enumerate(cells)
        if "raises-exception" in cell.get("metadata", {}).get("tags", [])
    }


def write_notebook(path: Path, sources: list[str]) -> None:
    """Write a notebook of code cells with these sources (no outputs yet)."""
    cells: list[dict[str, Any]] = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": f"cell-{index}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }
        for index, source in enumerate(sources)
    ]
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False))


# --- the course's widgets (labkit.course) as a learner uses them ------------------------------------


def assistant_boxes(page: Page, placeholder: str) -> Locator:
    """The Assistant widgets whose question box shows ``placeholder`` (one per module)."""
    # The VBox whose own row holds the box (not an outer box that merely contains it).
    quoted = json.dumps(placeholder, ensure_ascii=False)
    return page.locator(
        f".widget-vbox:has(> .widget-hbox > .widget-text > input[placeholder={quoted}])"
    )


# The Assistant's layout (labkit.course.Assistant.widget): a VBox of heading, model picker,
# transcript, the reply being written, the question row, and a status line.
_ASSISTANT_PARTS = """root => {
    const [heading, picker, transcript, live, controls, status] = root.children;
    return {transcript, live, controls, status};
}"""


@dataclass
class StreamedReply:
    """What the browser showed while the assistant answered."""

    text: str  # the finished reply in the transcript
    partials: list[str]  # each distinct state of the reply while it was being written
    status: str  # the status line under the chat


def ask_assistant(root: Locator, question: str, *, press_enter: bool = True) -> StreamedReply:
    """Type ``question`` into the assistant, send it (Enter or Send), follow the streamed reply."""
    # Watch the "reply being written" area before sending: every change to it is recorded, so
    # the test sees the reply grow piece by piece, as the learner does.
    root.evaluate(
        f"""root => {{
            const parts = ({_ASSISTANT_PARTS})(root);
            const partials = [];
            const record = () => {{
                const text = parts.live.innerText.trim();
                if (text && partials[partials.length - 1] !== text) partials.push(text);
            }};
            const observer = new MutationObserver(record);
            observer.observe(parts.live, {{subtree: true, childList: true, characterData: true}});
            const replies = (parts.transcript.innerText.match(/Coach:/g) || []).length;
            window.__labkitReply = {{partials, observer, replies}};
        }}"""
    )
    box = root.locator("input[type='text']")
    box.fill(question)
    if press_enter:
        box.press("Enter")
    else:
        root.get_by_role("button", name="Send", exact=True).click()
    root.page.wait_for_function(
        f"""root => {{
            const parts = ({_ASSISTANT_PARTS})(root);
            const replies = (parts.transcript.innerText.match(/Coach:/g) || []).length;
            const send = parts.controls.querySelector('button');
            return replies > window.__labkitReply.replies && !parts.live.innerText.trim()
                && send && !send.disabled;
        }}""",
        arg=root.element_handle(),
        timeout=REPLY_TIMEOUT,
    )
    seen: dict[str, Any] = root.evaluate(
        f"""root => {{
            const parts = ({_ASSISTANT_PARTS})(root);
            window.__labkitReply.observer.disconnect();
            const transcript = parts.transcript.innerText;
            return {{
                text: transcript.slice(transcript.lastIndexOf('Coach:') + 6).trim(),
                partials: window.__labkitReply.partials,
                status: parts.status.innerText,
            }};
        }}"""
    )
    partials = [re.sub(r"^Coach:\s*", "", text).strip() for text in seen["partials"]]
    return StreamedReply(seen["text"], partials, seen["status"])


def quiz_boxes(page: Page) -> Locator:
    """The multiple-choice quizzes (labkit.course.quiz): radio buttons and a Check button."""
    return page.locator(".widget-vbox:has(> .widget-radio):has(> .widget-button)")


def free_text_boxes(page: Page) -> Locator:
    """The typed-answer questions (labkit.course.free_text): a text box and a Check button."""
    return page.locator(
        ".widget-vbox:has(> .widget-hbox > .widget-text):has(> .widget-hbox > .widget-button)"
        ":not(:has(> .widget-hbox > .widget-dropdown))"  # the assistant has a model picker
    )


def feedback_of(question: Locator) -> Locator:
    """Where a quiz or free-text question shows its verdict (its last HTML part)."""
    return question.locator(":scope > .widget-html").last
