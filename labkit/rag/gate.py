"""Does the index hold an answer at all? Gates that decide before the model is asked.

Retrieval always returns passages, even for a question the documents never answer: they are
merely the least unrelated. A gate looks at what was retrieved and says yes or no; on no,
``answer`` replies "Not in the documents." without asking the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from labkit.rag.index import Hit

__all__ = ["MIN_SCORE", "Gate", "ScoreGate"]

MIN_SCORE = 0.42


class Gate(Protocol):
    """Decides from the retrieved passages whether the documents answer ``question``."""

    def accepts(self, question: str, hits: Sequence[Hit]) -> bool: ...


@dataclass(frozen=True)
class ScoreGate:
    """Accept when the best passage's cosine similarity reaches ``min_score``."""

    min_score: float = MIN_SCORE

    def accepts(self, question: str, hits: Sequence[Hit]) -> bool:
        """True if the best hit scores at least ``min_score``."""
        return bool(hits) and hits[0].score >= self.min_score
