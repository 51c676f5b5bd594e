"""Retrieval and refusal quality, on the part they were tuned on and on the held-out part.

Run: .venv/bin/python bench/rag_eval.py [--docs data/hr-handbook] [--eval data/hr-eval.jsonl]

Needs a running runtime with an embedding model (``labkit up``). Prints two tables, the
calibration part and the held-out part side by side:

1. Retrieval: recall@1, recall@5 and MRR for plain search and for ``SentenceReranker``, and
   the seconds each took (the reranker's first pass embeds the candidates' sentences).
2. "Not in the documents": for the cosine gate calibrated on the calibration part and for
   ``HybridGate``, how many unanswerable questions are refused and how many answerable ones
   are wrongly refused.

The held-out goals (recall@5 >= 0.92, >= 8/10 refused, <= 3/50 wrongly refused) are printed
beside the figures with a ✔ or ✘, and so is the rule by which ``answer`` reranks by default
(held-out recall@5 at least plain search's, recall@1 down 0.02 at most); the script exits 1
when one of them fails, so a run says plainly whether they hold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labkit import Client, rag
from labkit.rag.evaluation import (
    RECALL1_TOLERANCE,
    Question,
    calibrate_threshold,
    load_eval_set,
    refusals,
    reranking_holds,
    split,
)

ROOT = Path(__file__).resolve().parent.parent
RECALL_GOAL = 0.92
REFUSED_GOAL = 8  # of the held-out part's 10 unanswerable questions, at least
WRONG_GOAL = 3  # of its 50 answerable questions, at most


def mark(ok: bool) -> str:
    return "✔" if ok else "✘"


def retrieval(index: rag.Index, parts: dict[str, list[Question]]) -> tuple[bool, bool]:
    """Plain search against reranking, on both parts.

    Returns (held-out recall@5 meets the goal, reranking holds as answer()'s default).
    """
    print(f"\n## Retrieval ({len(index)} chunks)")
    print(f"{'search':<18} {'part':<12} {'recall@1':>9} {'recall@5':>9} {'MRR':>6} {'s':>6}")
    reranker = rag.SentenceReranker()
    met = False
    held: dict[str, dict[str, float]] = {}
    for name, chosen in (("plain", None), ("sentence rerank", reranker)):
        for part, questions in parts.items():
            start = time.perf_counter()
            scores = rag.evaluate(index, questions, reranker=chosen)
            seconds = time.perf_counter() - start
            if part == "holdout":
                held[name] = scores
            goal = ""
            if part == "holdout":
                ok = scores["recall@5"] >= RECALL_GOAL
                met = met or ok
                goal = f"  goal >= {RECALL_GOAL} {mark(ok)}"
            print(
                f"{name:<18} {part:<12} {scores['recall@1']:>9.2f} {scores['recall@5']:>9.2f} "
                f"{scores['mrr']:>6.2f} {seconds:>6.1f}{goal}"
            )
    plain, reranked = held["plain"], held["sentence rerank"]
    holds = reranking_holds(plain, reranked)
    print(
        f"answer() reranks by default: held-out recall@5 {plain['recall@5']:.2f} -> "
        f"{reranked['recall@5']:.2f} (at least plain's), recall@1 {plain['recall@1']:.2f} -> "
        f"{reranked['recall@1']:.2f} (down {RECALL1_TOLERANCE} at most) {mark(holds)}"
    )
    return met, holds


def gates(index: rag.Index, parts: dict[str, list[Question]]) -> bool:
    """Refusals of each gate on both parts; True if one gate meets both held-out goals."""
    cosine = calibrate_threshold(index, parts["calibration"]).gate
    print('\n## "Not in the documents" (gates score plain search)')
    print(f"{'gate':<26} {'part':<12} {'refused':>9} {'wrongly refused':>16}")
    met = False
    for name, gate in (
        (f"cosine >= {cosine.threshold:.3f}", cosine),
        ("HybridGate (default)", rag.HybridGate()),
    ):
        for part, questions in parts.items():
            r = refusals(index, questions, gate)
            right = f"{r['refused_unanswerable']:.0f}/{r['unanswerable']:.0f}"
            wrong = f"{r['refused_answerable']:.0f}/{r['answerable']:.0f}"
            goal = ""
            if part == "holdout":
                ok = (
                    r["refused_unanswerable"] >= REFUSED_GOAL
                    and r["refused_answerable"] <= WRONG_GOAL
                )
                met = met or ok
                goal = f"  goal >= {REFUSED_GOAL} and <= {WRONG_GOAL} {mark(ok)}"
            print(f"{name:<26} {part:<12} {right:>9} {wrong:>16}{goal}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "data" / "hr-handbook")
    parser.add_argument("--eval", type=Path, default=ROOT / "data" / "hr-eval.jsonl")
    args = parser.parse_args()
    questions = load_eval_set(args.eval)
    parts = {part: split(questions, part) for part in ("calibration", "holdout")}
    with Client() as client:
        chunks = rag.chunk_documents(rag.load_documents(args.docs))
        index = rag.build_index(chunks, client, cache=rag.EmbeddingCache(), progress=False)
        print(f"Embedding model: {index.model} ({index.dim} dims); {args.eval.name}: ", end="")
        print(", ".join(f"{len(q)} {part}" for part, q in parts.items()))
        recall_met, default_holds = retrieval(index, parts)
        refusal_met = gates(index, parts)
    print(
        f"\nHeld-out goals: recall@5 {mark(recall_met)}, refusals {mark(refusal_met)}, "
        f"reranking as answer()'s default {mark(default_holds)}"
    )
    return 0 if recall_met and refusal_met and default_holds else 1


if __name__ == "__main__":
    sys.exit(main())
