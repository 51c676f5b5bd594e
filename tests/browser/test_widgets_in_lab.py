"""The course's widgets in a real browser: the assistant streams a reply, quizzes give feedback.

A scratch notebook (written under tests/browser/artifacts/scratch/, inside the folder the lab
serves) shows each widget of labkit.course; the tests click and type in Chromium, so the
whole path runs: the browser's widget front end, the kernel's ipywidgets, and the runtime.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
from lab_browser import (
    PROJECT,
    SCRATCH_ROOT,
    LabPage,
    PageMaker,
    ask_assistant,
    assistant_boxes,
    feedback_of,
    free_text_boxes,
    quiz_boxes,
    write_notebook,
)
from playwright.sync_api import expect

from labkit import discovery
from labkit.course.coach import MODULES

CELLS = [
    "from labkit.course import Assistant, free_text, quiz\n"
    "\n"
    "coach = Assistant(module=1, seed=42, max_tokens=60)\n"
    "coach",
    'q = quiz("Which endpoint of Ollama answers a chat request?",\n'
    '         ["/api/tags", "/api/chat", "/api/embed"], "B",\n'
    '         "POST /api/chat takes a model and a list of messages.")\n'
    "q",
    'ft = free_text("On which port does Ollama listen by default?", ["11434"],\n'
    '               "Ollama listens on 127.0.0.1:11434 unless OLLAMA_HOST says otherwise.")\n'
    "ft",
]


@pytest.fixture(scope="module")
def widgets_page(make_page: PageMaker) -> Iterator[LabPage]:
    """The scratch notebook, run once in the browser; shared by this module's tests, in order."""
    folder = SCRATCH_ROOT / uuid.uuid4().hex[:12]
    notebook = folder / "widgets.ipynb"
    write_notebook(notebook, CELLS)
    page = make_page("widgets")
    try:
        page.open_notebook(notebook.relative_to(PROJECT).as_posix())
        page.run_all()
        page.wait_widgets_rendered()
        yield page
    finally:
        page.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_widgets_render_as_widgets(widgets_page: LabPage) -> None:
    page = widgets_page
    page.shot("ran")
    cells = page.cells()
    assert all(cell["prompt"].strip() not in {"[ ]:", "[*]:"} for cell in cells), cells
    for index, cell in enumerate(cells):
        assert not cell["errors"], f"cell {index} failed: {cell['errors']}"
        assert cell["outputs"], f"cell {index} shows nothing"
        assert all(output["widget"] for output in cell["outputs"]), (
            f"cell {index} should show a rendered widget, it shows {cell['outputs']}"
        )
    assert assistant_boxes(page.page, MODULES[1].placeholder).count() == 1
    assert quiz_boxes(page.page).count() == 1
    assert free_text_boxes(page.page).count() == 1
    # The assistant's model picker lists the runtime's chat model and starts on it.
    chat_model = discovery.find_runtime(start=False).chat_model
    picker = assistant_boxes(page.page, MODULES[1].placeholder).locator("select")
    expect(picker).to_have_value(chat_model)
    problems = page.problems()
    assert not problems, f"the browser shows problems:\n{problems}"


def test_assistant_streams_a_reply(widgets_page: LabPage) -> None:
    page = widgets_page
    coach = assistant_boxes(page.page, MODULES[1].placeholder)
    coach.scroll_into_view_if_needed()
    page.shot("assistant-before", coach)

    first = ask_assistant(coach, "What does stream=true change in a request to /api/chat?")
    page.shot("assistant-first-reply", coach)
    assert first.text, "the assistant's reply is empty"
    # Streamed: the browser showed the reply growing, each state a beginning of the final text.
    assert len(first.partials) >= 3, f"the reply did not arrive in pieces: {first.partials}"
    for partial in first.partials:
        assert first.text.startswith(partial), (partial, first.text)
    assert discovery.find_runtime(start=False).chat_model in first.status

    # A second question, sent with the button this time: the transcript keeps both turns.
    second = ask_assistant(coach, "And how do I read the reply?", press_enter=False)
    page.shot("assistant-second-reply", coach)
    assert second.text and len(second.partials) >= 3
    transcript = coach.inner_text()
    assert transcript.count("You:") == 2 and transcript.count("Coach:") == 2, transcript
    problems = page.problems()
    assert not problems, f"the browser shows problems:\n{problems}"


