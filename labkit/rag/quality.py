"""Answer-level evaluation: is the answer right, grounded in the passage that holds the fact,
and does the system refuse what the documents do not say?

Retrieval metrics (recall@k, MRR) say whether the right passage reached the prompt; these say
what the chat model made of it, for the runtime in use::

    report = grade_answers(index, client, questions[:20])
    print(report)          # a small table: correctness, citation rate, groundedness, refusals

- **correct**: every number in the reference answer (amounts, days, dates) appears in the
  answer; questions whose reference has no number are not scored for correctness, because
  judging free wording needs a person or a stronger model.
- **cited**: the answer cites at least one passage.
- **grounded**: it cites, and every passage it cites comes from a section that holds the fact
  (one of the question's sources).
- **refusals**: unanswerable questions answered "Not in the documents." (by the gate or by the
  model), and answerable ones wrongly refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from labkit.rag.answer import Answer, Chatter, answer
from labkit.rag.evaluation import Question, is_hit
from labkit.rag.gate import Gate
from labkit.rag.index import Index

__all__ = ["AnswerCheck", "AnswerReport", "check_answer", "grade_answers", "numbers"]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers(text: str) -> set[str]:
    """The numbers in ``text``, without thousands separators: "1,200 EUR" -> {"1200"}."""
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


@dataclass(frozen=True)
class AnswerCheck:
    """How one answer fared."""

    question: Question
    answer: Answer
    refused: bool
    correct: bool | None  # None: not checkable (no number in the reference, or refused)
    cited: bool
    grounded: bool


def check_answer(question: Question, result: Answer) -> AnswerCheck:
    """Grade one answer against the question's reference answer and sources."""
    refused = result.refused
    expected = numbers(question.answer)
    correct = None
    if question.answerable and not refused and expected:
        correct = expected <= numbers(result.text)
    cited = bool(result.sources) and not refused
    grounded = cited and all(
        any(is_hit(h.chunk, s) for s in question.sources) for h in result.sources
    )
    return AnswerCheck(question, result, refused, correct, cited, grounded)


@dataclass
class AnswerReport:
    """Answer-level figures over a set of questions (see the module's docstring)."""

    checks: list[AnswerCheck] = field(default_factory=list)
    model: str = ""

    def _share(self, hits: Sequence[bool]) -> tuple[int, int]:
        return sum(hits), len(hits)

    def figures(self) -> dict[str, tuple[int, int]]:
        """Each figure as (count, out of)."""
        answerable = [c for c in self.checks if c.question.answerable]
        answered = [c for c in answerable if not c.refused]
        checkable = [c for c in answered if c.correct is not None]
        return {
            "correct": self._share([bool(c.correct) for c in checkable]),
            "cited": self._share([c.cited for c in answered]),
            "grounded": self._share([c.grounded for c in answered]),
            "refused unanswerable": self._share(
                [c.refused for c in self.checks if not c.question.answerable]
            ),
            "refused answerable (wrongly)": self._share([c.refused for c in answerable]),
        }

    def __str__(self) -> str:
        lines = [f"Answer-level results ({self.model or 'the runtime in use'}):"]
        notes = {
            "correct": "answers whose reference holds a number: all its numbers given",
            "cited": "answered questions that cite at least one passage",
            "grounded": "answered questions citing only passages that hold the fact",
            "refused unanswerable": "questions the handbook does not answer",
            "refused answerable (wrongly)": "questions it does answer",
        }
        for name, (count, total) in self.figures().items():
            share = f"{count / total:5.0%}" if total else "    -"
            lines.append(f"  {name:<29} {count:>3}/{total:<3} {share}  {notes[name]}")
        return "\n".join(lines)


def grade_answers(
    index: Index,
    client: Chatter,
    questions: Sequence[Question],
    *,
    k: int = 3,
    gate: Gate | None = None,
    max_tokens: int = 120,
    progress: bool = True,
    **options: Any,
) -> AnswerReport:
    """Answer every question with ``answer`` (temperature 0, fixed seed) and grade it."""
    report = AnswerReport(model=str(getattr(client, "model", "") or ""))
    for question in tqdm(questions, desc="answering", unit="question", disable=not progress):
        result = answer(
            question.question, index, client, k=k, gate=gate, max_tokens=max_tokens, **options
        )
        report.checks.append(check_answer(question, result))
    return report
