"""The exercises' own tests catch wrong answers that look right (run in-process, no runtime)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import nbformat
import pytest

from labkit.course import checks
from labkit.grader import assign

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
