"""SentenceReranker's arithmetic and bookkeeping, with a word-counting embedder in the process.

The embedder here counts words into a vector, so similarities are predictable: the tests can
build a chunk whose one sentence answers a question while the chunk as a whole says little.
How reranking does on real questions with the real model is in tests/live/test_rag_eval.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest

from labkit import rag
from labkit.errors import InvalidInput, RagError
from labkit.rag import Chunk, Index, SentenceReranker
from labkit.rag.chunking import sentences

DIM = 256


class WordCounter:
    """An embedder that counts each word into one of DIM slots; it remembers what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def embed(
        self, texts: Sequence[str], *, model: str | None = None, batch_size: int = 32
    ) -> list[list[float]]:
        self.sent.extend(texts)
        rows = []
        for text in texts:
            row = np.zeros(DIM)
            for word in re.findall(r"[a-z]+", text.lower()):
                row[sum(map(ord, word)) * 31 % DIM] += 1.0
            rows.append(row.tolist())
        return rows


def make_chunk(n: int, text: str, doc: str = "d.md", superseded_by: str = "") -> Chunk:
    return Chunk(f"{doc}#{n}", doc, "D", ("D", f"S{n}"), 0, len(text), text, 9, superseded_by)


def make_index(texts: list[str], docs: list[str] | None = None) -> tuple[Index, WordCounter]:
    embedder = WordCounter()
    names = docs or ["d.md"] * len(texts)
    chunks = [
        make_chunk(i, t, d, "new.md" if d == "old.md" else "")
        for i, (t, d) in enumerate(zip(texts, names, strict=True))
    ]
    index = rag.build_index(chunks, embedder, model="words", progress=False)
    embedder.sent.clear()
    return index, embedder


YOGA = "yoga classes paid"
DILUTED = (  # one sentence answers; the rest of the chunk is about other things
    "The allowance covers yoga classes paid monthly. Bicycles need a lease contract signed. "
    "Laptops arrive on the first morning. Parking spaces are shared between teams. "
    "Badges open every office door."
)
TOPICAL = "Classes and courses. Training classes, language classes and courses for everyone."


