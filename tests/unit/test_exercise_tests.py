"""The exercises' own tests catch wrong answers that look right (run in-process, no runtime)."""

from __future__ import annotations

import ast
import functools
import time
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests

from labkit.course import checks
from labkit.grader import assign
from labkit.retry import exponential, jitter

PROJECT = Path(__file__).resolve().parents[2]


def _test(exercise: str, name: str) -> tuple[str, dict[str, Any]]:
    key = assign.load_key(PROJECT / "grading" / "hidden" / f"{exercise}.json")
    for q in key.questions:
        for t in q.tests:
            if t.name == name:
                return q.name, _as_dict(t)
    raise AssertionError(f"no test {name} in {exercise}")


def _as_dict(t: Any) -> dict[str, Any]:
    return asdict(t)


class Everything(str):
    """A wrong answer that claims to equal anything it is compared with."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class EqualToAll:
    """Not even a str: equal to everything."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


@pytest.mark.parametrize("fake", [EqualToAll, lambda: Everything("")])
def test_ex01_q1_1_rejects_an_object_equal_to_everything(fake: Any) -> None:
    question, test = _test("01-api-script", "q1.1")
    outcome = checks.run_test(test, {"reply_text": lambda body: fake()}, question=question)
    assert outcome.status == "failed", outcome
    right = {"reply_text": _reply_text}
    assert checks.run_test(test, right, question=question).status == "passed"


def _reply_text(body: dict[str, Any]) -> str:
    if "message" in body:
        return str(body["message"]["content"] or "")
    if "response" in body:
        return str(body["response"])
    return str(body["choices"][0]["message"]["content"] or "")


