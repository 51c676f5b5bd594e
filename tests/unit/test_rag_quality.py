"""Answer-level grading and reading the model's JSON reply: no runtime needed."""

from __future__ import annotations

import json

from labkit.rag import NOT_FOUND, Answer, Chunk, Hit, answer_schema
from labkit.rag.answer import _read_reply, answer_chars
from labkit.rag.evaluation import Question, Source
from labkit.rag.quality import AnswerReport, check_answer, numbers


def hit(doc: str, section: str, rank: int = 1) -> Hit:
    chunk = Chunk(f"{doc}#0", doc, "T", ("T", section), 0, 1, "text", 1)
    return Hit(chunk, 0.5, rank)


LEAVE = Question(
    "x1",
    "How much leave?",
    "25 working days; up to 5 carried to 31 March.",
    (Source("leave-annual.md", "Entitlement"),),
    "single",
)
UNKNOWN = Question("x2", "Guest Wi-Fi password?", "not in the documents", (), "unanswerable")


def test_numbers_ignore_thousands_separators() -> None:
    assert numbers("1,200 EUR by 31 March, 2.5 days") == {"1200", "31", "2.5"}
    assert numbers("no figures") == set()


def test_a_right_grounded_answer() -> None:
    right = hit("leave-annual.md", "Entitlement")
    result = Answer("You get 25 days, 5 carry over until 31 March.", [right], [right], True)
    check = check_answer(LEAVE, result)
    assert (check.correct, check.cited, check.grounded, check.refused) == (True, True, True, False)


def test_a_wrong_figure_or_a_wrong_passage_is_caught() -> None:
    right, wrong = hit("leave-annual.md", "Entitlement"), hit("leave-annual-2022.md", "Entitlement")
    check = check_answer(LEAVE, Answer("You get 22 days [1].", [wrong], [right, wrong], True))
    assert check.correct is False and check.cited and not check.grounded
    mixed = check_answer(LEAVE, Answer("25 days, 5, 31", [right, wrong], [right, wrong], True))
    assert mixed.correct and not mixed.grounded  # every citation must hold the fact
    bare = check_answer(LEAVE, Answer("25 days, 5, 31 March", [], [right], True))
    assert bare.correct and not bare.cited and not bare.grounded


def test_refusals_count_for_unanswerable_and_against_answerable() -> None:
    gate = Answer(NOT_FOUND, [], [], found=False)
    model = Answer("Not in the documents.", [], [hit("a.md", "S")], found=True)
    report = AnswerReport(
        [check_answer(UNKNOWN, gate), check_answer(LEAVE, model), check_answer(UNKNOWN, model)]
    )
    figures = report.figures()
    assert figures["refused unanswerable"] == (2, 2)
    assert figures["refused answerable (wrongly)"] == (1, 1)
    assert figures["correct"] == (0, 0) and figures["cited"] == (0, 0)
    assert "refused unanswerable" in str(report) and "2/2" in str(report)


def test_the_schema_asks_for_citations_first_and_at_least_one() -> None:
    schema = answer_schema(3)
    assert list(schema["properties"]) == ["citations", "answer"]
    assert schema["properties"]["citations"]["items"]["enum"] == [1, 2, 3]
    assert schema["properties"]["citations"]["minItems"] == 1


def test_reading_replies_structured_or_not() -> None:
    passages = [hit("a.md", "S", 1), hit("b.md", "T", 2)]
    text, cited, structured = _read_reply(
        json.dumps({"citations": [2, 2, 7, "1"], "answer": " 25 days "}), passages
    )
    assert (text, cited, structured) == ("25 days", [passages[1]], True)
    # A runtime that ignores the schema: [n] in the text still counts.
    text, cited, structured = _read_reply("It is 25 days [1].", passages)
    assert cited == [passages[0]] and not structured
    text, cited, structured = _read_reply('{"answer": 5}', passages)  # wrong shape: plain text
    assert not structured and cited == []


def test_the_answer_bound_leaves_room_to_close_the_json() -> None:
    # ~30 tokens of braces and citations, then 3 characters per token left, 20 to 600.
    assert [answer_chars(n) for n in (10, 40, 80, 200, 1000)] == [20, 30, 150, 510, 600]
    assert answer_schema(3, answer_chars(80))["properties"]["answer"]["maxLength"] == 150
    assert answer_schema(3)["properties"]["answer"]["maxLength"] == 600
