"""How good is retrieval? recall@k and MRR over an evaluation set, and a sweep of chunking choices.

    questions = load_eval_set("data/hr-eval.jsonl")
    evaluate(index, questions)            # {"recall@1": ..., "recall@3": ..., "mrr": ...}
    rows = sweep(docs, questions, client) # one row per chunk size x overlap x k
    plot_sweep(rows)                      # a matplotlib Axes

A question is answered by one or more sources (a document, and maybe a section). A retrieved
chunk is a hit for a source when it comes from that document and, if a section is named,
from that section. For questions with several sources two recalls are reported: "any"
(at least one source found) and "all" (every source found).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from labkit.errors import RagError
from labkit.rag.chunking import Chunk, chunk_documents
from labkit.rag.documents import Document
from labkit.rag.embeddings import Embedder, EmbeddingCache
from labkit.rag.gate import GATE_K, Gate, HybridGate, ScoreGate
from labkit.rag.index import Hit, Index, build_index
from labkit.rag.rerank import SentenceReranker

if TYPE_CHECKING:  # matplotlib loads when a plot is drawn: it takes a second
    from matplotlib.axes import Axes

__all__ = [
    "ANSWERABLE",
    "QUESTION_TYPES",
    "RECALL1_TOLERANCE",
    "SPLITS",
    "Calibration",
    "Question",
    "Source",
    "calibrate_gate",
    "calibrate_threshold",
    "evaluate",
    "evaluate_by_type",
    "first_hit_ranks",
    "gate_scores",
    "is_hit",
    "load_eval_set",
    "misses",
    "plot_sweep",
    "refusals",
    "reranking_holds",
    "score_hits",
    "split",
    "sweep",
]

ANSWERABLE = ("single", "multi", "superseded")
QUESTION_TYPES = (*ANSWERABLE, "unanswerable")
SPLITS = ("calibration", "holdout")  # tune on the first part, report on the second
RECALL1_TOLERANCE = 0.02  # what reranking may cost recall@1: one question of the held-out 50


@dataclass(frozen=True)
class Source:
    """Where an answer is: a document and, optionally, a section heading in it."""

    doc: str
    section: str = ""


@dataclass(frozen=True)
class Question:
    """One line of an evaluation set."""

    id: str
    question: str
    answer: str
    sources: tuple[Source, ...]
    type: str  # single, multi, unanswerable or superseded
    split: str = "calibration"  # "calibration": tune on it; "holdout": only report on it

    @property
    def answerable(self) -> bool:
        """True unless the documents do not hold the answer."""
        return self.type != "unanswerable"

    @property
    def needs_all(self) -> bool:
        """True if the answer combines all its sources; otherwise any one of them is enough."""
        return self.type == "multi"


def load_eval_set(path: str | Path) -> list[Question]:
    """Read a JSON-lines evaluation set; a malformed line raises RagError naming it."""
    questions = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RagError(f"Cannot read the evaluation set {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sources = tuple(
                Source(s["doc"], s.get("section") or "") for s in row.get("sources") or []
            )
            question = Question(
                str(row["id"]),
                row["question"],
                row.get("answer", ""),
                sources,
                row["type"],
                str(row.get("split") or "calibration"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RagError(f"{path}, line {number}: not a valid question ({exc!r}).") from exc
        if question.split not in SPLITS:
            raise RagError(f"{path}, line {number}: split must be one of {SPLITS}.")
        if question.type not in QUESTION_TYPES:
            raise RagError(f"{path}, line {number}: unknown type {question.type!r}.")
        if question.answerable and not sources:
            raise RagError(f"{path}, line {number}: an answerable question needs sources.")
        questions.append(question)
    if not questions:
        raise RagError(f"The evaluation set {path} has no questions.")
    return questions


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def is_hit(chunk: Chunk, source: Source) -> bool:
    """True if ``chunk`` comes from ``source``'s document (and section, when one is named)."""
    doc_matches = chunk.doc == source.doc or Path(chunk.doc).stem == Path(source.doc).stem
    if not doc_matches:
        return False
    return not source.section or any(_same(h, source.section) for h in chunk.headings[1:])


def first_hit_ranks(question: Question, hits: Sequence[Hit]) -> list[int | None]:
    """For each source of ``question``, the rank of the first hit for it (None: not found)."""
    return [next((h.rank for h in hits if is_hit(h.chunk, s)), None) for s in question.sources]


def score_hits(
    questions: Sequence[Question], results: Sequence[Sequence[Hit]], ks: Sequence[int] = (1, 3, 5)
) -> dict[str, float]:
    """recall@k, recall_any@k, recall_all@k and MRR from ready search results.

    recall@k follows each question's own rule: all sources for "multi" questions, any one
    source for the others. recall_any@k and recall_all@k apply one rule to every question.
    """
    rows = [(q, first_hit_ranks(q, hits)) for q, hits in zip(questions, results, strict=True)]
    rows = [(q, ranks) for q, ranks in rows if q.answerable]
    if not rows:
        raise RagError("No answerable questions to score.")
    scores: dict[str, float] = {"questions": float(len(rows))}
    for k in ks:
        found = [[r is not None and r <= k for r in ranks] for _, ranks in rows]
        rule = [all(f) if q.needs_all else any(f) for (q, _), f in zip(rows, found, strict=True)]
        scores[f"recall@{k}"] = float(np.mean(rule))
        scores[f"recall_any@{k}"] = float(np.mean([any(f) for f in found]))
        scores[f"recall_all@{k}"] = float(np.mean([all(f) for f in found]))
    # Reciprocal rank of the first relevant chunk among those retrieved (0 when none was).
    firsts = [min((r for r in ranks if r is not None), default=None) for _, ranks in rows]
    scores["mrr"] = float(np.mean([1 / r if r else 0.0 for r in firsts]))
    return scores