def _solution_namespace(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The ex02 solution's definitions, without asking a runtime for anything."""
    nb = nbformat.read(str(PROJECT / "solutions" / "02-classification.ipynb"), as_version=4)
    monkeypatch.chdir(PROJECT / "solutions")
    namespace: dict[str, Any] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = cell.source
        setup = "rt = find_runtime(" in source
        if setup:  # the setup cell: same names, no runtime
            source = source.replace(
                "rt = find_runtime(start=True)",
                "import types; rt = types.SimpleNamespace(dialect='ollama')",
            )
            source = source.replace("rt.url", "'http://127.0.0.1:9'").replace(
                "rt.chat_model", "'fake'"
            )
        if setup or source.startswith(("def ", "REPLY_TOKENS")):  # definitions only
            exec(compile(source, "<solution>", "exec"), namespace)
    return namespace


def _gives_up_on_an_invalid_reply(ns: dict[str, Any]) -> Any:
    def classify_long(text: str, *, base_url: str, model: str, log_path: Path, **kw: Any) -> Any:
        votes: dict[str, int] = {}
        chunks = ns["chunks_for"](text, kw.get("context_tokens", 2048))
        for chunk in chunks:
            result = ns["classify"](chunk, base_url=base_url, model=model, log_path=log_path)
            if result is None:
                return None  # wrong: one invalid reply throws the valid votes away
            votes[result["label"]] = votes.get(result["label"], 0) + 1
        label = max(votes, key=lambda k: votes[k])
        return {"label": label, "votes": votes, "chunks": len(chunks)}

    return classify_long


def test_ex02_q5_2_meets_an_invalid_reply_even_with_a_short_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    ns = _solution_namespace(monkeypatch)
    ns["system_prompt"] = lambda labels: "Label it: " + ", ".join(labels) + ". JSON."
    question, test = _test("02-classification", "q5.2")
    assert checks.run_test(test, ns, question=question).status == "passed"
    wrong = {**ns, "classify_long": _gives_up_on_an_invalid_reply(ns)}
    outcome = checks.run_test(test, wrong, question=question)
    assert outcome.status in ("failed", "error"), outcome


# --- exercises 1 and 4: one error contract, and the mistakes their public tests catch ----------

EXERCISES_WITH_CALLS = ("01-api-script", "04-production")


def _about(exercise: str, words: str) -> tuple[str, dict[str, Any]]:
    """The one test of ``exercise`` whose description holds ``words``."""
    key = assign.load_key(PROJECT / "grading" / "hidden" / f"{exercise}.json")
    found = [
        (q.name, _as_dict(t)) for q in key.questions for t in q.tests if words in t.description
    ]
    assert len(found) == 1, f"{exercise}: {len(found)} tests about {words!r}"
    return found[0]


def _error_classes() -> dict[str, ast.ClassDef]:
    """Each exercise master's ModelCallError, as written."""
    found = {}
    for exercise in EXERCISES_WITH_CALLS:
        nb = nbformat.read(str(PROJECT / "masters" / f"{exercise}.ipynb"), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "class ModelCallError" in cell.source:
                tree = ast.parse(cell.source)
                found[exercise] = next(
                    n
                    for n in tree.body
                    if isinstance(n, ast.ClassDef) and n.name == "ModelCallError"
                )
    return found


@functools.cache
def _model_call_error() -> type[Exception]:
    """Exercise 1's ModelCallError, one class for every test (as in one notebook)."""
    namespace: dict[str, Any] = {}
    exec(ast.unparse(_error_classes()["01-api-script"]), namespace)
    error: type[Exception] = namespace["ModelCallError"]
    return error


def test_exercises_1_and_4_share_one_model_call_error() -> None:
    classes = _error_classes()
    assert set(classes) == set(EXERCISES_WITH_CALLS)
    first, fourth = (ast.unparse(classes[name]) for name in EXERCISES_WITH_CALLS)
    assert first == fourth, "exercises 1 and 4 define ModelCallError differently"
    error = _model_call_error()
    kinds = error.KINDS  # type: ignore[attr-defined]
    assert kinds == ("runtime-down", "timeout", "model-not-found", "http-error", "bad-reply")
    busy = error("http-error", "HTTP 503: try again later", status=503)
    assert (busy.kind, busy.status, busy.retryable) == ("http-error", 503, True)  # type: ignore[attr-defined]
    assert not error("http-error", "HTTP 500", status=500).retryable  # type: ignore[attr-defined]
    assert not error("model-not-found", "no model 'x'", status=404).retryable  # type: ignore[attr-defined]
    assert error("timeout", "no answer in 1 s").retryable  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="kind must be one of"):
        error("http_503", "the old spelling")
    with pytest.raises(ValueError, match="status"):
        error("http-error", "no status given")


def test_the_exercises_use_only_the_contracts_kinds() -> None:
    kinds = set(_model_call_error().KINDS)  # type: ignore[attr-defined]
    for exercise in EXERCISES_WITH_CALLS:
        nb = nbformat.read(str(PROJECT / "masters" / f"{exercise}.ipynb"), as_version=4)
        key = assign.load_key(PROJECT / "grading" / "hidden" / f"{exercise}.json")
        sources = [c.source for c in nb.cells if c.cell_type == "code"]
        sources += [t.code for q in key.questions for t in q.tests]
        for source in sources:
            for node in ast.walk(ast.parse(source)):
                raised = (
                    isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ModelCallError"
                )
                if raised and node.args and isinstance(node.args[0], ast.Constant):
                    assert node.args[0].value in kinds, (exercise, node.args[0].value)
                if isinstance(node, ast.Constant) and node.value in OLD_KINDS:
                    raise AssertionError(f"{exercise} still uses the kind {node.value!r}")


OLD_KINDS = {"connection", "model_not_found", "bad_reply", "http_400", "http_500", "http_503"}


def _send(timeout_first: bool) -> Any:
    """An exercise-1 send(); with ``timeout_first=False`` it catches ConnectionError first."""
    error = _model_call_error()

    def send(url: str, body: dict[str, Any], *, timeout: float, stream: bool = False) -> Any:
        first, second = (
            (requests.exceptions.Timeout, requests.exceptions.ConnectionError)
            if timeout_first
            else (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
        )
        kinds = {requests.exceptions.Timeout: "timeout"}
        try:
            return requests.post(url, json=body, timeout=timeout, stream=stream)
        except first as exc:
            raise error(kinds.get(first, "runtime-down"), f"{url}: {exc}") from exc
        except second as exc:
            raise error(kinds.get(second, "runtime-down"), f"{url}: {exc}") from exc

    return send


def test_ex01_a_public_test_catches_connection_error_caught_before_timeout() -> None:
    question, test = _about("01-api-script", "never accepted")
    assert not test["hidden"]
    ns = {"ModelCallError": _model_call_error()}
    right = checks.run_test(test, {**ns, "send": _send(True)}, question=question)
    assert right.status == "passed", right
    wrong = checks.run_test(test, {**ns, "send": _send(False)}, question=question)
    assert wrong.status == "failed" and "ConnectTimeout" in wrong.message, wrong


def test_ex04_a_public_test_catches_connection_error_caught_before_timeout() -> None:
    question, test = _about("04-production", "never accepted")
    assert not test["hidden"]

    def call_model(send: Any) -> Any:
        def call(base_url: str, prompt: str, *, timeout: Any = (30.0, 120.0), **_: Any) -> str:
            return str(send(base_url + "/api/chat", {"prompt": prompt}, timeout=timeout).text)

        return call

    ns = {"ModelCallError": _model_call_error(), "requests": requests, "time": time}
    right = checks.run_test(test, {**ns, "call_model": call_model(_send(True))}, question=question)
    assert right.status == "passed", right
    wrong = checks.run_test(test, {**ns, "call_model": call_model(_send(False))}, question=question)
    assert wrong.status == "failed" and "'runtime-down'" in wrong.message, wrong


FALLBACK = "unavailable"


def _robust_chat(pause: Any) -> Any:
    """A robust_chat() that fails every attempt, pausing ``pause(backoff, n)`` before retry n."""

    def robust_chat(
        base_url: str, prompt: str, *, attempts: int = 4, backoff: float = 1.0, **kw: Any
    ) -> str:
        for n in range(1, attempts):
            kw["sleep"](pause(backoff, n))
        return FALLBACK

    return robust_chat


@pytest.mark.parametrize(
    ("pause", "passes"),
    [
        (lambda backoff, n: backoff * 2 ** (n - 1), True),
        (lambda backoff, n: jitter(exponential(backoff, cap=60), rng=lambda: 1.0)(n), True),
        (lambda backoff, n: jitter(exponential(backoff, cap=60), rng=lambda: 0.0)(n), True),
        (lambda backoff, n: backoff * n, False),  # linear: 1, 2, 3, 4 (times backoff)
        (lambda backoff, n: backoff + n - 1, False),
        (lambda backoff, n: backoff * 1.5 ** (n - 1), False),
    ],
    ids=["doubling", "jitter-up", "jitter-down", "linear", "plus-one", "factor-1.5"],
)
def test_ex04_a_public_test_fails_linear_backoff(pause: Any, passes: bool) -> None:
    question, test = _about("04-production", "pauses double")
    assert not test["hidden"]
    ns = {
        "robust_chat": _robust_chat(pause),
        "FALLBACK": FALLBACK,
        "Path": Path,
        # The test puts a fault proxy in front of this address; no request reaches it here.
        "find_runtime": lambda: types.SimpleNamespace(url="http://127.0.0.1:9"),
    }
    outcome = checks.run_test(test, ns, question=question)
    assert outcome.status == ("passed" if passes else "failed"), outcome


def test_ex01_reply_text_feedback_names_the_reply_shape_that_raised() -> None:
    question, test = _about("01-api-script", "three recorded reply shapes")

    def chat_only(body: dict[str, Any]) -> str:
        return str(body["message"]["content"])

    outcome = checks.run_test(test, {"reply_text": chat_only}, question=question)
    assert outcome.status == "failed"
    assert outcome.message.startswith("Ollama generate reply: reply_text raised KeyError")