def test_sentences_drop_markdown_marks_and_fragments() -> None:
    text = (
        "## Heading here\n- Bring your badge every day.\n| L1 | 25 days | full time |\nOk.\nA b c."
    )
    assert sentences(text) == [
        "Bring your badge every day.",
        "L1 | 25 days | full time",
        "A b c.",
    ]
    assert sentences(text, min_words=2)[0] == "Heading here"
    assert sentences(text, min_words=4) == [
        "Bring your badge every day.",
        "L1 | 25 days | full time",
    ]
    assert sentences("") == [] and sentences("Yes. No.") == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sentence_weight": 1.5}, "between 0 and 1"),
        ({"sentence_weight": -0.1}, "between 0 and 1"),
        ({"candidates": 0}, "at least 1"),
    ],
)
def test_bad_settings_are_invalid_input(settings: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SentenceReranker(**settings)  # type: ignore[arg-type]


def test_k_below_one_and_an_index_without_client_are_refused() -> None:
    index, _ = make_index([DILUTED, TOPICAL])
    with pytest.raises(InvalidInput, match="k must be at least 1"):
        SentenceReranker().search(index, YOGA, k=0)
    index.client = None
    with pytest.raises(RagError, match="no client"):
        SentenceReranker().search(index, YOGA)


def test_the_best_sentence_lifts_a_diluted_chunk() -> None:
    index, _ = make_index([DILUTED, TOPICAL])
    assert [h.chunk.id for h in index.search(YOGA, 2)] == ["d.md#1", "d.md#0"]
    reranked = SentenceReranker(sentence_weight=0.5).search(index, YOGA, 2)
    assert [h.chunk.id for h in reranked] == ["d.md#0", "d.md#1"]
    assert [h.rank for h in reranked] == [1, 2] and reranked[0].score > reranked[1].score


def test_weight_zero_is_plain_search() -> None:
    index, _ = make_index([DILUTED, TOPICAL, "Yoga at lunch. Classes start at noon.", "Paid."])
    plain = index.search(YOGA, 4)
    reranked = SentenceReranker(sentence_weight=0.0).search(index, YOGA, 4)
    assert [(h.chunk.id, round(h.score, 6)) for h in reranked] == [
        (h.chunk.id, round(h.score, 6)) for h in plain
    ]


def test_sentences_are_embedded_once_per_reranker() -> None:
    index, embedder = make_index([DILUTED, TOPICAL])
    reranker = SentenceReranker()
    reranker.search(index, YOGA, 2)
    first = list(embedder.sent)
    assert YOGA in first and "Badges open every office door." in first
    embedder.sent.clear()
    reranker.search_many(index, [YOGA, "bicycles"], 2)
    assert embedder.sent == [YOGA, "bicycles"]  # only the questions: the sentences are known


def test_a_chunk_without_sentences_keeps_its_plain_score() -> None:
    index, _ = make_index(["Yoga classes", DILUTED])  # two words: no sentence to score
    plain = {h.chunk.id: h.score for h in index.search(YOGA, 2)}
    reranked = {h.chunk.id: h.score for h in SentenceReranker(0.4).search(index, YOGA, 2)}
    assert reranked["d.md#0"] == pytest.approx(plain["d.md#0"])
    assert reranked["d.md#1"] != pytest.approx(plain["d.md#1"])


def test_a_current_policy_still_outranks_its_old_version() -> None:
    old = "Yoga classes paid up to 100 EUR. Yoga classes paid monthly."
    new = "The allowance covers yoga classes, 300 EUR a year. Claims go through Compass."
    index, _ = make_index([old, new], docs=["old.md", "new.md"])
    plain = index.search(YOGA, 2, superseded_penalty=0)
    assert plain[0].chunk.doc == "old.md"  # closer wording, as the 2023 expenses policy has
    reranked = SentenceReranker().search(index, YOGA, 2)
    assert [h.chunk.doc for h in reranked] == ["new.md", "old.md"]
    raw = SentenceReranker().search(index, YOGA, 2, superseded_penalty=0)
    assert raw[0].chunk.doc == "old.md"  # the penalty, not the blend, puts the current first


class JsonChatter(WordCounter):
    """The word-counting embedder that also chats: it cites passage 1 and remembers prompts."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def chat(self, messages: list[dict[str, str]], **options: object) -> SimpleNamespace:
        self.prompts.append(messages[-1]["content"])
        return SimpleNamespace(text='{"citations": [1], "answer": "Yes."}')


def test_answer_reranks_by_default_with_the_index_s_own_reranker() -> None:
    index, _ = make_index([DILUTED, TOPICAL])
    client = JsonChatter()
    index.client = client
    everything = rag.ScoreGate(0)
    reranked = rag.answer(YOGA, index, client, k=2, gate=everything, context=2048)
    plain = rag.answer(YOGA, index, client, k=2, gate=everything, context=2048, rerank=False)
    assert [h.chunk.id for h in reranked.passages] == ["d.md#0", "d.md#1"]
    assert [h.chunk.id for h in plain.passages] == ["d.md#1", "d.md#0"]  # the test means something
    assert client.prompts[0].index("yoga classes paid monthly") < client.prompts[0].index(TOPICAL)
    shared = rag.rerank.shared_reranker(index)
    assert shared is rag.rerank.shared_reranker(index) and "d.md#0" in shared._vectors
    other, _ = make_index([DILUTED, TOPICAL])
    assert rag.rerank.shared_reranker(other) is not shared  # one per index


def test_the_gate_decides_before_any_sentence_is_embedded() -> None:
    index, embedder = make_index([DILUTED, TOPICAL])
    result = rag.answer(YOGA, index, JsonChatter(), gate=rag.ScoreGate(2.0), context=2048)
    assert not result.found and embedder.sent == [YOGA]  # the question only: no reranking
