"""Module 1 in a real browser: run it from the menu, then use its assistant and its quiz.

The assistant must stream its reply into the page piece by piece, and the quiz must answer
a click on Check with feedback, as a learner sees them.
"""

from __future__ import annotations

import re

import pytest
from lab_browser import (
    PROJECT,
    LabPage,
    ask_assistant,
    assistant_boxes,
    digest,
    feedback_of,
    quiz_boxes,
    run_and_check,
)
from playwright.sync_api import expect

from labkit.course.coach import MODULES

MODULE_1 = "notebooks/01-local-model-apis.ipynb"


def test_module_1_runs_and_its_widgets_answer(lab_page: LabPage) -> None:
    path = PROJECT / MODULE_1
    if not path.exists():
        pytest.fail(
            f"{MODULE_1} does not exist: the README lists it as Module 1 of the course.",
            pytrace=False,
        )
    before = digest(path)
    lab_page.open_notebook(MODULE_1)
    run_and_check(lab_page, MODULE_1)

    coaches = assistant_boxes(lab_page.page, MODULES[1].placeholder)
    assert coaches.count() >= 1, f"{MODULE_1} shows no assistant (labkit.course.assistant(1))"
    coach = coaches.first
    coach.scroll_into_view_if_needed()
    question = "In a few sentences: when should my script stream the reply, and when not?"
    reply = ask_assistant(coach, question)
    lab_page.shot("assistant-reply", coach)
    assert reply.text, "the assistant's reply is empty"
    # The notebook's assistant has no fixed seed, so its reply may be short: two states of
    # the reply on the way, each a beginning of the final text, show that it streamed.
    assert len(reply.partials) >= 2, f"the reply did not arrive in pieces: {reply.partials}"
    for partial in reply.partials:
        assert reply.text.startswith(partial), (partial, reply.text)

    quizzes = quiz_boxes(lab_page.page)
    assert quizzes.count() >= 1, f"{MODULE_1} shows no quiz (labkit.course.quiz)"
    quiz = quizzes.first
    quiz.locator(".widget-radio-box label").first.click()
    quiz.get_by_role("button", name="Check").click()
    expect(feedback_of(quiz)).to_contain_text(re.compile("Correct!|Not quite"))
    lab_page.shot("quiz-feedback", quiz)

    problems = lab_page.problems()
    assert not problems, f"the browser shows problems with {MODULE_1}:\n{problems}"
    assert digest(path) == before, f"{MODULE_1} was changed on disk"