def evaluate(
    index: Index,
    questions: Sequence[Question],
    ks: Sequence[int] = (1, 3, 5),
    *,
    reranker: SentenceReranker | None = None,
) -> dict[str, float]:
    """recall@k (see score_hits) and MRR of ``index`` on the answerable questions."""
    answerable = [q for q in questions if q.answerable]
    queries = [q.question for q in answerable]
    if reranker is None:
        results = index.search_many(queries, max(ks))
    else:
        results = reranker.search_many(index, queries, max(ks))
    return score_hits(answerable, results, ks)


def reranking_holds(
    plain: dict[str, float], reranked: dict[str, float], tolerance: float = RECALL1_TOLERANCE
) -> bool:
    """True if reranked recall@5 is at least plain search's and recall@1 drops by ``tolerance`` at most.

    This is the rule by which ``answer`` reranks by default; judge it on the held-out part.
    """
    # Rounded: recall is a count over a few dozen questions, and 0.58 - 0.56 > 0.02 in floats.
    kept = round(reranked["recall@5"] - plain["recall@5"], 9) >= 0
    return kept and round(plain["recall@1"] - reranked["recall@1"], 9) <= tolerance


def evaluate_by_type(
    index: Index, questions: Sequence[Question], ks: Sequence[int] = (1, 3, 5)
) -> dict[str, dict[str, float]]:
    """``evaluate`` separately for each type of answerable question (single, multi, ...)."""
    types = sorted({q.type for q in questions if q.answerable})
    return {t: evaluate(index, [q for q in questions if q.type == t], ks) for t in types}


def misses(index: Index, questions: Sequence[Question], k: int = 5) -> list[dict[str, Any]]:
    """The answerable questions whose sources are not all in the top ``k``: what went wrong."""
    answerable = [q for q in questions if q.answerable]
    found = []
    for q, hits in zip(
        answerable, index.search_many([q.question for q in answerable], k), strict=True
    ):
        ranks = first_hit_ranks(q, hits)
        if any(r is None for r in ranks):
            found.append(
                {
                    "id": q.id,
                    "question": q.question,
                    "wanted": [f"{s.doc} § {s.section}" if s.section else s.doc for s in q.sources],
                    "ranks": ranks,
                    "got": [f"{h.score:.2f} {h.source}" for h in hits],
                }
            )
    return found


# --- The "not in the documents" gate -------------------------------------------------------------


def split(questions: Sequence[Question], part: str) -> list[Question]:
    """The questions of one part of the set: "calibration" (tune on it) or "holdout" (report)."""
    chosen = [q for q in questions if q.split == part]
    if not chosen:
        parts = sorted({q.split for q in questions})
        raise RagError(f"No questions in part {part!r}; the set has: {', '.join(parts)}.")
    return chosen


def gate_scores(index: Index, questions: Sequence[Question], gate: Gate) -> np.ndarray:
    """The gate's score of every question, in order (what ``answer`` compares to the threshold)."""
    results = index.search_many([q.question for q in questions], GATE_K)
    return np.array(
        [gate.score(q.question, h, index) for q, h in zip(questions, results, strict=True)]
    )


@dataclass(frozen=True)
class Calibration:
    """Gate scores of answerable and unanswerable questions, and the threshold chosen."""

    threshold: float
    accuracy: float  # balanced: the mean of the two shares below
    answerable_kept: float  # share of answerable questions at or above the threshold
    unanswerable_refused: float  # share of unanswerable questions below it
    answerable_scores: list[float]
    unanswerable_scores: list[float]
    gate: Gate = field(default_factory=ScoreGate)  # the gate, with this threshold


