"""Retrieval-augmented generation: load documents, chunk them, embed, index, search, answer.

The whole pipeline in five lines::

    docs = load_documents("data/hr-handbook")
    chunks = chunk_documents(docs)                     # ~200-token pieces, 15% overlap
    index = build_index(chunks, client)                # embeds through the runtime, FAISS inside
    index.search("How many days of annual leave?", k=3)
    answer("How many days of annual leave?", index, client)   # text + cited sources

Every chunk remembers its document, its heading path and its character offsets, so an answer
can always say where it came from. Measuring retrieval quality lives in ``labkit.rag.evaluation``.

Markdown and plain text are read; PDF is not (it needs a text extractor): convert PDFs first,
e.g. with ``pdftotext file.pdf``. The figures quoted below were measured on the course's HR
handbook (36 documents, 74 answerable and 10 unanswerable evaluation questions) with
all-MiniLM-L6-v2 served by the kit's runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import requests
from tqdm.auto import tqdm

from labkit.errors import LabkitError, ModelNotFound
from labkit.structured import InvalidInput

log = logging.getLogger(__name__)

# --- Defaults, and why -------------------------------------------------------------------------

# all-MiniLM-L6-v2 reads at most 256 word pieces (two of them [CLS] and [SEP]) and was trained
# on texts that short: whatever lies beyond is not in the vector. A 200-token chunk plus its
# heading line fits with room for the token estimate's error (the longest default chunk of the
# handbook is 205 real word pieces), so every word of a chunk counts. Measured recall@5 by
# chunk size (15% overlap): 100 -> 0.86, 150 -> 0.85, 200 -> 0.92, 300/400/800 -> 0.89 (a chunk
# never crosses a heading, so sizes above the longest section, ~330 tokens, change nothing).
CHUNK_SIZE = 200
# 15% of CHUNK_SIZE: a sentence cut at a chunk boundary appears whole in one of the two
# chunks. On the handbook overlap hardly matters (0%, 10%, 15% all give recall@5 0.92 at 200),
# because chunks already end at sentences and most sections fit in one chunk.
CHUNK_OVERLAP = 30
EMBED_MAX_TOKENS = 250  # estimated tokens sent to the embedding model; the rest is cut off

# Below this cosine similarity of the best passage, answer() says NOT_FOUND without asking the
# model. Calibrated with rag_eval.calibrate_threshold: answerable questions' best scores range
# 0.34-0.79, unanswerable ones' 0.31-0.59; 0.42 keeps 93% of the answerable questions and
# refuses 70% of the unanswerable ones (balanced accuracy 0.82). Recalibrate for other
# documents or another embedding model: scores are not comparable across models.
MIN_SCORE = 0.42
NOT_FOUND = "Not in the documents."

# Chunks of a document marked "superseded by ..." rank as if this much less similar, so the
# current policy wins unless the old one is clearly the better match ("what was the 2022
# rule?"). On the 6 questions whose answer changed between versions, recall@1 goes from 0.33
# (no penalty) to 0.50 and MRR from 0.63 to 0.75; leaving old versions out entirely gives
# 0.67 / 0.83 but then they can never be found.
SUPERSEDED_PENALTY = 0.1

MAX_FILE_BYTES = 5_000_000  # a policy document is a few KB; 5 MB of plain text is a long book
TEXT_SUFFIXES = (".md", ".markdown", ".txt")

# Token estimate: one token per word or punctuation mark, times 1.1. Compared with the real
# tokenizers (llama.cpp's /tokenize) on the handbook's 479 paragraphs: off by 6.7% on average
# for MiniLM's WordPiece (5% high overall; more than 5% low on only 12 paragraphs) and 6.5% for
# SmolLM2's tokenizer. The usual rules of thumb do worse: words x 1.3 is off by 11.5% on
# average (up to 57% on tables), characters / 4 by 20.6%.
_PIECE = re.compile(r"\w+|[^\w\s]")
TOKENS_PER_PIECE = 1.1
# Longer runs of letters and digits are IDs, hashes or base64, not words: WordPiece cuts
# random ones into a token per 1.3 characters (measured on hex and base64 strings).
LONG_WORD = 20
CHARS_PER_TOKEN_LONG = 1.3


class RagError(LabkitError):
    """Base class of the errors raised by the RAG helpers."""


class DocumentError(RagError):
    """A document cannot be read or used (missing, empty, binary, not UTF-8, too large)."""


class IndexFileError(RagError):
    """A saved index is missing, incomplete or corrupt."""


class EmbeddingMismatch(RagError):
    """An index is used with another embedding model or vector size than it was built with."""


class Embedder(Protocol):
    """Anything that turns texts into vectors: ``labkit.clients.Client`` is one."""

    def embed(
        self, texts: list[str], *, model: str | None = None, batch_size: int = 32
    ) -> np.ndarray: ...


# --- Tokens --------------------------------------------------------------------------------------


def _cost(piece: str) -> float:
    """Pieces (words or marks) that one regex match counts for."""
    return 1.0 if len(piece) <= LONG_WORD else len(piece) / CHARS_PER_TOKEN_LONG


def count_tokens(text: str) -> int:
    """Estimate the number of model tokens in ``text`` (no model needed; see TOKENS_PER_PIECE)."""
    pieces = sum(_cost(p) for p in _PIECE.findall(text))
    # round() first: in floats 100 * 1.1 is 110.00000000000001, which would ceil to 111.
    return math.ceil(round(pieces * TOKENS_PER_PIECE, 6))


def llama_token_counter(
    url: str, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> Callable[[str], int]:
    """A token counter that asks a llama.cpp server's ``/tokenize`` (exact, but one request each)."""
    session = requests.Session()
    session.headers.update(headers or {})  # the embedded runtime's: ``record.llama_headers``

    def count(text: str) -> int:
        try:
            response = session.post(
                url.rstrip("/") + "/tokenize", json={"content": text}, timeout=timeout
            )
            response.raise_for_status()
            return len(response.json()["tokens"])
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise RagError(
                f"Could not count tokens with {url}/tokenize: {exc}. That endpoint exists on "
                "llama.cpp's own server (the embedded runtime's embed_url), not on Ollama's API; "
                "use the default estimate (count_tokens) instead."
            ) from exc

    return count


