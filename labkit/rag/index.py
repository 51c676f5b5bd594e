"""The index: chunk vectors in FAISS, searched by cosine similarity, saved with checksums.

A saved index is a folder of three files: ``meta.json`` (the model, the sizes, and the names
and SHA-256 checksums of the other two), the vectors (``index-<id>.faiss``) and the chunks
(``chunks-<id>.jsonl``). ``meta.json`` is replaced last, in one atomic step, so a save that is
interrupted at any point leaves the old index or the new one complete; only the previous
save's own two files are removed afterwards, never anything else in the folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.errors import (
    EmbeddingMismatch,
    IndexFileError,
    InvalidInput,
    ModelNotFound,
    RagError,
)
from labkit.rag.bm25 import BM25
from labkit.rag.chunking import Chunk
from labkit.rag.embeddings import (
    EMBED_MAX_TOKENS,
    Embedder,
    EmbeddingCache,
    embed_texts,
    embedding_model,
)
from labkit.rag.storage import (
    INDEX_FORMAT,
    INDEX_VERSION,
    fsync,
    previous_files,
    read_chunks,
    read_meta,
    sha256,
    verify,
    write_atomic,
)
from labkit.tokens import estimate_tokens

if TYPE_CHECKING:  # at run time FAISS loads when an index is first built or read
    import faiss

__all__ = [
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "SUPERSEDED_PENALTY",
    "Hit",
    "Index",
    "build_index",
    "make_faiss_index",
]

log = logging.getLogger("labkit.rag")

# Chunks of a document marked "superseded by ..." rank as if this much less similar, so the
# current policy wins unless the old one is clearly the better match ("what was the 2022
# rule?"). On top of it, whenever the current version is among the candidates it ranks above
# its old version (see Index.search_vectors): a penalty alone lets close wording win.
SUPERSEDED_PENALTY = 0.1


def make_faiss_index(vectors: np.ndarray, kind: str = "flat") -> faiss.Index:
    """A FAISS inner-product index over normalised ``vectors``: "flat", "hnsw" or "ivf".

    Flat compares the query with every vector: exact, well under a millisecond for a
    handbook, ~40 ms per query at 100k vectors of 384 dims on two cores (bench/rag.py).
    HNSW (a graph) and IVF (clusters) look at a fraction of them: under a millisecond at
    that size, at the price of sometimes missing a true neighbour.
    """
    import faiss  # here, not at the top: it takes a second to load, and chunking needs none

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64  # more = better recall, slower search
    elif kind == "ivf":
        lists = max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(lists, 16)
    else:
        raise InvalidInput(f'kind must be "flat", "hnsw" or "ivf", not {kind!r}.')
    index.add(vectors)
    return index


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk, its score (cosine similarity), and its rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int

    @property
    def source(self) -> str:
        """Document and section, for people."""
        return self.chunk.source

    def __str__(self) -> str:
        return f"[{self.rank}] {self.score:.3f} {self.source}: {self.chunk.text[:80]}..."


def _check_query(query: object) -> str:
    """The query if it can be embedded whole, else InvalidInput saying what to do."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput(
            f"The question is empty ({query!r}): type what you want to find in the documents."
        )
    tokens = estimate_tokens(query)
    if tokens > EMBED_MAX_TOKENS:
        raise InvalidInput(
            f"The question is ~{tokens} tokens long, but the embedding model reads only "
            f"{EMBED_MAX_TOKENS}: the rest would be ignored without a word. Ask the question "
            "in a sentence or two; put long material into the documents instead."
        )
    return query


