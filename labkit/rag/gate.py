"""Does the index hold an answer at all? Gates that decide before the model is asked.

Retrieval always returns passages, even for a question the documents never answer: they are
merely the least unrelated. A gate scores what was retrieved, and ``answer`` replies "Not in
the documents." without asking the model when the score is below the gate's threshold.

Two gates, measured on the course's evaluation set (threshold chosen on its calibration part,
84 questions; reported on the held-out part, 60 colloquial and near-topic questions written
later, see data/README.md):

- ``ScoreGate``: the best passage's cosine similarity. Calibrated, it refuses 8 of 10
  unanswerable calibration questions but only 6 of 10 held-out ones, while wrongly refusing
  22 of 50 held-out answerable ones: colloquial wording ("chip in for my yoga classes")
  scores as low as a question the handbook never answers.
- ``HybridGate`` (the default): the cosine similarity, plus keyword evidence (the best BM25
  score: do the question's rarer words occur in some passage?) and the margin to the best
  passage of another document (one clear winner rather than many lukewarm ones). On the
  calibration part it refuses 8/10 and wrongly refuses 3/74 (cosine alone: 8/10 and 12/74);
  held out, 3/10 and 10/50. In a 5-fold cross-validation over all 144 questions it refuses
  15 of 20 unanswerable questions against 12 for cosine alone, with fewer wrong refusals.

No gate on retrieval scores separates near-topic questions ("guest Wi-Fi password", "a
Christmas bonus") from colloquial answerable ones with all-MiniLM-L6-v2: their scores
overlap. The prompt's own rule (reply "Not in the documents.") is the second guard, and it
is only as good as the chat model. Recalibrate (``calibrate_gate``) for other documents or
another embedding model: scores are not comparable across models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from labkit.rag.index import Hit, Index

__all__ = [
    "GATE_K",
    "GATE_THRESHOLD",
    "KEYWORD_WEIGHT",
    "MARGIN_WEIGHT",
    "MIN_SCORE",
    "Gate",
    "HybridGate",
    "ScoreGate",
    "margin",
]

MIN_SCORE = 0.48  # ScoreGate's cosine threshold, calibrated as described above
KEYWORD_WEIGHT = 0.03  # per BM25 point (the handbook's best BM25 scores run from 0 to ~20)
MARGIN_WEIGHT = 0.5
GATE_THRESHOLD = 0.70
GATE_K = 5  # passages a gate looks at (the margin needs a runner-up from another document)


class Gate(Protocol):
    """Scores retrieved passages; ``answer`` asks the model only at ``threshold`` or above."""

    @property
    def threshold(self) -> float: ...

    def score(self, question: str, hits: Sequence[Hit], index: Index) -> float: ...


def margin(hits: Sequence[Hit]) -> float:
    """How far the best passage leads the best passage of any other document (0 if alone)."""
    if not hits:
        return 0.0
    other = next((h.score for h in hits[1:] if h.chunk.doc != hits[0].chunk.doc), None)
    return hits[0].score - (other if other is not None else hits[-1].score)


@dataclass(frozen=True)
class ScoreGate:
    """The best passage's cosine similarity."""

    threshold: float = MIN_SCORE

    def score(self, question: str, hits: Sequence[Hit], index: Index) -> float:
        """The best hit's score (0 without hits)."""
        return hits[0].score if hits else 0.0


@dataclass(frozen=True)
class HybridGate:
    """Cosine similarity + keyword evidence (BM25) + the lead over other documents."""

    threshold: float = GATE_THRESHOLD
    keyword_weight: float = KEYWORD_WEIGHT
    margin_weight: float = MARGIN_WEIGHT

    def score(self, question: str, hits: Sequence[Hit], index: Index) -> float:
        """Best cosine + keyword_weight x best BM25 + margin_weight x margin (hits: top 5)."""
        if not hits:
            return 0.0
        keywords = max(index.keywords().scores(question), default=0.0)
        return hits[0].score + self.keyword_weight * keywords + self.margin_weight * margin(hits)