def _best_threshold(good: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy): the midpoint between scores that separates best."""
    points = np.unique(np.concatenate([good, bad]))
    candidates = (points[:-1] + points[1:]) / 2 if len(points) > 1 else points

    def balanced(t: float) -> float:
        return float((np.mean(good >= t) + np.mean(bad < t)) / 2)

    best = float(max(candidates, key=balanced))
    return best, balanced(best)


def calibrate_threshold(
    index: Index, questions: Sequence[Question], gate: Gate | None = None
) -> Calibration:
    """Pick the gate score below which "not in the documents" is said, from labelled questions.

    Tries every midpoint between observed scores and keeps the one that classifies most
    questions correctly, weighting the two groups equally (balanced accuracy) so a set with
    few unanswerable questions does not push the threshold to zero. Pass the calibration
    part only (``split(questions, "calibration")``) and report on the held-out part.
    """
    gate = gate if gate is not None else ScoreGate()
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]
    if not answerable or not unanswerable:
        raise RagError("Calibration needs both answerable and unanswerable questions.")
    scores = gate_scores(index, [*answerable, *unanswerable], gate)
    good, bad = scores[: len(answerable)], scores[len(answerable) :]
    threshold, accuracy = _best_threshold(good, bad)
    return Calibration(
        threshold=round(threshold, 3),
        accuracy=accuracy,
        answerable_kept=float(np.mean(good >= threshold)),
        unanswerable_refused=float(np.mean(bad < threshold)),
        answerable_scores=sorted(map(float, good)),
        unanswerable_scores=sorted(map(float, bad)),
        gate=replace(gate, threshold=round(threshold, 3)),  # type: ignore[type-var]
    )


def calibrate_gate(
    index: Index,
    questions: Sequence[Question],
    keyword_weights: Iterable[float] = (0.0, 0.01, 0.02, 0.03, 0.04),
    margin_weights: Iterable[float] = (0.0, 0.5, 1.0),
) -> Calibration:
    """Try ScoreGate and HybridGate weightings; keep the best on ``questions`` (ties: simplest)."""
    gates: list[Gate] = [ScoreGate()]
    gates += [
        HybridGate(0.0, kw, mw) for kw in keyword_weights for mw in margin_weights if kw or mw
    ]
    results = [calibrate_threshold(index, questions, gate) for gate in gates]
    # max() keeps the first of equals: the plain score gate, then the smallest weights.
    return max(results, key=lambda c: round(c.accuracy, 6))


def refusals(index: Index, questions: Sequence[Question], gate: Gate) -> dict[str, float]:
    """How ``gate`` decides on labelled questions: refused counts, precision and recall.

    A refusal is right on an unanswerable question and wrong on an answerable one; precision
    is the share of refusals that were right, recall the share of unanswerable questions
    refused.
    """
    scores = gate_scores(index, questions, gate)
    refused = scores < gate.threshold
    unanswerable = np.array([not q.answerable for q in questions])
    right = int(np.sum(refused & unanswerable))
    wrong = int(np.sum(refused & ~unanswerable))
    return {
        "unanswerable": float(unanswerable.sum()),
        "answerable": float((~unanswerable).sum()),
        "refused_unanswerable": float(right),
        "refused_answerable": float(wrong),
        "precision": right / (right + wrong) if right + wrong else 1.0,
        "recall": right / unanswerable.sum() if unanswerable.any() else 1.0,
    }


# --- Sweep -----------------------------------------------------------------------------------------


def sweep(
    docs: Sequence[Document],
    questions: Sequence[Question],
    client: Embedder,
    *,
    sizes: Iterable[int] = (200, 400, 800),
    overlaps: Iterable[float] = (0.0, 0.10, 0.15),
    ks: Sequence[int] = (1, 3, 5),
    model: str | None = None,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every chunk size x overlap (a fraction of the size); one row per k.

    Chunk embeddings are cached by text, so chunks that two settings share (a short section is
    the same chunk at any size) are embedded once; pass your own ``cache`` to reuse it. Chunks
    never cross a heading, so sizes above a corpus's longest section all give the same chunks.
    """
    cache = cache if cache is not None else EmbeddingCache()
    settings = [(size, overlap) for size in sizes for overlap in overlaps]
    rows = []
    for size, overlap in tqdm(settings, desc="sweep", disable=not progress):
        chunks = chunk_documents(docs, size=size, overlap=int(size * overlap))
        index = build_index(chunks, client, model=model, cache=cache, progress=False)
        scores = evaluate(index, questions, ks)
        for k in ks:
            rows.append(
                {
                    "size": size,
                    "overlap": overlap,
                    "k": k,
                    "chunks": len(chunks),
                    "recall": scores[f"recall@{k}"],
                    "recall_any": scores[f"recall_any@{k}"],
                    "recall_all": scores[f"recall_all@{k}"],
                    "mrr": scores["mrr"],
                }
            )
    return rows


def plot_sweep(
    rows: Sequence[dict[str, Any]], ax: Axes | None = None, metric: str = "recall"
) -> Axes:
    """Draw ``metric`` against chunk size: a colour per k, a line style per overlap; no show()."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    styles = ["-", "--", ":", "-."]
    overlaps = sorted({r["overlap"] for r in rows})
    for colour, k in enumerate(sorted({r["k"] for r in rows})):
        for style, overlap in zip(styles * len(overlaps), overlaps, strict=False):
            line = sorted(
                (r["size"], r[metric]) for r in rows if r["k"] == k and r["overlap"] == overlap
            )
            ax.plot(
                [x for x, _ in line],
                [y for _, y in line],
                linestyle=style,
                marker="o",
                color=f"C{colour}",
                label=f"k={k}, overlap {overlap:.0%}",
            )
    ax.set_xticks(sorted({r["size"] for r in rows}))
    ax.set_xlabel("chunk size (tokens)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Retrieval {metric.replace('_', ' ')} by chunk size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=len({r["k"] for r in rows}))
    return ax