def test_quiz_gives_feedback(widgets_page: LabPage) -> None:
    page = widgets_page
    question = quiz_boxes(page.page)
    feedback = feedback_of(question)
    expect(feedback).to_have_text("")

    # Options are shuffled per learner: pick them by their text, not their letter.
    question.locator(".widget-radio-box label", has_text="/api/tags").click()
    question.get_by_role("button", name="Check").click()
    expect(feedback).to_contain_text("Not quite")
    page.shot("quiz-wrong", question)

    question.locator(".widget-radio-box label", has_text="/api/chat").click()
    question.get_by_role("button", name="Check").click()
    expect(feedback).to_contain_text("Correct!")
    expect(feedback).to_contain_text("POST /api/chat takes a model")
    page.shot("quiz-right", question)
    problems = page.problems()
    assert not problems, f"the browser shows problems:\n{problems}"


def test_free_text_gives_feedback(widgets_page: LabPage) -> None:
    page = widgets_page
    question = free_text_boxes(page.page)
    box = question.locator("input[type='text']")
    feedback = feedback_of(question)

    box.fill("1234")
    box.press("Enter")  # the answer is sent on Enter
    expect(feedback).to_contain_text("Not quite")
    page.shot("free-text-wrong", question)

    box.fill(" 11434 ")
    question.get_by_role("button", name="Check").click()
    expect(feedback).to_contain_text("Correct!")
    page.shot("free-text-right", question)
    problems = page.problems()
    assert not problems, f"the browser shows problems:\n{problems}"


# Each cell breaks the page in one way a learner could meet; the last two show that a failing
# cell stops "Run All" and that the cells after it are reported as not run.
BROKEN = [
    # The kernel's ipywidgets announces a controls version the lab's front end does not have.
    "import ipywidgets as w\n"
    'w.Button(description="too new", _model_module_version="9.9.9",'
    ' _view_module_version="9.9.9")',
    # An output that refers to a widget the kernel never created.
    "from IPython.display import display\n"
    'display({"application/vnd.jupyter.widget-view+json": {"model_id": "no-such-model",'
    ' "version_major": 2, "version_minor": 0}, "text/plain": "a widget"}, raw=True)',
    # A widget shown only as its text, as when no widget front end is installed.
    'display({"text/plain": repr(w.VBox([w.HTML("hello")]))}, raw=True)',
    # JavaScript that logs an error, then throws one nobody catches.
    "from IPython.display import Javascript\n"
    "Javascript(\"console.error('labkit probe: logged'); "
    "setTimeout(() => { throw new Error('labkit probe: thrown'); });\")",
    'raise RuntimeError("labkit probe: this cell fails")',
    'print("never run")',
]


def test_the_checks_see_broken_widgets_and_errors(make_page: PageMaker) -> None:
    """The checks above would fail on a broken page: each kind of breakage is reported."""
    folder = SCRATCH_ROOT / uuid.uuid4().hex[:12]
    notebook = folder / "broken.ipynb"
    write_notebook(notebook, BROKEN)
    page = make_page("broken")
    try:
        page.open_notebook(notebook.relative_to(PROJECT).as_posix())
        page.run_all()
        page.wait_widgets_rendered()
        expect(page.notebook.locator("[data-mime-type='application/javascript']")).to_have_count(1)
        # The thrown error arrives from a timer: wait for it (bounded) before reading.
        deadline = time.monotonic() + 30
        while not any("thrown" in e for e in page.errors) and time.monotonic() < deadline:
            page.page.wait_for_timeout(100)
        page.shot("broken")
        cells = page.cells()
        problems = str(page.problems())
    finally:
        page.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert "cell 0 shows the widget error icon" in problems, problems
    assert "@jupyter-widgets/controls, version ^9.9.9 is not registered" in problems, problems
    assert "Error displaying widget" in problems, problems
    assert "cell 2 shows a widget as plain text" in problems, problems
    assert "error: labkit probe: logged" in problems, problems
    assert "page error: labkit probe: thrown" in problems, problems
    assert cells[4]["errors"] == ["RuntimeError: labkit probe: this cell fails"], cells[4]
    assert not any(cell["errors"] for cell in cells[:4]), cells
    assert cells[5]["prompt"].strip() == "[ ]:", cells[5]