def truncate_tokens(text: str, limit: int) -> str:
    """Cut ``text`` after about ``limit`` estimated tokens (what an embedding model would read)."""
    room = limit / TOKENS_PER_PIECE + 1e-9  # in pieces; + 1e-9 because 110 / 1.1 is 99.999...
    for match in _PIECE.finditer(text):
        cost = _cost(match.group())
        if cost > room:
            # A long run of characters is cut inside; an ordinary word is left out whole.
            return text[: match.start() + (int(room * CHARS_PER_TOKEN_LONG) if cost > 1 else 0)]
        room -= cost
    return text


# --- Documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A stretch of a document under one heading path, e.g. ("Annual Leave", "Carry-over")."""

    headings: tuple[str, ...]
    start: int  # character offsets of the section's body (the heading line excluded)
    end: int


@dataclass(frozen=True)
class Document:
    """One loaded file: its text, where it came from, and its sections."""

    name: str  # path relative to the folder it was loaded from, e.g. "leave-annual.md"
    path: str
    title: str
    text: str
    sections: tuple[Section, ...]
    superseded_by: str = ""  # set when the document says "Status: superseded by <name>"


# A line such as "- **Status:** superseded by leave-annual.md (version 4, ...)" under the title.
_SUPERSEDED = re.compile(r"^\W*status\W*superseded by\W*([^\s(),;]+)", re.IGNORECASE | re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_sections(text: str, markdown: bool = True) -> tuple[Section, ...]:
    """Split text into sections at Markdown headings (``#`` to ``######``; not inside code)."""
    if not markdown:
        return (Section((), 0, len(text)),)
    sections: list[Section] = []
    path: list[tuple[int, str]] = []  # (level, title) of the headings above this point
    body_start, in_fence, offset = 0, False, 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if match:
            if offset > body_start and text[body_start:offset].strip():
                sections.append(Section(tuple(t for _, t in path), body_start, offset))
            level = len(match.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, match.group(2).strip())]
            body_start = offset + len(line)
        offset += len(line)
    if text[body_start:].strip() or not sections:
        sections.append(Section(tuple(t for _, t in path), body_start, len(text)))
    return tuple(sections)