class Index:
    """Chunks, their vectors in FAISS, and the embedding model that made them."""

    def __init__(
        self,
        vectors: faiss.Index,
        chunks: Sequence[Chunk],
        *,
        model: str,
        client: Embedder | None = None,
        kind: str = "flat",
        cache: EmbeddingCache | None = None,
    ) -> None:
        if vectors.ntotal != len(chunks):
            raise RagError(f"{vectors.ntotal} vectors but {len(chunks)} chunks: they must match.")
        self.faiss = vectors
        self.chunks = list(chunks)
        self.model = model
        self.client = client
        self.kind = kind
        self.cache = cache
        self._keywords: BM25 | None = None

    @property
    def dim(self) -> int:
        """Length of the vectors."""
        return int(self.faiss.d)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"<Index of {len(self)} chunks, {self.model} ({self.dim} dims), {self.kind}>"

    def keywords(self) -> BM25:
        """A BM25 keyword index over the same chunks (heading path + text), built on first use."""
        if self._keywords is None:
            self._keywords = BM25([c.embed_text() for c in self.chunks])
        return self._keywords

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries with the index's own model, refusing vectors of another size."""
        return self.embed([_check_query(q) for q in queries])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the index's own model and cache, refusing vectors of another size."""
        if self.client is None:
            raise RagError("This index has no client to embed with: Index.load(path, client=...).")
        vectors = embed_texts(
            texts, self.client, model=self.model, cache=self.cache, progress=False
        )
        if vectors.shape[1] != self.dim:
            raise EmbeddingMismatch(
                f"The index holds {self.dim}-dim vectors from {self.model!r}, but the runtime's "
                f"{self.model!r} now returns {vectors.shape[1]}-dim vectors: it is another model. "
                "Rebuild the index with build_index(chunks, client)."
            )
        return vectors

    def search(
        self, query: str, k: int = 3, *, superseded_penalty: float = SUPERSEDED_PENALTY
    ) -> list[Hit]:
        """The ``k`` chunks most similar to ``query``, best first."""
        return self.search_many([query], k, superseded_penalty=superseded_penalty)[0]

    def search_many(
        self, queries: Sequence[str], k: int = 3, *, superseded_penalty: float = SUPERSEDED_PENALTY
    ) -> list[list[Hit]]:
        """Search several queries at once (one embedding request, one FAISS call)."""
        vectors = self.embed_queries(queries)
        return self.search_vectors(vectors, k, superseded_penalty=superseded_penalty)

    def search_vectors(
        self, vectors: np.ndarray, k: int = 3, *, superseded_penalty: float = SUPERSEDED_PENALTY
    ) -> list[list[Hit]]:
        """Search with ready-made query vectors, one row per query.

        A chunk from a superseded document scores ``superseded_penalty`` less than its cosine
        similarity and, when a chunk of the document that replaced it is among the candidates,
        just below that chunk: the current version always wins when both are found.
        ``superseded_penalty=0`` turns both off (plain similarity).
        """
        if k < 1:
            raise InvalidInput(f"k must be at least 1, not {k}.")
        # Fetch extra candidates: penalised chunks may drop out of the top k.
        wanted = min(len(self.chunks), 2 * k + 5) if superseded_penalty else k
        return [
            self.ranked(found, k, superseded_penalty=superseded_penalty)
            for found in self.candidates(vectors, wanted)
        ]

    def candidates(self, vectors: np.ndarray, n: int) -> list[list[tuple[float, int]]]:
        """The ``n`` most similar chunks to each query row: (cosine, chunk number), best first."""
        scores, ids = self.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), n)
        return [
            [(float(s), int(i)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def ranked(
        self,
        found: Sequence[tuple[float, int]],
        k: int,
        *,
        superseded_penalty: float = SUPERSEDED_PENALTY,
    ) -> list[Hit]:
        """The best ``k`` of (score, chunk number) pairs as hits, current versions first."""
        pairs = list(found)
        if superseded_penalty:
            pairs = self._current_first(pairs, superseded_penalty)
        pairs.sort(key=lambda pair: -pair[0])
        return [Hit(self.chunks[i], s, rank) for rank, (s, i) in enumerate(pairs[:k], start=1)]

    def _current_first(
        self, found: list[tuple[float, int]], penalty: float
    ) -> list[tuple[float, int]]:
        """Penalise superseded chunks, and rank each below the best chunk of its replacement."""
        best: dict[str, float] = {}
        for score, i in found:
            chunk = self.chunks[i]
            if not chunk.superseded_by:
                best[chunk.doc] = max(best.get(chunk.doc, -2.0), score)
        moved = []
        for score, i in found:
            newer = self.chunks[i].superseded_by
            if newer:
                score -= penalty
                if newer in best:
                    score = min(score, best[newer] - 1e-4)
            moved.append((score, i))
        return moved

    def save(self, path: str | Path) -> Path:
        """Save to a folder: the vectors, the chunks and meta.json with their checksums.

        Safe to interrupt: until meta.json is replaced (one atomic rename) the old index is
        complete; after it, the new one is. Other files in the folder are never touched.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InvalidInput(
                f"{path} is a file, not a folder: an index is saved as a folder of three files. "
                "Pass a folder path (it is created if missing)."
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexFileError(f"Cannot create the folder {path}: {exc}") from exc
        previous = previous_files(path)
        tag = uuid.uuid4().hex[:8]
        names = {"index": f"index-{tag}.faiss", "chunks": f"chunks-{tag}.jsonl"}
        written = [path / name for name in names.values()]  # removed again if the save fails
        try:
            import faiss

            faiss.write_index(self.faiss, str(written[0]))
            _step("index")
            with open(written[1], "w", encoding="utf-8") as out:
                for chunk in self.chunks:
                    out.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            _step("chunks")
            meta = {
                "format": INDEX_FORMAT,
                "version": INDEX_VERSION,
                "model": self.model,
                "dim": self.dim,
                "count": len(self.chunks),
                "kind": self.kind,
                "metric": "inner product of L2-normalised vectors (cosine)",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": names,
                "sha256": {key: sha256(path / name) for key, name in names.items()},
            }
            for file in written:
                fsync(file)  # the data must be on disk before meta.json points at it
            write_atomic(path / "meta.json", json.dumps(meta, indent=2))
        except (OSError, RuntimeError) as exc:
            for file in written:  # only this save's own files; the old index is untouched
                file.unlink(missing_ok=True)
            raise IndexFileError(
                f"Could not save the index to {path}: {exc}. The previous index there, if any, "
                "is unchanged."
            ) from exc
        _step("meta")
        for file in previous - {path / n for n in names.values()}:
            file.unlink(missing_ok=True)  # the old save's two files, and nothing else
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        client: Embedder | None = None,
        *,
        model: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> Index:
        """Load a saved index, refusing one whose files were damaged or edited.

        With a client, check now that its model gives vectors that fit. Pass ``model`` to
        insist on a model name: an index built with another one is refused.
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexFileError(
                f"No saved index at {path}. Build one with build_index(...) and index.save(path)."
            )
        meta = read_meta(path)
        if model is not None and model != meta["model"]:
            raise EmbeddingMismatch(
                f"The index at {path} was built with {meta['model']!r}, not {model!r}; vectors of "
                "different models cannot be compared. Rebuild it with the model you want."
            )
        for key, name in meta["files"].items():
            verify(path / name, meta["sha256"].get(key))
        import faiss

        try:
            vectors = faiss.read_index(str(path / meta["files"]["index"]))
        except RuntimeError as exc:
            raise IndexFileError(
                f"{path / meta['files']['index']} cannot be read; rebuild the index."
            ) from exc
        chunks = read_chunks(path / meta["files"]["chunks"])
        if (
            vectors.d != meta["dim"]
            or vectors.ntotal != meta["count"]
            or len(chunks) != meta["count"]
        ):
            raise IndexFileError(
                f"The files in {path} disagree (meta.json: {meta['count']} x {meta['dim']} dims; "
                f"vectors: {vectors.ntotal} x {vectors.d}; chunks: {len(chunks)}). "
                "Rebuild the index."
            )
        index = cls(
            vectors, chunks, model=meta["model"], client=client, kind=meta["kind"], cache=cache
        )
        if client is not None:
            try:
                index.embed_queries(["dimension check"])
            except ModelNotFound as exc:
                raise EmbeddingMismatch(
                    f"The index at {path} was built with {meta['model']!r}, which this runtime "
                    "does not have. Install that model, or rebuild the index with yours."
                ) from exc
        return index


def _step(name: str) -> None:
    """A point between the steps of a save (tests interrupt saves here)."""


def build_index(
    chunks: Sequence[Chunk],
    client: Embedder,
    *,
    model: str | None = None,
    kind: str = "flat",
    batch_size: int = 32,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> Index:
    """Embed every chunk (heading path + text) and put the vectors in a FAISS index."""
    if not chunks:
        raise RagError("No chunks to index: load_documents and chunk_documents found no text.")
    model = embedding_model(client, model)
    texts = [c.embed_text() for c in chunks]
    vectors = embed_texts(
        texts, client, model=model, batch_size=batch_size, cache=cache, progress=progress
    )
    return Index(
        make_faiss_index(vectors, kind), chunks, model=model, client=client, kind=kind, cache=cache
    )
