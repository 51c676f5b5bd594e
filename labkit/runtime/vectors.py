"""Embeddings the runtime has already computed, kept so the same text is never embedded twice.

A course embeds the same texts again and again: a learner re-runs the RAG lesson, an exercise
builds the index the lesson built, and on a class server thirty learners embed one handbook.
An embedding depends only on the model and the text, so the runtime keeps recent vectors
(least recently used dropped first, within a fixed number of bytes), each with the number of
tokens the text is, and asks llama.cpp only for texts it has not seen. Nothing is written to
disk.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

__all__ = ["VECTOR_CACHE_BYTES", "VectorCache", "cache_for"]

# 16 MB holds about 5,000 vectors of 384 numbers: the course's handbook in every chunking
# the lessons try, without moving the runtime's memory ceiling.
VECTOR_CACHE_BYTES = 16 * 1024 * 1024


class VectorCache:
    """A bounded least-recently-used map from (model, text) to its vector and token count."""

    def __init__(self, max_bytes: int = VECTOR_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        # Doubles, as parsed from llama.cpp's answer: a replayed vector is the same to the last digit.
        self._vectors: OrderedDict[bytes, tuple[array[float], int]] = OrderedDict()

    @staticmethod
    def _key(model: str, text: str | list[int]) -> bytes:
        # Token lists (a text cut to the context) and strings never share a key.
        shown = text if isinstance(text, str) else "\0tokens:" + ",".join(map(str, text))
        return hashlib.sha256(f"{model}\0{shown}".encode()).digest()

    def get(self, model: str, text: str | list[int]) -> tuple[list[float], int] | None:
        """The vector of ``text`` for ``model`` and its tokens if computed before, else None."""
        key = self._key(model, text)
        entry = self._vectors.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._vectors.move_to_end(key)
        self.hits += 1
        return entry[0].tolist(), entry[1]

    def put(self, model: str, text: str | list[int], vector: list[float], tokens: int) -> None:
        """Keep one vector, dropping the least recently used ones beyond the byte limit."""
        kept = array("d", vector)
        size = kept.itemsize * len(kept)
        if size > self.max_bytes:
            return
        key = self._key(model, text)
        if key in self._vectors:
            self._vectors.move_to_end(key)
            return
        self._vectors[key] = (kept, tokens)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (dropped, _) = self._vectors.popitem(last=False)
            self.bytes -= dropped.itemsize * len(dropped)

    def __len__(self) -> int:
        return len(self._vectors)


_CACHES: dict[str, VectorCache] = {}


def cache_for(server: str) -> VectorCache:
    """The cache of one embedding server (by its address), made on first use."""
    return _CACHES.setdefault(server, VectorCache())