def read_document(
    path: str | Path, *, name: str | None = None, max_bytes: int = MAX_FILE_BYTES
) -> Document:
    """Read one text or Markdown file; raise DocumentError if it cannot be used."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DocumentError(f"Cannot read {path}: {exc.strerror or exc}. Check the path.") from exc
    if not path.is_file():
        raise DocumentError(f"{path} is not a file.")
    if size > max_bytes:
        raise DocumentError(
            f"{path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit. "
            "Split it into smaller files, or pass a larger max_bytes if you really mean it."
        )
    data = path.read_bytes()
    if not data.strip():
        raise DocumentError(f"{path} is empty: there is nothing to index.")
    if b"\0" in data[:8192]:
        raise DocumentError(
            f"{path} looks binary (it contains NUL bytes); only text is indexed. "
            "If it is UTF-16 text, save it as UTF-8."
        )
    try:
        text = data.decode("utf-8-sig")  # -sig: drop the byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}). Convert it first, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`."
        ) from exc
    text = text.replace("\r\n", "\n")
    markdown = path.suffix.lower() in (".md", ".markdown")
    sections = parse_sections(text, markdown)
    titles = [s.headings[0] for s in sections if s.headings]
    front = text[: sections[1].start] if len(sections) > 1 else text  # title and metadata
    newer = _SUPERSEDED.search(front)
    return Document(
        name or path.name,
        str(path),
        titles[0] if titles else path.stem,
        text,
        sections,
        superseded_by=newer.group(1).rstrip(".") if newer else "",
    )


def load_documents(
    source: str | Path | Iterable[str | Path],
    *,
    suffixes: Sequence[str] = TEXT_SUFFIXES,
    max_bytes: int = MAX_FILE_BYTES,
) -> list[Document]:
    """Load a folder (recursively), a file, or a list of files as Documents.

    A file you name yourself must be readable, or DocumentError says why. Files found in a
    folder that cannot be used (empty, binary, not UTF-8, too large, another type) are skipped
    with a logged warning naming the file and the reason.
    """
    paths = [source] if isinstance(source, (str, Path)) else list(source)
    docs: list[Document] = []
    for item in map(Path, paths):
        if not item.is_dir():
            docs.append(read_document(item, max_bytes=max_bytes))
            continue
        for file in sorted(p for p in item.rglob("*") if p.is_file()):
            name = file.relative_to(item).as_posix()
            if file.suffix.lower() not in suffixes:
                log.warning("Skipping %s: not one of the text types %s", file, ", ".join(suffixes))
                continue
            try:
                docs.append(read_document(file, name=name, max_bytes=max_bytes))
            except DocumentError as exc:
                log.warning("Skipping %s: %s", file, exc)
    if not docs:
        raise DocumentError(f"No readable documents in {source} (see the warnings above).")
    return docs


# --- Chunks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: what gets embedded, retrieved and shown to the model."""

    id: str  # "<document>#<n>"
    doc: str
    title: str
    headings: tuple[str, ...]
    start: int  # character offsets into the document's text
    end: int
    text: str
    tokens: int
    superseded_by: str = ""  # the document's newer version, if it has one

    @property
    def section(self) -> str:
        """The innermost heading below the title ("" for text before the first section)."""
        return self.headings[-1] if len(self.headings) > 1 else ""

    @property
    def source(self) -> str:
        """Where the chunk comes from, for people: "leave-annual.md § Carry-over"."""
        return f"{self.doc} § {self.section}" if self.section else self.doc

    def embed_text(self) -> str:
        """The text that is embedded: the heading path first, because it says what this is about."""
        # On the handbook the heading line lifts recall@1 from 0.47 to 0.58 and MRR from 0.76
        # to 0.84: a paragraph under "Carry-over" rarely says "carry-over" itself.
        context = " > ".join(self.headings) or self.title
        return f"{context}\n{self.text}"


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    opens_paragraph: bool


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _units(text: str, start: int, end: int, size: int, count: Callable[[str], int]) -> list[_Unit]:
    """Sentences (and lines of lists and tables) of text[start:end], none longer than ``size``."""
    units: list[_Unit] = []
    para_start = start
    breaks = [m.start() for m in _PARAGRAPH_BREAK.finditer(text, start, end)]
    for para_end in [*breaks, end]:
        first = True
        piece_start = para_start
        stops = [m.start() for m in _SENTENCE_END.finditer(text, para_start, para_end)]
        for piece_end in [*stops, para_end]:
            piece = text[piece_start:piece_end]
            lead = len(piece) - len(piece.lstrip())
            if piece.strip():
                for s, e in _split_long(text, piece_start + lead, piece_end, size, count):
                    units.append(_Unit(s, e, count(text[s:e]), first))
                    first = False
            piece_start = piece_end
        para_start = para_end
    return units


