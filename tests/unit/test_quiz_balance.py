"""Every quiz in every lesson: the right answer is not given away by its place, its length or its hint.

The quizzes are read from the notebooks' source (no kernel): each ``quiz(...)`` call's
question, options and answer. Then, for many learners, the options are put in the order that
learner sees, and the positions of the right answers are counted. Every quiz and typed
question has a hint (shown after a first wrong answer) that does not give the answer.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit.course.quiz_hints import HINTS, hint_for
from labkit.course.quizzes import LETTERS, Quiz, _normal, number, option_order

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LEARNERS = [f"learner{i:03d}" for i in range(200)]


@dataclass(frozen=True)
class Authored:
    """One quiz as its author wrote it."""

    where: str
    question: str
    options: tuple[str, ...]
    answer: int  # position in the author's list
    quiz_id: str  # what the notebook's Quiz uses to choose each learner's order


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    """Every call of ``name`` in the lessons' code cells, with where it is."""
    found = []
    for path in LESSONS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            lines = [line for line in source.splitlines() if not line.lstrip().startswith("%")]
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == name:
                    found.append((f"{path.name} cell {index}", node))
    return found


def authored_quizzes() -> list[Authored]:
    """Every quiz(question, options, answer, ...) call with literal arguments in the lessons."""
    found = []
    for where, node in _calls("quiz"):
        question, options, answer = (ast.literal_eval(arg) for arg in node.args[:3])
        # The constructor resolves the answer exactly as the notebook does.
        authored = Quiz(question, options, answer, shuffle=False)
        found.append(Authored(where, question, tuple(options), authored.answer, authored.id))
    return found


QUIZZES = authored_quizzes()
TYPED = _calls("free_text")


def _hint(node: ast.Call) -> str:
    """The hint a lesson's question shows: its own hint= or the one kept for its text."""
    for keyword in node.keywords:
        if keyword.arg == "hint":
            return str(ast.literal_eval(keyword.value))
    return hint_for(ast.literal_eval(node.args[0]))


def test_every_lesson_question_has_its_own_hint() -> None:
    missing = [where for where, node in _calls("quiz") + TYPED if not _hint(node)]
    assert not missing, f"add a hint to labkit/course/quiz_hints.py for: {missing}"
    asked = {_normal(ast.literal_eval(node.args[0])) for _, node in _calls("quiz") + TYPED}
    stale = [question for question in HINTS if _normal(question) not in asked]
    assert not stale, f"hints for questions no lesson asks (reworded?): {stale}"


def test_no_hint_names_the_right_option() -> None:
    named = [
        q.where
        for q in QUIZZES
        if _normal(q.options[q.answer]) in _normal(hint_for(q.question))
        or LETTERS[q.answer] + "." in hint_for(q.question)
    ]
    assert not named, named


def test_no_hint_is_itself_an_accepted_typed_answer() -> None:
    given = []
    for where, node in TYPED:
        hint = _hint(node)
        accepts = eval(compile(ast.Expression(node.args[1]), where, "eval"), {"number": number})
        if callable(accepts):
            try:
                right = bool(accepts(hint))
            except ValueError:  # a checker that reads a number finds none: not accepted
                right = False
        else:
            accepted = [accepts] if isinstance(accepts, str | int | float) else list(accepts)
            words = set(_normal(hint).split())
            right = any(_normal(str(a)) in words | {_normal(hint)} for a in accepted)
        if right:
            given.append(where)
    assert not given, given


def test_the_lessons_have_quizzes() -> None:
    assert len(QUIZZES) >= 20, [q.where for q in QUIZZES]


def shown_position(q: Authored, learner: str) -> int:
    return option_order(q.quiz_id, len(q.options), learner).index(q.answer)


def test_each_learner_sees_the_answers_spread_over_the_positions() -> None:
    for learner in LEARNERS:
        counts = Counter(shown_position(q, learner) for q in QUIZZES)
        # With 3-4 options a quarter to a third land on each place by chance; 60% on one
        # place would make "always pick X" a strategy (as authored, 72% are B).
        assert max(counts.values()) <= 0.6 * len(QUIZZES), (learner, counts)


def test_over_many_learners_every_position_is_equally_likely() -> None:
    counts: Counter[int] = Counter()
    expected: Counter[int] = Counter()
    for q in QUIZZES:
        for learner in LEARNERS:
            counts[shown_position(q, learner)] += 1
        for position in range(len(q.options)):
            expected[position] += len(LEARNERS) / len(q.options)
    for position, wanted in expected.items():
        assert abs(counts[position] - wanted) <= 0.1 * wanted, (LETTERS[position], counts)


def test_the_order_is_the_same_each_time_and_differs_between_learners() -> None:
    q = QUIZZES[0]
    first = [option_order(q.quiz_id, len(q.options), who) for who in LEARNERS[:20]]
    again = [option_order(q.quiz_id, len(q.options), who) for who in LEARNERS[:20]]
    assert first == again and len({tuple(order) for order in first}) > 1


def is_longest(q: Authored) -> bool:
    right = len(q.options[q.answer])
    return all(right > len(text) for i, text in enumerate(q.options) if i != q.answer)


def test_the_right_option_is_not_systematically_the_longest() -> None:
    longest = [q.where for q in QUIZZES if is_longest(q)]
    # By chance a quarter to a third of the right options would be the longest.
    assert len(longest) <= 0.4 * len(QUIZZES), longest


def test_the_right_option_is_not_much_longer_than_the_others_on_average() -> None:
    ratios = []
    for q in QUIZZES:
        others = [len(text) for i, text in enumerate(q.options) if i != q.answer]
        ratios.append(len(q.options[q.answer]) / (sum(others) / len(others)))
    assert sum(ratios) / len(ratios) <= 1.25, sorted(
        zip(ratios, [q.where for q in QUIZZES], strict=True)
    )


def test_a_learner_name_from_the_environment_chooses_the_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = QUIZZES[0]
    orders = set()
    for name in LEARNERS[:10]:
        monkeypatch.setenv("LABKIT_LEARNER", name)
        shown = Quiz(q.question, q.options, q.answer)
        assert shown.options[shown.answer] == q.options[q.answer]
        assert shown.check(q.options[q.answer]).correct
        assert shown.check(LETTERS[shown.answer]).correct
        orders.add(tuple(shown.options))
    assert len(orders) > 1


def histogram(shuffled: bool) -> dict[str, int]:
    """Right-answer positions over all quizzes: as authored, or as learner000 sees them."""
    counts = Counter(shown_position(q, LEARNERS[0]) if shuffled else q.answer for q in QUIZZES)
    return {LETTERS[i]: counts[i] for i in sorted(counts)}


if __name__ == "__main__":  # figures for the course notes
    print(f"{len(QUIZZES)} quizzes in {len(LESSONS)} lessons")
    print("right answer's position as authored:", histogram(False))
    print("as one learner sees them:           ", histogram(True))
    print("right option is the longest:", sum(map(is_longest, QUIZZES)))
