"""labkit.rag.evaluation: recall@k and MRR, the threshold calibration, the sweep and its plot.

The corpus tests build the HR handbook's index once (module fixture) with the runtime's
embedding model; the recall goal is only checked with the real all-MiniLM-L6-v2 (384 dims).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labkit import Client, discovery, rag
from labkit.rag import Chunk, EmbeddingCache, Hit, Index, RagError, answer
from labkit.rag.evaluation import (
    Question,
    Source,
    calibrate_gate,
    calibrate_threshold,
    evaluate,
    evaluate_by_type,
    is_hit,
    load_eval_set,
    misses,
    plot_sweep,
    refusals,
    reranking_holds,
    score_hits,
    split,
    sweep,
)
from labkit.rag.gate import HybridGate, ScoreGate

ROOT = Path(__file__).resolve().parents[2]
HANDBOOK = ROOT / "data" / "hr-handbook"
EVAL_SET = ROOT / "data" / "hr-eval.jsonl"
MINILM_DIM = 384
# Minutes of embedding (the whole handbook, sweeps, the bench): not for `./lab test --fast`.
pytestmark = pytest.mark.slow


def chunk(doc: str, *headings: str) -> Chunk:
    return Chunk(f"{doc}#0", doc, headings[0] if headings else doc, headings, 0, 1, "text", 1)


def hits(*chunks: Chunk) -> list[Hit]:
    return [Hit(c, 0.9 - 0.1 * rank, rank) for rank, c in enumerate(chunks, start=1)]


# --- the evaluation set --------------------------------------------------------------------------


def test_the_course_eval_set_loads_and_points_at_real_sections() -> None:
    everything = load_eval_set(EVAL_SET)
    assert len(everything) == 144 and len({q.id for q in everything}) == 144
    questions = split(everything, "calibration")
    assert len(questions) == 84
    types = {t: sum(q.type == t for q in questions) for t in ("single", "multi", "superseded")}
    assert types == {"single": 54, "multi": 14, "superseded": 6}
    assert sum(not q.answerable for q in questions) == 10
    held = split(everything, "holdout")
    assert sum(q.answerable for q in held) == 50 and sum(not q.answerable for q in held) == 10
    assert len({s.doc for q in held for s in q.sources}) >= 28  # 30 of the 33 current documents
    assert not {q.question for q in held} & {q.question for q in questions}
    docs = {d.name: d for d in rag.load_documents(HANDBOOK)}
    assert not any(docs[s.doc].superseded_by for q in everything for s in q.sources)
    for q in everything:
        for source in q.sources:  # every source names a document and one of its headings
            headings = {h for s in docs[source.doc].sections for h in s.headings[1:]}
            assert source.section in headings, (q.id, source)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2"),
        ('{"id": "x", "question": "?", "sources": [], "type": "tricky"}', "unknown type"),
        (
            '{"id": "x", "question": "?", "sources": [], "type": "unanswerable", "split": "t"}',
            "split",
        ),
        ('{"id": "x", "question": "?", "sources": [], "type": "single"}', "needs sources"),
        ('{"id": "x", "sources": [], "type": "single"}', "line 2"),
        ('{"id": "x", "question": "?", "sources": [{"section": "A"}], "type": "single"}', "line 2"),
    ],
)
def test_malformed_eval_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    good = {"id": "q1", "question": "Q?", "answer": "A", "sources": [], "type": "unanswerable"}
    file = tmp_path / "eval.jsonl"
    file.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(RagError, match=message):
        load_eval_set(file)


def test_missing_or_empty_eval_sets(tmp_path: Path) -> None:
    with pytest.raises(RagError, match="Cannot read"):
        load_eval_set(tmp_path / "nowhere.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(RagError, match="no questions"):
        load_eval_set(tmp_path / "empty.jsonl")


# --- hits and scores -----------------------------------------------------------------------------


def test_a_hit_needs_the_document_and_the_named_section() -> None:
    carry = chunk("leave-annual.md", "Annual Leave", "Carry-over")
    deeper = chunk("leave-annual.md", "Annual Leave", "Carry-over", "Exceptions")
    assert is_hit(carry, Source("leave-annual.md", "Carry-over"))
    assert is_hit(carry, Source("leave-annual.md", "  carry-OVER "))  # case and spaces
    assert is_hit(carry, Source("leave-annual.md"))  # no section named: the document is enough
    assert is_hit(carry, Source("leave-annual", "Carry-over"))  # extension left out
    assert is_hit(deeper, Source("leave-annual.md", "Carry-over"))  # a ### inside the ##
    assert not is_hit(carry, Source("leave-annual.md", "Entitlement"))
    assert not is_hit(carry, Source("leave-annual-2022.md", "Carry-over"))
    assert not is_hit(
        chunk("leave-annual.md", "Annual Leave"), Source("leave-annual.md", "Annual Leave")
    )


def test_recall_and_mrr_by_hand() -> None:
    a, b, c = Source("a.md", "A"), Source("b.md", "B"), Source("c.md", "C")
    ca, cb, cc, cx = (
        chunk("a.md", "T", "A"),
        chunk("b.md", "T", "B"),
        chunk("c.md", "T", "C"),
        chunk("x.md"),
    )
    questions = [
        Question("1", "?", "", (a,), "single"),  # found at rank 1
        Question("2", "?", "", (b, c), "single"),  # either source: c found at rank 3
        Question("3", "?", "", (a, b), "multi"),  # a at 2, b at 5: all sources by k=5
        Question("4", "?", "", (c,), "superseded"),  # not found
        Question("5", "?", "", (), "unanswerable"),  # not scored
    ]
    results = [
        hits(ca, cx, cx, cx, cx),
        hits(cx, cx, cc, cx, cx),
        hits(cx, ca, cx, cx, cb),
        hits(cx, cx, cx, cx, cx),
        hits(ca, cb, cc, cx, cx),
    ]
    s = score_hits(questions, results, ks=(1, 3, 5))
    assert s["questions"] == 4
    assert s["recall@1"] == 1 / 4 and s["recall@3"] == 2 / 4 and s["recall@5"] == 3 / 4
    assert s["recall_any@3"] == 3 / 4 and s["recall_all@3"] == 1 / 4  # q2 needs b and c for "all"
    assert s["recall_all@5"] == 2 / 4
    assert s["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 0) / 4)
    with pytest.raises(RagError, match="No answerable"):
        score_hits(questions[4:], results[4:])


def test_plot_sweep_draws_on_the_given_axes() -> None:
    rows = [
        {"size": s, "overlap": o, "k": k, "recall": 0.5 + s / 2000 + k / 20, "mrr": 0.7}
        for s in (200, 400, 800)
        for o in (0.0, 0.15)
        for k in (1, 5)
    ]
    figures = plt.get_fignums()
    _, ax = plt.subplots()
    assert plot_sweep(rows, ax=ax) is ax
    assert len(ax.get_lines()) == 4  # 2 values of k x 2 overlaps
    assert np.asarray(ax.get_lines()[0].get_xdata(), dtype=float).tolist() == [200, 400, 800]
    assert ax.get_xlabel() == "chunk size (tokens)" and ax.get_legend() is not None
    new = plot_sweep(rows, metric="mrr")
    assert new is not ax and new.get_ylabel() == "mrr"
    assert len(plt.get_fignums()) == len(figures) + 2  # drawn, never shown or closed
    plt.close("all")


# --- the HR handbook, live ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(rt: discovery.Runtime) -> Iterator[Client]:
    with Client(rt.url, dialect=rt.dialect, model=rt.chat_model, embed_model=rt.embed_model) as c:
        yield c


@pytest.fixture(scope="module")
def cache() -> EmbeddingCache:
    return EmbeddingCache()


@pytest.fixture(scope="module")
def questions() -> list[Question]:
    return load_eval_set(EVAL_SET)


@pytest.fixture(scope="module")
def docs() -> list[rag.Document]:
    return rag.load_documents(HANDBOOK)


@pytest.fixture(scope="module")
def handbook(docs: list[rag.Document], client: Client, cache: EmbeddingCache) -> Index:
    """The handbook indexed with the default settings (built once for this module)."""
    return rag.build_index(rag.chunk_documents(docs), client, cache=cache, progress=False)


@pytest.fixture(scope="module")
def minilm(handbook: Index) -> Index:
    if handbook.dim != MINILM_DIM:
        pytest.skip(f"the runtime's embedding model has {handbook.dim} dims, not MiniLM's 384")
    return handbook


@pytest.fixture(scope="module")
def calibration(questions: list[Question]) -> list[Question]:
    return split(questions, "calibration")


@pytest.fixture(scope="module")
def holdout(questions: list[Question]) -> list[Question]:
    return split(questions, "holdout")


def test_default_settings_meet_the_recall_goal(minilm: Index, calibration: list[Question]) -> None:
    scores = evaluate(minilm, calibration)
    assert scores["questions"] == 74
    assert scores["recall@5"] >= 0.88, scores
    assert scores["recall@1"] <= scores["recall@3"] <= scores["recall@5"]
    assert scores["recall_all@5"] <= scores["recall@5"] <= scores["recall_any@5"]
    assert 0 < scores["mrr"] <= 1
    by_type = evaluate_by_type(minilm, calibration)
    assert set(by_type) == {"single", "multi", "superseded"}
    assert by_type["multi"]["recall@5"] == by_type["multi"]["recall_all@5"]
    assert by_type["single"]["recall@5"] == by_type["single"]["recall_any@5"]


def test_held_out_questions_are_harder_but_retrieval_transfers(
    minilm: Index, calibration: list[Question], holdout: list[Question]
) -> None:
    held = evaluate(minilm, holdout)
    assert held["questions"] == 50
    assert held["recall@5"] >= 0.80, held  # documented: 0.84 (0.91 on the calibration part)
    assert held["mrr"] < evaluate(minilm, calibration)["mrr"]


def test_misses_explain_the_failures(minilm: Index, calibration: list[Question]) -> None:
    found = misses(minilm, calibration, k=5)
    assert len(found) == round(74 * (1 - evaluate(minilm, calibration)["recall_all@5"]))
    for miss in found:
        assert None in miss["ranks"] and len(miss["got"]) == 5 and miss["wanted"]


def test_the_documented_gates_match_the_calibration(
    minilm: Index, calibration: list[Question]
) -> None:
    plain = calibrate_threshold(minilm, calibration)
    assert len(plain.answerable_scores) == 74 and len(plain.unanswerable_scores) == 10
    assert abs(plain.threshold - rag.MIN_SCORE) <= 0.02, plain.threshold
    chosen = calibrate_gate(minilm, calibration)
    assert chosen.gate == HybridGate(), chosen.gate  # the defaults are what calibration picks
    assert chosen.accuracy > plain.accuracy  # it wins where it was chosen...


def test_the_gate_is_reported_on_questions_it_was_not_tuned_on(
    minilm: Index, calibration: list[Question], holdout: list[Question]
) -> None:
    tuned = refusals(minilm, calibration, HybridGate())
    held = refusals(minilm, holdout, HybridGate())
    assert (tuned["unanswerable"], tuned["answerable"]) == (10, 74)
    assert (held["unanswerable"], held["answerable"]) == (10, 50)
    # The figures documented in labkit/rag/gate.py (8/10 and 3/74; held out 3/10 and 10/50).
    assert tuned["refused_unanswerable"] >= 7 and tuned["refused_answerable"] <= 4, tuned
    assert held["refused_answerable"] <= 12 and held["refused_unanswerable"] >= 2, held
    cosine = refusals(minilm, holdout, ScoreGate())
    assert held["precision"] >= cosine["precision"] - 0.02, (held, cosine)  # ...and holds out


def test_sentence_reranking_lifts_recall_at_5_on_both_parts(
    minilm: Index, calibration: list[Question], holdout: list[Question]
) -> None:
    reranker = rag.SentenceReranker()  # weight chosen on the calibration part
    for part, documented in ((calibration, 0.95), (holdout, 0.88)):  # 0.96 and 0.90 in rerank.py
        plain = evaluate(minilm, part)
        reranked = evaluate(minilm, part, reranker=reranker)
        assert reranked["recall@5"] >= documented, reranked
        assert reranked["recall@5"] > plain["recall@5"], (plain, reranked)
    # The rule by which answer() reranks by default, judged on the held-out part.
    assert reranking_holds(plain, reranked), (plain, reranked)
    # The weight is what calibration picks among its neighbours: recall@5 first, then MRR.
    grid = {w: rag.SentenceReranker(w) for w in (0.2, 0.3, 0.4, 0.5)}
    for other in grid.values():
        other._vectors = reranker._vectors  # the same sentences: embedded once for the grid
    tuned = {w: evaluate(minilm, calibration, reranker=r) for w, r in grid.items()}
    best = max(tuned, key=lambda w: (round(tuned[w]["recall@5"], 6), tuned[w]["mrr"]))
    assert best == rag.rerank.SENTENCE_WEIGHT, {
        w: (t["recall@5"], t["mrr"]) for w, t in tuned.items()
    }


def test_answer_gives_the_reranked_passages_by_default(minilm: Index, client: Client) -> None:
    question = "Will the firm chip in for my yoga classes?"
    # The default gate wrongly refuses this colloquial question (see labkit/rag/gate.py).
    everything = rag.ScoreGate(0)
    result = answer(question, minilm, client, k=3, max_tokens=40, gate=everything)
    assert result.found
    reranker = rag.rerank.shared_reranker(minilm)  # the one answer() used: sentences embedded
    wanted = [h.chunk.id for h in reranker.search(minilm, question, 3)]
    assert [h.chunk.id for h in result.passages] == wanted
    plain = [h.chunk.id for h in minilm.search(question, 3)]
    assert wanted != plain, "reranking changed the passages: the test means something"
    far = "What is the boiling point of liquid nitrogen in kelvin?"
    assert not answer(far, minilm, client).found  # the gate still guards


def test_reranked_search_keeps_the_current_policy_first(minilm: Index) -> None:
    reranker = rag.SentenceReranker()
    for question in (
        "Client entertainment is reimbursed up to how much per person?",
        "How many unused holiday days can I take over into next year?",
    ):
        docs = [h.chunk.doc for h in reranker.search(minilm, question, 5)]
        for old, new in (
            ("expenses-2023.md", "expenses.md"),
            ("leave-annual-2022.md", "leave-annual.md"),
        ):
            if old in docs and new in docs:
                assert docs.index(new) < docs.index(old), (question, docs)


def test_current_policy_outranks_its_old_version_on_close_wording(minilm: Index) -> None:
    # Worded like the 2023 expenses policy ("60 EUR per person"), still the current one first.
    for question in (
        "Client entertainment is reimbursed up to how much per person?",
        "What are the hotel limits per night, excluding breakfast?",
        "A receipt is required for every expense above what amount?",
    ):
        hits = minilm.search(question, k=5)
        docs = [h.chunk.doc for h in hits]
        if "expenses-2023.md" in docs and "expenses.md" in docs:
            assert docs.index("expenses.md") < docs.index("expenses-2023.md"), (question, docs)
        plain = [h.chunk.doc for h in minilm.search(question, k=5, superseded_penalty=0)]
        assert "expenses-2023.md" in plain  # the old version is close: the test means something


def test_sweep_rows_agree_with_evaluate(
    docs: list[rag.Document],
    questions: list[Question],
    client: Client,
    cache: EmbeddingCache,
    handbook: Index,
) -> None:
    # The cache already holds the default chunks' vectors: only new chunks are embedded.
    rows = sweep(
        docs, questions, client, sizes=(250, 500), overlaps=(0.15,), ks=(1, 5), cache=cache
    )
    assert [(r["size"], r["k"]) for r in rows] == [(250, 1), (250, 5), (500, 1), (500, 5)]
    assert int(rag.CHUNK_SIZE * 0.15) == rag.CHUNK_OVERLAP  # so row 250 is the default index
    default = evaluate(handbook, questions, ks=(1, 5))
    assert rows[1]["recall"] == default["recall@5"] and rows[0]["mrr"] == default["mrr"]
    assert rows[0]["chunks"] == len(handbook) and rows[2]["chunks"] <= rows[0]["chunks"]
    for row in rows:
        assert 0 <= row["recall_all"] <= row["recall"] <= row["recall_any"] <= 1


def test_calibration_needs_both_kinds(handbook: Index, questions: list[Question]) -> None:
    with pytest.raises(RagError, match="both"):
        calibrate_threshold(handbook, [q for q in questions if q.answerable])


# bench/rag_eval.py builds its own index in a process of its own: it needs none of this
# module's fixtures, and in a class (a scope of its own under --dist loadscope) it runs beside
# them on the other worker.
class TestBench:
    """The evaluation bench, run as a learner would run it."""

    def test_prints_both_parts_and_fails_while_a_goal_is_missed(self, client: Client) -> None:
        dim = client.embed("a").shape[1]
        if dim != MINILM_DIM:
            pytest.skip(f"the runtime's embedding model has {dim} dims, not MiniLM's 384")
        _run_the_bench()


def _run_the_bench() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rag_eval.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.splitlines()
    for name in ("plain", "sentence rerank", "cosine >=", "HybridGate (default)"):
        rows = [line.split() for line in lines if line.startswith(name)]
        parts = {word for row in rows for word in row if word in ("calibration", "holdout")}
        assert len(rows) == 2 and parts == {"calibration", "holdout"}, (
            name,
            done.stdout,
            done.stderr,
        )
    verdict = done.stdout.split("Held-out goals:")[1]
    assert done.returncode == (1 if "✘" in verdict else 0), done.stdout
    goal_rows = [line for line in lines if "  goal " in line]
    assert len(goal_rows) == 4 and all("holdout" in line for line in goal_rows)