def _split_long(
    text: str, start: int, end: int, size: int, count: Callable[[str], int]
) -> list[tuple[int, int]]:
    """Cut an over-long sentence into runs of whole words of at most ``size`` tokens."""
    end = start + len(text[start:end].rstrip())
    tokens = count(text[start:end])
    words = [m.span() for m in re.finditer(r"\S+", text[start:end])]
    if tokens <= size or len(words) < 2:
        return [(start, end)]  # (one giant "word" stays whole; embedding cuts it off)
    per_run = max(1, int(len(words) * size / tokens))
    runs = []
    for i in range(0, len(words), per_run):
        group = words[i : i + per_run]
        # Words differ in length: a run that is still too long is cut again.
        runs += _split_long(text, start + group[0][0], start + group[-1][1], size, count)
    return runs


def _pack(units: list[_Unit], size: int, overlap: int) -> list[tuple[int, int]]:
    """Group units into chunks of at most ``size`` tokens; returns (first, end) unit ranges."""
    ranges: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        end, total = first, 0
        while end < len(units) and (end == first or total + units[end].tokens <= size):
            total += units[end].tokens
            end += 1
        if end < len(units):
            # Prefer to end at a paragraph boundary, if that keeps the chunk at least half full.
            for b in range(end, first, -1):
                if units[b].opens_paragraph and sum(u.tokens for u in units[first:b]) >= size / 2:
                    end = b
                    break
        ranges.append((first, end))
        if end >= len(units):
            break
        # The next chunk starts with the last sentences of this one, up to ``overlap`` tokens.
        back, carried = end, 0
        while back - 1 > first and carried + units[back - 1].tokens <= overlap:
            back -= 1
            carried += units[back].tokens
        first = back
    return ranges


def chunk_document(
    doc: Document,
    *,
    size: int = CHUNK_SIZE,
    overlap: int = CHUNK_OVERLAP,
    count: Callable[[str], int] = count_tokens,
) -> list[Chunk]:
    """Split one document into chunks; each stays inside one section and ends at a sentence."""
    if size < 1 or not 0 <= overlap < size:
        raise InvalidInput(
            f"need size >= 1 and 0 <= overlap < size (got size={size}, overlap={overlap})"
        )
    chunks: list[Chunk] = []
    for section in doc.sections:
        units = _units(doc.text, section.start, section.end, size, count)
        for first, end in _pack(units, size, overlap):
            start, stop = units[first].start, units[end - 1].end
            tokens = sum(u.tokens for u in units[first:end])
            text = doc.text[start:stop]
            chunk_id = f"{doc.name}#{len(chunks)}"
            chunks.append(
                Chunk(
                    chunk_id,
                    doc.name,
                    doc.title,
                    section.headings,
                    start,
                    stop,
                    text,
                    tokens,
                    doc.superseded_by,
                )
            )
    return chunks


def chunk_documents(
    docs: Iterable[Document],
    *,
    size: int = CHUNK_SIZE,
    overlap: int = CHUNK_OVERLAP,
    count: Callable[[str], int] = count_tokens,
) -> list[Chunk]:
    """Chunk every document: ``size`` and ``overlap`` are in tokens (see count_tokens)."""
    return [c for doc in docs for c in chunk_document(doc, size=size, overlap=overlap, count=count)]


# --- Embeddings ----------------------------------------------------------------------------------


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
    texts = [truncate_tokens(t, max_tokens) for t in texts]
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"Text number {i} is empty or blank: drop it, it means nothing.")
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


# --- The index -----------------------------------------------------------------------------------


