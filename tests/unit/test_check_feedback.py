"""When a learner's code raises inside a test, the feedback names the case it was on.

A learner reading "KeyError: 'message'" cannot tell which input broke their function; the
feedback adds the test's line and the values of the loop and the line it failed on (the
case), but only plain data the test made, and for a hidden test only the instructor sees them.
"""

from __future__ import annotations

from typing import Any

from labkit.course import checks

LOOP = """
shapes = [
    ("Ollama chat", {"message": {"content": "Hi"}}),
    ("Ollama generate", {"response": "Bonjour"}),
]
for shape, body in shapes:
    got = reply_text(body)
    assert isinstance(got, str)
"""


def _test(code: str, *, hidden: bool = False, failure_message: str = "") -> dict[str, Any]:
    return {
        "name": "q1.1",
        "code": code,
        "points": 1.0,
        "hidden": hidden,
        "description": "reply_text reads every shape",
        "failure_message": failure_message,
    }


def chat_only(body: dict[str, Any]) -> str:
    return str(body["message"]["content"])


def test_an_error_in_a_loop_names_the_case_and_the_input() -> None:
    outcome = checks.run_test(_test(LOOP), {"reply_text": chat_only}, question="q1")
    assert outcome.status == "error"
    assert outcome.message.startswith("KeyError: 'message' (in the test line: got = reply_text")
    assert "shape = 'Ollama generate'" in outcome.message
    assert "body = {'response': 'Bonjour'}" in outcome.message
    assert "Ollama chat" not in outcome.message  # the case that raised, not the one before


def test_a_comprehension_names_its_variable() -> None:
    code = "answers = {key: decide(key) for key in CASES}\nassert answers"
    namespace = {"decide": {"a": True}.__getitem__, "CASES": ["a", "b"]}
    outcome = checks.run_test(_test(code), namespace, question="q1")
    assert "with key = 'b'" in outcome.message
    assert "CASES = " not in outcome.message  # the learner's own variable is not the case


def test_only_plain_values_the_test_made_are_shown() -> None:
    shown: list[str] = []

    class Reply:
        def __repr__(self) -> str:
            shown.append("repr ran")
            return "Reply()"

    code = "reply = make()\nfor n in [1, 2]:\n    read(reply, n, big)"
    namespace = {
        "make": Reply,
        "read": lambda reply, n, big: 1 / (n - 2),
        "big": "x" * 1000,  # the learner's: not shown
    }
    outcome = checks.run_test(_test(code), namespace, question="q1")
    assert outcome.status == "error" and "with n = 2" in outcome.message
    assert not shown and "Reply()" not in outcome.message and "xxx" not in outcome.message


def test_a_long_error_text_is_cut_before_the_case() -> None:
    def loud(body: dict[str, Any]) -> str:
        raise ValueError("no " * 500)

    outcome = checks.run_test(_test(LOOP), {"reply_text": loud}, question="q1")
    assert "shape = 'Ollama chat'" in outcome.message and len(outcome.message) <= 600


def test_a_failed_assertion_without_a_message_shows_its_line_and_case() -> None:
    code = "for n in [2, 5]:\n    assert square(n) == n * n"
    outcome = checks.run_test(_test(code), {"square": lambda n: n * 2}, question="q1")
    assert outcome.status == "failed"
    assert outcome.message == "This check failed: assert square(n) == n * n; with n = 5"


def test_a_hidden_test_shows_the_case_to_the_instructor_only() -> None:
    test = _test(LOOP, hidden=True, failure_message="Read body['response'] for /api/generate.")
    outcome = checks.run_test(test, {"reply_text": chat_only}, question="q1", grading=True)
    assert outcome.message == "The hidden test stopped with KeyError."
    assert outcome.hint == "Read body['response'] for /api/generate."
    assert "shape = 'Ollama generate'" in outcome.detail
    assert "raised in reply_text()" in outcome.detail
