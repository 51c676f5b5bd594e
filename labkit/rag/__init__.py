"""Retrieval-augmented generation: documents, chunks, embeddings, a FAISS index, grounded answers.

The whole pipeline in five lines::

    docs = load_documents("data/hr-handbook")
    chunks = chunk_documents(docs)                     # passages that never cross a heading
    index = build_index(chunks, client)                # embeds through the runtime, FAISS inside
    index.search("How many days of annual leave?", k=3)
    answer("How many days of annual leave?", index, client)   # text + cited sources

One file per step: ``documents.py``, ``chunking.py``, ``embeddings.py``, ``index.py``,
``gate.py`` (is the answer in the documents at all?), ``rerank.py`` (a second look at the best
chunks, sentence by sentence), ``answer.py``, ``evaluation.py``
(recall@k, MRR, calibrating the gate, the chunking sweep) and ``quality.py`` (answer-level
checks: correct, cited, grounded, refused). Token counts come from
``labkit.tokens``, the estimate the whole kit shares.
"""

from labkit.errors import DocumentError, EmbeddingMismatch, IndexFileError, RagError
from labkit.rag.answer import (
    NOT_FOUND,
    SYSTEM_PROMPT,
    Answer,
    Chatter,
    answer,
    answer_schema,
    build_prompt,
    cited_passages,
    context_window,
    format_passages,
)
from labkit.rag.chunking import CHUNK_OVERLAP, CHUNK_SIZE, Chunk, chunk_document, chunk_documents
from labkit.rag.documents import (
    MAX_FILE_BYTES,
    TEXT_SUFFIXES,
    Document,
    Section,
    load_documents,
    parse_sections,
    read_document,
)
from labkit.rag.embeddings import (
    EMBED_MAX_TOKENS,
    Embedder,
    EmbeddingCache,
    embed_texts,
    embedding_model,
)
from labkit.rag.evaluation import (
    ANSWERABLE,
    QUESTION_TYPES,
    Calibration,
    Source,
    calibrate_gate,
    calibrate_threshold,
    evaluate,
    evaluate_by_type,
    first_hit_ranks,
    is_hit,
    load_eval_set,
    misses,
    plot_sweep,
    refusals,
    score_hits,
    sweep,
)
from labkit.rag.gate import GATE_THRESHOLD, MIN_SCORE, Gate, HybridGate, ScoreGate
from labkit.rag.index import (
    INDEX_FORMAT,
    INDEX_VERSION,
    SUPERSEDED_PENALTY,
    Hit,
    Index,
    build_index,
    make_faiss_index,
)
from labkit.rag.quality import AnswerReport, grade_answers
from labkit.rag.rerank import SentenceReranker
from labkit.tokens import LONG_WORD, exact_counter, truncate_tokens
from labkit.tokens import estimate_tokens as count_tokens

__all__ = [
    "ANSWERABLE",
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "EMBED_MAX_TOKENS",
    "GATE_THRESHOLD",
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "LONG_WORD",
    "MAX_FILE_BYTES",
    "MIN_SCORE",
    "NOT_FOUND",
    "QUESTION_TYPES",
    "SUPERSEDED_PENALTY",
    "SYSTEM_PROMPT",
    "TEXT_SUFFIXES",
    "Answer",
    "AnswerReport",
    "Calibration",
    "Chatter",
    "Chunk",
    "Document",
    "DocumentError",
    "Embedder",
    "EmbeddingCache",
    "EmbeddingMismatch",
    "Gate",
    "Hit",
    "HybridGate",
    "Index",
    "IndexFileError",
    "RagError",
    "ScoreGate",
    "Section",
    "SentenceReranker",
    "Source",
    "answer",
    "answer_schema",
    "build_index",
    "build_prompt",
    "calibrate_gate",
    "calibrate_threshold",
    "chunk_document",
    "chunk_documents",
    "cited_passages",
    "context_window",
    "count_tokens",
    "embed_texts",
    "embedding_model",
    "evaluate",
    "evaluate_by_type",
    "exact_counter",
    "first_hit_ranks",
    "format_passages",
    "grade_answers",
    "is_hit",
    "load_documents",
    "load_eval_set",
    "make_faiss_index",
    "misses",
    "parse_sections",
    "plot_sweep",
    "read_document",
    "refusals",
    "score_hits",
    "sweep",
    "truncate_tokens",
]