def make_faiss_index(vectors: np.ndarray, kind: str = "flat") -> faiss.Index:
    """A FAISS inner-product index over normalised ``vectors``: "flat", "hnsw" or "ivf".

    Flat compares the query with every vector: exact, well under a millisecond for a
    handbook, ~40 ms per query at 100k vectors of 384 dims on two cores (bench/rag.py).
    HNSW (a graph) and IVF (clusters) look at a fraction of them: under a millisecond at
    that size, at the price of sometimes missing a true neighbour.
    """
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
    """One search result: the chunk, its cosine similarity to the query, and its rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int

    @property
    def source(self) -> str:
        """Document and section, for people."""
        return self.chunk.source

    def __str__(self) -> str:
        return f"[{self.rank}] {self.score:.3f} {self.source}: {self.chunk.text[:80]}..."


INDEX_FORMAT = "labkit-rag-index"
INDEX_VERSION = 1


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

    @property
    def dim(self) -> int:
        """Length of the vectors."""
        return int(self.faiss.d)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"<Index of {len(self)} chunks, {self.model} ({self.dim} dims), {self.kind}>"

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries with the index's own model, refusing vectors of another size."""
        if self.client is None:
            raise RagError(
                "This index has no client to embed queries: Index.load(path, client=...)."
            )
        vectors = embed_texts(
            queries, self.client, model=self.model, cache=self.cache, progress=False
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
        similarity, so the current version of a policy wins over the old one it replaced.
        """
        if k < 1:
            raise InvalidInput(f"k must be at least 1, not {k}.")
        # Fetch extra candidates: penalised chunks may drop out of the top k.
        wanted = min(len(self.chunks), 2 * k + 5) if superseded_penalty else k
        scores, ids = self.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), wanted)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            found = [
                (float(score) - (superseded_penalty if self.chunks[i].superseded_by else 0.0), i)
                for score, i in zip(row_scores, row_ids, strict=True)
                if i >= 0  # FAISS pads with -1 when the index has fewer than k vectors
            ]
            found.sort(key=lambda pair: -pair[0])
            results.append(
                [Hit(self.chunks[i], s, rank) for rank, (s, i) in enumerate(found[:k], start=1)]
            )
        return results

    def save(self, path: str | Path) -> Path:
        """Save to a folder (index.faiss, chunks.jsonl, meta.json), all or nothing."""
        path = Path(path)
        if path.exists() and not (path / "meta.json").exists() and any(path.iterdir()):
            raise IndexFileError(f"{path} exists and is not a saved index; choose another folder.")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write everything into a hidden sibling folder, then swap it in with renames: a crash
        # or a full disk leaves the old index (or nothing) in place, never half of a new one.
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            faiss.write_index(self.faiss, str(tmp / "index.faiss"))
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as out:
                for chunk in self.chunks:
                    out.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            meta = {
                "format": INDEX_FORMAT,
                "version": INDEX_VERSION,
                "model": self.model,
                "dim": self.dim,
                "count": len(self.chunks),
                "kind": self.kind,
                "metric": "inner product of L2-normalised vectors (cosine)",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
        except (OSError, RuntimeError) as exc:
            if old.exists() and not path.exists():
                old.rename(path)
            raise IndexFileError(f"Could not save the index to {path}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
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
        """Load a saved index; with a client, check now that its model gives vectors that fit.

        Pass ``model`` to insist on a model name: an index built with another one is refused.
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexFileError(
                f"No saved index at {path}. Build one with build_index(...) and index.save(path)."
            )
        meta = _read_meta(path)
        if model is not None and model != meta["model"]:
            raise EmbeddingMismatch(
                f"The index at {path} was built with {meta['model']!r}, not {model!r}; vectors of "
                "different models cannot be compared. Rebuild it with the model you want."
            )
        try:
            vectors = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as exc:
            raise IndexFileError(
                f"{path / 'index.faiss'} is missing or corrupt; rebuild the index."
            ) from exc
        chunks = _read_chunks(path / "chunks.jsonl")
        if (
            vectors.d != meta["dim"]
            or vectors.ntotal != meta["count"]
            or len(chunks) != meta["count"]
        ):
            raise IndexFileError(
                f"The files in {path} disagree (meta.json: {meta['count']} x {meta['dim']} dims; "
                f"index.faiss: {vectors.ntotal} x {vectors.d}; chunks.jsonl: {len(chunks)}). "
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


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFileError(
            f"{path / 'meta.json'} is missing or unreadable ({exc}); the folder is not a complete "
            "index. Rebuild it."
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise IndexFileError(
            f"{path / 'meta.json'} does not describe a labkit index; rebuild the index there."
        )
    if meta.get("version") != INDEX_VERSION:
        raise IndexFileError(f"{path} has index format version {meta.get('version')}; rebuild it.")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("dim"), int):
        raise IndexFileError(
            f"{path / 'meta.json'} lacks the model name or dimension; rebuild the index."
        )
    meta.setdefault("kind", "flat")
    meta.setdefault("count", -1)
    return meta


def _read_chunks(file: Path) -> list[Chunk]:
    chunks: list[Chunk] = []
    try:
        with open(file, encoding="utf-8") as lines:
            for line in lines:
                fields = json.loads(line)
                fields["headings"] = tuple(fields["headings"])
                chunks.append(Chunk(**fields))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise IndexFileError(
            f"{file} is missing or corrupt (at chunk {len(chunks) + 1}): {exc}. Rebuild the index."
        ) from exc
    return chunks


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


# --- Answering -----------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You answer questions about a company's documents. Use only the numbered passages you are "
    "given. After each fact, cite its passage number in square brackets, like [1]. If the "
    f'passages do not contain the answer, reply only: "{NOT_FOUND}"'
)


def format_passages(hits: Sequence[Hit]) -> str:
    """The passages as the model sees them: a number, the source, then the text."""
    blocks = []
    for n, hit in enumerate(hits, start=1):
        where = " > ".join(hit.chunk.headings) or hit.chunk.title
        if hit.chunk.superseded_by:
            where += f"; OUTDATED, replaced by {hit.chunk.superseded_by}"
        blocks.append(f"[{n}] ({hit.chunk.doc} — {where})\n{hit.chunk.text.strip()}")
    return "\n\n".join(blocks)


def build_prompt(question: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    """Chat messages asking the model to answer ``question`` from ``hits`` only, with citations."""
    user = f"Passages:\n\n{format_passages(hits)}\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class _Reply(Protocol):
    @property
    def text(self) -> str: ...


class Chatter(Embedder, Protocol):
    """A client that can embed and chat: ``labkit.clients.Client`` is one."""

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> _Reply: ...


@dataclass(frozen=True)
class Answer:
    """What ``answer`` returns: the text, the passages it cited, and all it was given."""

    text: str
    sources: list[Hit]  # the passages the answer cites, in order of first citation
    passages: list[Hit]  # every passage put in the prompt (empty: nothing relevant was found)
    found: bool  # False when retrieval found nothing relevant and the model was not asked
    reply: object = None  # the client's full Reply, for timings and token counts

    def __str__(self) -> str:
        if self.sources:
            listed = "\n".join(f"[{h.rank}] {h.source}" for h in self.sources)
            return f"{self.text}\n\nSources:\n{listed}"
        if self.passages:  # the model cited nothing: show what it was given
            listed = "\n".join(f"[{h.rank}] {h.source}" for h in self.passages)
            return f"{self.text}\n\nPassages given (none cited):\n{listed}"
        return self.text


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_passages(text: str, passages: Sequence[Hit]) -> list[Hit]:
    """The passages that ``text`` cites as [1], [2] or [1, 2]; numbers out of range are ignored."""
    cited: list[Hit] = []
    for match in _CITATION.finditer(text):
        for number in map(int, match.group(1).split(",")):
            if 1 <= number <= len(passages) and passages[number - 1] not in cited:
                cited.append(passages[number - 1])
    return cited


def answer(
    question: str,
    index: Index,
    client: Chatter,
    *,
    k: int = 3,
    min_score: float = MIN_SCORE,
    max_tokens: int = 200,
    seed: int = 42,
) -> Answer:
    """Answer from the index's documents with citations, or say they do not contain it."""
    hits = [h for h in index.search(question, k) if h.score >= min_score]
    if not hits:
        # Nothing close enough: asking the model anyway invites an invented answer.
        return Answer(NOT_FOUND, [], [], found=False)
    reply = client.chat(
        build_prompt(question, hits), temperature=0.0, seed=seed, max_tokens=max_tokens
    )
    text = reply.text.strip()
    return Answer(text, cited_passages(text, hits), hits, found=True, reply=reply)
