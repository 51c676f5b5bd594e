"""Embeddings: texts to L2-normalised vectors through the runtime, with a cache.

Scores from here on are cosine similarities: the inner product of two normalised vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from labkit.errors import EmbeddingMismatch, InvalidInput, RagError
from labkit.tokens import truncate_tokens

__all__ = [
    "EMBED_MAX_TOKENS",
    "Embedder",
    "EmbeddingCache",
    "embed_texts",
    "embedding_model",
]

# all-MiniLM-L6-v2 reads at most 256 word pieces, [CLS] and [SEP] included; the estimate errs
# high on English (never below MiniLM's real count on the handbook's paragraphs), so 250
# estimated tokens always fit and the rest of a longer text is cut off before sending.
EMBED_MAX_TOKENS = 250


class Embedder(Protocol):
    """Anything that turns texts into vectors: ``labkit.Client`` is one."""

    def embed(
        self, texts: list[str], *, model: str | None = None, batch_size: int = 32
    ) -> np.ndarray: ...


class EmbeddingCache:
    """Vectors remembered by a hash of (model, text): the same text is never embedded twice."""

    def __init__(self) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, text: str) -> str:
        """The cache key of one text for one model."""
        return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()

    def get(self, model: str, text: str) -> np.ndarray | None:
        """The cached vector, or None."""
        vector = self._vectors.get(self.key(model, text))
        if vector is None:
            self.misses += 1
        else:
            self.hits += 1
        return vector

    def put(self, model: str, text: str, vector: np.ndarray) -> None:
        """Remember one vector."""
        self._vectors[self.key(model, text)] = vector

    def __len__(self) -> int:
        return len(self._vectors)


def embedding_model(client: object, model: str | None = None) -> str:
    """The embedding model to use: ``model``, else the client's, else the runtime's first one."""
    if model:
        return model
    if isinstance(name := getattr(client, "embed_model", None), str) and name:
        return name
    # A client made with only a URL has not picked one yet: choose as discovery would.
    from labkit.discovery import Runtime

    models = getattr(client, "models", None)
    names = tuple(models()) if callable(models) else ()
    if name := Runtime("", "", "", "", names).embed_model:
        return name
    raise RagError(
        f"Cannot tell which embedding model to use (the runtime lists: {', '.join(names) or 'none'})."
        " Pass model='...' or Client(embed_model='...')."
    )


def embed_texts(
    texts: Sequence[str],
    client: Embedder,
    *,
    model: str,
    batch_size: int = 32,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
    max_tokens: int = EMBED_MAX_TOKENS,
) -> np.ndarray:
    """Embed texts in batches (with a progress bar); rows are L2-normalised float32 vectors."""
    if not texts:
        raise InvalidInput("No texts to embed: pass at least one.")
    blank = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if blank:
        what = "The text is" if len(texts) == 1 else f"Texts at positions {blank[:10]} are"
        raise InvalidInput(f"{what} empty or blank: there is nothing to embed. Pass real text.")
    texts = [truncate_tokens(t, max_tokens) for t in texts]
    found = [cache.get(model, t) if cache is not None else None for t in texts]
    todo = [i for i, v in enumerate(found) if v is None]
    with tqdm(
        total=len(todo), desc="embedding", unit="text", disable=not progress or not todo
    ) as bar:
        for at in range(0, len(todo), batch_size):
            batch = todo[at : at + batch_size]
            vectors = np.asarray(
                client.embed([texts[i] for i in batch], model=model, batch_size=batch_size),
                dtype=np.float32,
            )
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise RagError(
                    f"The runtime returned {vectors.shape} vectors for {len(batch)} texts."
                )
            for i, vector in zip(batch, vectors, strict=True):
                found[i] = vector
                if cache is not None:
                    cache.put(model, texts[i], vector)
            bar.update(len(batch))
    sizes = {v.shape[0] for v in found if v is not None}
    if len(sizes) > 1:
        raise EmbeddingMismatch(f"Vectors of different sizes {sorted(sizes)} from model {model!r}.")
    matrix = np.vstack([v for v in found if v is not None]).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalised: np.ndarray = matrix / np.maximum(norms, 1e-12)
    return normalised  # cosine similarity = inner product from here on
