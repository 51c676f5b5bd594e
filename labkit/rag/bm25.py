"""BM25: the classic keyword score, to set beside embedding similarity.

Embeddings match meaning ("vacation" finds "annual leave"); BM25 matches the words
themselves, weighting rare words more. It needs no model: a few dozen lines of counting.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["BM25", "words"]

_WORD = re.compile(r"[^\W_]+")
# Words too common in questions to say what one is about.
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "get",
        "go",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "may",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "their",
        "there",
        "this",
        "to",
        "up",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` without stop words, crudely stemmed (a trailing s dropped)."""
    found = (w.lower() for w in _WORD.findall(text))
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in found if w not in _STOP]


class BM25:
    """Okapi BM25 over a fixed list of texts (k1 = 1.5, b = 0.75, the usual defaults)."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(words(t)) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.average = sum(self.lengths) / max(1, len(self.docs))
        seen = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        # The "+ 1" inside the log keeps every weight positive, even for very common words.
        self.idf = {w: math.log(1 + (n - df + 0.5) / (df + 0.5)) for w, df in seen.items()}

    def scores(self, query: str) -> list[float]:
        """One score per text: higher means more (and rarer) query words, 0 means none."""
        terms = set(words(query))
        result = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.average)
            result.append(
                sum(
                    self.idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + norm)
                    for t in terms
                    if t in doc
                )
            )
        return result
