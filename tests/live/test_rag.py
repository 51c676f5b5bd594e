"""labkit.rag: loading, chunking, embedding through the live runtime, FAISS, saving, answering.

Documents are small ones written into temporary folders, so every expected hit is known.
Bad input (empty, binary, non-UTF-8, huge files; missing, corrupt or mismatched indexes) must
end in a clear LabkitError or a logged skip, never in a silent wrong answer.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import requests

from labkit import Client, discovery, rag
from labkit.errors import InvalidInput, LabkitError
from labkit.rag import (
    NOT_FOUND,
    Chunk,
    DocumentError,
    EmbeddingCache,
    EmbeddingMismatch,
    Index,
    RagError,
    answer,
    build_index,
    chunk_document,
    chunk_documents,
    count_tokens,
    load_documents,
    read_document,
)

LEAVE = """# Annual Leave

- **Policy owner:** People Team
- **Version:** 4

## Entitlement

A full-time employee receives 25 working days of paid annual leave per year. Part-time
employees receive leave pro rata to their contracted hours.

## Carry-over

You may carry up to 5 days of unused annual leave into the next year. Carried-over days must
be used by 31 March; any days still unused on that date lapse.

### Exceptions

If sickness or parental leave stopped you from taking your leave, all affected days carry over.
"""

LEAVE_OLD = """# Annual Leave (2019 version)

- **Status:** superseded by leave.md (version 4). Kept for reference only.

## Entitlement

A full-time employee receives 22 working days of paid annual leave per year.
"""

CARS = """# Company Cars

## Charging

Electric company cars are charged with a charging card that works at public stations. Charging
at home is refunded at the electricity price on your contract, up to 150 EUR a month.

## Accidents

Report any accident or damage to the fleet coordinator within 24 hours and send photos.
"""

SECURITY = """Passwords must be at least fourteen characters long and must never be reused.
Use the company password manager to create and store them. Report phishing emails with the
report button in your mail client; never click links in messages you did not expect.
"""


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Create files in ``folder`` (text as UTF-8)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"leave.md": LEAVE, "leave-2019.md": LEAVE_OLD, "cars.md": CARS}
    return write(tmp_path_factory.mktemp("docs"), {**files, "security.txt": SECURITY})


@pytest.fixture(scope="module")
def client(rt: discovery.Runtime) -> Iterator[Client]:
    """A client for the live runtime (its embedding model and its chat model)."""
    with Client(rt.url, dialect=rt.dialect, model=rt.chat_model, embed_model=rt.embed_model) as c:
        yield c


@pytest.fixture(scope="module")
def index(docs_dir: Path, client: Client) -> Index:
    return build_index(chunk_documents(load_documents(docs_dir)), client, progress=False)


class Spy:
    """Passes every call on to the real client and counts them (no answer is made up)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.embed_model = client.embed_model
        self.calls: dict[str, list[Any]] = {"embed": [], "chat": []}

    def embed(self, texts: list[str], *, model: str | None = None, batch_size: int = 32) -> Any:
        self.calls["embed"].append(list(texts))
        return self.client.embed(texts, model=model, batch_size=batch_size)

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        self.calls["chat"].append(messages)
        return self.client.chat(messages, **kwargs)


# --- loading -------------------------------------------------------------------------------------


def test_load_folder_keeps_names_titles_and_sections(docs_dir: Path) -> None:
    docs = {d.name: d for d in load_documents(docs_dir)}
    assert set(docs) == {"cars.md", "leave-2019.md", "leave.md", "security.txt"}
    leave = docs["leave.md"]
    assert leave.title == "Annual Leave" and leave.path.endswith("leave.md")
    assert [s.headings for s in leave.sections] == [
        ("Annual Leave",),
        ("Annual Leave", "Entitlement"),
        ("Annual Leave", "Carry-over"),
        ("Annual Leave", "Carry-over", "Exceptions"),
    ]
    body = leave.text[leave.sections[2].start : leave.sections[2].end]
    assert body.strip().startswith("You may carry up to 5 days") and "##" not in body
    assert (
        docs["security.txt"].title == "security" and docs["security.txt"].sections[0].headings == ()
    )
    assert docs["leave-2019.md"].superseded_by == "leave.md" and leave.superseded_by == ""


def test_headings_inside_code_blocks_are_not_sections(tmp_path: Path) -> None:
    text = "# Guide\n\n## Shell\n\n```\n# not a heading\necho hi\n```\n\nAfter the code.\n"
    doc = read_document(write(tmp_path, {"guide.md": text}) / "guide.md")
    assert [s.headings for s in doc.sections] == [("Guide", "Shell")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"  \n\n\t\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_unusable_files_are_refused_by_name_and_skipped_in_folders(
    tmp_path: Path, content: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write(tmp_path, {"bad.md": content, "good.md": CARS})
    with pytest.raises(DocumentError, match=reason) as raised:
        load_documents(folder / "bad.md")
    assert "bad.md" in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="labkit.rag"):
        docs = load_documents(folder)
    assert [d.name for d in docs] == ["good.md"]
    assert any("bad.md" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_other_file_types_in_a_folder_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write(tmp_path, {"notes.md": CARS, "report.pdf": b"%PDF-1.7\n", "data.csv": "a,b\n"})
    with caplog.at_level(logging.WARNING, logger="labkit.rag"):
        docs = load_documents(folder)
    assert [d.name for d in docs] == ["notes.md"]
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "report.pdf" in skipped and "data.csv" in skipped


def test_a_10_mb_document_is_refused_unless_allowed(tmp_path: Path) -> None:
    paragraph = "Employees receive a travel allowance for each trip they make. " * 20 + "\n\n"
    big = tmp_path / "big.md"
    big.write_text("# Big\n\n## Travel\n\n" + paragraph * (10_000_000 // len(paragraph)))
    assert big.stat().st_size > 9_900_000
    with pytest.raises(DocumentError, match=r"MB limit") as raised:
        load_documents(big)
    assert "max_bytes" in str(raised.value)
    # Allowed explicitly, it loads and chunks like any other document (in seconds).
    doc = read_document(big, max_bytes=20_000_000)
    chunks = chunk_document(doc, size=400, overlap=40)
    assert len(chunks) > 5000 and max(c.tokens for c in chunks) <= 400


def test_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="Cannot read"):
        load_documents(tmp_path / "nowhere.md")
    with pytest.raises(DocumentError, match="No readable documents"):
        load_documents(write(tmp_path / "empty", {"blank.md": ""}))
    assert issubclass(DocumentError, LabkitError)


# --- chunking ------------------------------------------------------------------------------------


def long_doc(tmp_path: Path) -> rag.Document:
    sentences = [
        f"Rule {i} says that request number {i} needs {i % 7 + 1} days." for i in range(60)
    ]
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, 60, 5)]
    text = "# Rules\n\n## All rules\n\n" + "\n\n".join(paragraphs) + "\n\n## Short\n\nOne line.\n"
    return read_document(write(tmp_path, {"rules.md": text}) / "rules.md")


def test_chunks_know_their_document_headings_and_offsets(tmp_path: Path) -> None:
    doc = long_doc(tmp_path)
    chunks = chunk_document(doc, size=60, overlap=9)
    assert len(chunks) > 5
    for c in chunks:
        assert c.text == doc.text[c.start : c.end]
        assert c.doc == "rules.md" and c.title == "Rules"
        assert c.tokens <= 60 and c.tokens == pytest.approx(count_tokens(c.text), abs=3)
        assert c.text.rstrip().endswith(".")  # whole sentences only
    assert chunks[-1].headings == ("Rules", "Short") and chunks[-1].text == "One line."
    assert chunks[-1].source == "rules.md § Short"
    assert chunks[0].embed_text().startswith("Rules > All rules\n")
    assert len({c.id for c in chunks}) == len(chunks)


def test_overlap_repeats_the_end_of_the_previous_chunk(tmp_path: Path) -> None:
    doc = long_doc(tmp_path)
    body = [c for c in chunk_document(doc, size=60, overlap=15) if c.section == "All rules"]
    for before, after in itertools.pairwise(body):
        assert after.start < before.end  # they share text...
        assert after.start > before.start  # ...and always move forward
        assert count_tokens(doc.text[after.start : before.end]) <= 15 + 2
    plain = [c for c in chunk_document(doc, size=60, overlap=0) if c.section == "All rules"]
    for before, after in itertools.pairwise(plain):
        assert after.start >= before.end
    covered = "".join(doc.text[c.start : c.end] for c in plain)
    assert covered.count("Rule ") == 60  # nothing lost, nothing doubled


def test_chunks_prefer_paragraph_ends(tmp_path: Path) -> None:
    doc = long_doc(tmp_path)
    # Each paragraph is ~70 tokens: with room for two, chunks end where paragraphs end.
    chunks = [c for c in chunk_document(doc, size=160, overlap=0) if c.section == "All rules"]
    assert all(doc.text[c.end : c.end + 2] == "\n\n" for c in chunks[:-1])


def test_a_sentence_longer_than_a_chunk_is_cut_between_words(tmp_path: Path) -> None:
    text = "# Log\n\n" + " ".join(f"item{i}" for i in range(500)) + "\n"
    doc = read_document(write(tmp_path, {"log.md": text}) / "log.md")
    chunks = chunk_document(doc, size=50, overlap=0)
    assert len(chunks) >= 10 and all(c.tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()[2:]


def test_bad_chunk_settings_are_refused(tmp_path: Path) -> None:
    doc = long_doc(tmp_path)
    for size, overlap in ((0, 0), (100, 100), (100, -1)):
        with pytest.raises(InvalidInput, match="overlap"):
            chunk_document(doc, size=size, overlap=overlap)


def test_exact_counter_agrees_with_the_estimate_and_chunks_fit(tmp_path: Path) -> None:
    from labkit import runtime

    record = runtime.read_record()
    if record is None:
        pytest.skip("the kit's embedded runtime is not the one running here")
    exact = rag.exact_counter(record.embed_url, headers=record.llama_headers)
    text = LEAVE.split("## Carry-over")[1]
    assert exact(text) <= count_tokens(text) <= 2 * exact(text)  # errs high, not wildly
    doc = read_document(write(tmp_path, {"leave.md": LEAVE}) / "leave.md")
    assert all(exact(c.text) <= 30 for c in chunk_document(doc, size=30, overlap=0, count=exact))
    with pytest.raises(LabkitError, match="tokenize"):
        rag.exact_counter(record.url)("hello")  # Ollama's dialect has no /tokenize


# --- embedding and searching (live) --------------------------------------------------------------


def test_search_finds_the_right_section(index: Index) -> None:
    assert len(index) >= 6 and index.dim > 0 and "flat" in repr(index)
    hits = index.search("How many vacation days can I take into next year?", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].chunk.source == "leave.md § Carry-over"
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert index.search("phishing emails and password length", k=1)[0].chunk.doc == "security.txt"


def test_superseded_documents_rank_below_their_replacement(index: Index) -> None:
    question = "How many days of paid annual leave does a full-time employee get?"
    plain = index.search(question, k=5, superseded_penalty=0.0)
    ranked = index.search(question, k=5)
    old = next(h for h in plain if h.chunk.doc == "leave-2019.md")
    moved = next(h for h in ranked if h.chunk.id == old.chunk.id)
    assert moved.score <= old.score - rag.SUPERSEDED_PENALTY + 1e-5
    current = min(h.rank for h in ranked if h.chunk.doc == "leave.md")
    assert moved.rank > current, "the current version wins whenever both are retrieved"
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    assert [h.rank for h in ranked] == [1, 2, 3, 4, 5]
    # A question worded exactly like the old text still gets the current version first.
    echo = "A full-time employee receives 22 working days of paid annual leave per year."
    docs = [h.chunk.doc for h in index.search(echo, k=3)]
    assert docs.index("leave.md") < docs.index("leave-2019.md"), docs
    # A penalty of 1 (cosine similarity's whole range) puts old versions after everything.
    last = [h.chunk.doc for h in index.search(question, k=len(index), superseded_penalty=1.0)]
    old_chunks = last.count("leave-2019.md")
    assert old_chunks >= 1 and last[-old_chunks:] == ["leave-2019.md"] * old_chunks


def test_embedding_is_batched_cached_and_truncated(docs_dir: Path, client: Client) -> None:
    chunks = chunk_documents(load_documents(docs_dir))
    spy, cache = Spy(client), EmbeddingCache()
    first = build_index(chunks, spy, batch_size=3, cache=cache, progress=False)
    assert [len(batch) for batch in spy.calls["embed"]] == [3] * (len(chunks) // 3) + (
        [len(chunks) % 3] if len(chunks) % 3 else []
    )
    assert len(cache) == len(chunks)
    spy.calls["embed"].clear()
    again = build_index(chunks, spy, cache=cache, progress=False)
    assert spy.calls["embed"] == []  # every vector came from the cache
    vectors = first.faiss.reconstruct_n(0, len(first))
    assert np.allclose(vectors, again.faiss.reconstruct_n(0, len(again)))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def hex_blob(chars: int) -> str:
    """A long run of hex digits, like a hash or an ID pasted into a document."""
    return "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(chars // 64 + 1))[
        :chars
    ]


def test_no_chunk_exceeds_the_size_even_with_an_inline_image(tmp_path: Path) -> None:
    image = base64.b64encode(np.random.default_rng(3).bytes(150_000)).decode()
    text = (
        "# Badges\n\n## Your badge\n\nThis is the badge you get on day one. "
        f"![badge](data:image/png;base64,{image})\n\nLost badges are replaced by reception.\n"
    )
    doc = read_document(write(tmp_path, {"badges.md": text}) / "badges.md")
    for size in (50, rag.CHUNK_SIZE):
        chunks = chunk_document(doc, size=size, overlap=size // 10)
        assert all(count_tokens(c.text) <= size and c.tokens <= size for c in chunks)
        joined = "".join(c.text for c in chunks)
        assert image[:1000] in joined and image[-1000:] in joined  # split, not lost
        assert any("replaced by reception" in c.text for c in chunks)


def test_a_heading_only_document_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write(tmp_path, {"empty.md": "# Travel\n\n## Hotels\n\n### Limits\n", "cars.md": CARS})
    with caplog.at_level(logging.WARNING, logger="labkit.rag"):
        docs = load_documents(folder)
    assert "empty.md" in caplog.text and "no text under them" in caplog.text
    assert "cars.md" not in caplog.text
    assert chunk_documents([d for d in docs if d.name == "empty.md"]) == []


def test_a_too_long_question_gets_a_clear_message(index: Index) -> None:
    with pytest.raises(InvalidInput, match=r"question is ~[0-9]+ tokens long") as raised:
        index.search("How many days of leave do I get? " * 200)
    assert "embedding model reads only" in str(raised.value)
    assert index.search("How many days of leave do I get? " * 3, k=1)  # a normal one is fine


def test_long_texts_are_cut_to_the_model_window(client: Client) -> None:
    # Texts are cut to what the model reads before they are sent, whatever the server does
    # with longer ones (llama.cpp's own /v1/embeddings refuses them; Ollama cuts them).
    with Client(client.url, dialect="openai", embed_model=client.embed_model) as openai_style:
        spy = Spy(openai_style)
        long_text = " ".join(["charging card"] * 1000)  # 2,000 words
        blob = "Checksum: " + hex_blob(5000)  # one "word" of thousands of word pieces
        vectors = rag.embed_texts(
            [long_text, blob], spy, model=spy.embed_model or "", progress=False
        )
        assert vectors.shape == (2, index_dim(client))
        assert all(count_tokens(t) <= rag.EMBED_MAX_TOKENS + 1 for t in spy.calls["embed"][0])


def index_dim(client: Client) -> int:
    return int(client.embed(["dimension"]).shape[1])


def test_progress_bar_is_shown(
    docs_dir: Path, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks = chunk_documents(load_documents(docs_dir))
    build_index(chunks, client, progress=True, batch_size=4)
    err = capsys.readouterr().err
    assert "embedding" in err and f"{len(chunks)}/{len(chunks)}" in err


def test_blank_texts_and_no_chunks_are_refused(client: Client, index: Index) -> None:
    model = client.embed_model or ""
    with pytest.raises(InvalidInput, match=r"positions \[1\] are empty or blank"):
        rag.embed_texts(["fine", "  "], client, model=model, progress=False)
    with pytest.raises(InvalidInput, match="No texts"):
        rag.embed_texts([], client, model=model, progress=False)
    for blank in ("", "   ", "\n\t"):
        with pytest.raises(InvalidInput, match="The question is empty") as raised:
            index.search(blank)
        assert "number" not in str(raised.value) and "type what you want" in str(raised.value)
    with pytest.raises(RagError, match="No chunks"):
        build_index([], client)


def test_bad_k_and_kind(index: Index) -> None:
    with pytest.raises(InvalidInput, match="k must be"):
        index.search("anything", k=0)
    with pytest.raises(InvalidInput, match="kind"):
        rag.make_faiss_index(np.ones((3, 4), dtype=np.float32), "tree")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_flat(kind: str) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    faiss.normalize_L2(vectors)
    flat, other = rag.make_faiss_index(vectors, "flat"), rag.make_faiss_index(vectors, kind)
    _, exact = flat.search(vectors[:50], 1)
    _, found = other.search(vectors[:50], 1)
    assert np.mean(exact[:, 0] == found[:, 0]) >= 0.9  # each vector finds itself


# --- saving and loading --------------------------------------------------------------------------


def synthetic_index(dim: int = 8, count: int = 5, model: str = "test-model") -> Index:
    """An index over random vectors: saving and loading need no runtime."""
    vectors = np.random.default_rng(0).standard_normal((count, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    chunks = [
        Chunk(f"d.md#{i}", "d.md", "D", ("D", f"S{i}"), 0, 1, f"text {i}", 2) for i in range(count)
    ]
    return Index(rag.make_faiss_index(vectors, "flat"), chunks, model=model)


def edit_meta(folder: Path, **changes: Any) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **changes}))


def test_an_index_of_another_model_is_refused(tmp_path: Path, index: Index, client: Client) -> None:
    saved = index.save(tmp_path / "idx")
    assert Index.load(saved, client).search("charging at home", k=1)[0].chunk.doc == "cars.md"
    with pytest.raises(EmbeddingMismatch, match="nomic-embed-text"):
        Index.load(saved, client, model="nomic-embed-text")
    # Built under the same model name, but with vectors of another size: another model.
    other = synthetic_index(dim=index.dim + 8, model=index.model).save(tmp_path / "other")
    with pytest.raises(EmbeddingMismatch, match=rf"{index.dim + 8}-dim") as raised:
        Index.load(other, client)
    assert "Rebuild" in str(raised.value)
    # Built with a model this runtime does not have.
    edit_meta(saved, model="mxbai-embed-large")
    with pytest.raises(EmbeddingMismatch, match="does not have"):
        Index.load(saved, client)
    assert issubclass(EmbeddingMismatch, LabkitError)


# --- answering -----------------------------------------------------------------------------------


def test_prompt_numbers_passages_and_names_sources(index: Index) -> None:
    hits = index.search("How many days of annual leave?", k=3)
    messages = rag.build_prompt("How many days of annual leave?", hits)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "only" in messages[0]["content"] and '"citations"' in messages[0]["content"]
    user = messages[1]["content"]
    for n, hit in enumerate(hits, start=1):
        assert f"[{n}] ({hit.chunk.doc}" in user and hit.chunk.text.strip() in user
    assert user.rstrip().endswith("Question: How many days of annual leave?")
    old = index.search("22 working days (2019 version)", k=6, superseded_penalty=0.0)
    assert "OUTDATED, replaced by leave.md" in rag.format_passages(old)


def test_cited_passages_reads_bracket_numbers(index: Index) -> None:
    hits = index.search("annual leave", k=3)
    text = "You get 25 days [2]. Unused days lapse [1, 2]; see also [7] and [0]."
    assert rag.cited_passages(text, hits) == [hits[1], hits[0]]
    assert rag.cited_passages("No citations here.", hits) == []


def test_answer_is_structured_and_cites_what_it_was_given(index: Index, client: Client) -> None:
    spy = Spy(client)
    result = answer("How many days of annual leave can I carry over?", index, spy, max_tokens=80)
    assert result.found and len(spy.calls["chat"]) == 1
    reply = json.loads(result.reply.text)  # type: ignore[attr-defined]
    assert result.structured and set(reply) == {"citations", "answer"}
    assert reply["citations"] and all(1 <= n <= len(result.passages) for n in reply["citations"])
    if not result.refused:  # constrained decoding makes even the bundled model cite
        assert result.sources and all(h in result.passages for h in result.sources)
        assert result.text == reply["answer"].strip()
    assert str(result).startswith(result.text)
    assert all(h.source in str(result) for h in result.sources or result.passages)


def test_context_window_comes_from_the_runtime(client: Client) -> None:
    window = rag.context_window(client)
    assert window >= 512  # the kit's runtime: 2048 per slot
    ps = requests.get(client.url + "/api/ps", timeout=10).json()
    assert window in {m.get("context_length") for m in ps.get("models", [])}


def test_answer_fits_the_prompt_to_the_window_and_says_what_it_dropped(
    index: Index, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # An index saved by an older kit can hold a passage far larger than any window: one with
    # an inline base64 image of ~150k tokens. The vectors are real; the text is the image.
    image = base64.b64encode(np.random.default_rng(5).bytes(120_000)).decode()
    texts = ["Badge photo " + image, "Lost badges are replaced by reception within a day."]
    chunks = [
        Chunk(f"badges.md#{i}", "badges.md", "Badges", ("Badges", "Lost badges"), 0, 1, t, 9)
        for i, t in enumerate(texts)
    ]
    vectors = client.embed(["Badges > Lost badges: who replaces a lost badge"] * 2)
    faiss.normalize_L2(vectors)
    huge = Index(rag.make_faiss_index(vectors), chunks, model=index.model, client=client)
    with caplog.at_level(logging.WARNING, logger="labkit.rag"):
        result = answer(
            "Who replaces a lost badge?", huge, client, k=2, max_tokens=40, gate=rag.ScoreGate(0)
        )
    assert [h.chunk.id for h in result.dropped] == ["badges.md#0"]
    assert [h.chunk.id for h in result.passages] == ["badges.md#1"]
    assert "Left out 1 passage" in caplog.text and "badges.md" in str(result)
    prompt = rag.build_prompt("Who replaces a lost badge?", result.passages)
    assert sum(count_tokens(m["content"]) for m in prompt) <= rag.context_window(client) - 40


def test_a_small_window_keeps_the_best_passages_only(index: Index, client: Client) -> None:
    question = "How many days of annual leave can I carry over?"
    full = answer(question, index, client, k=3, max_tokens=40, gate=rag.ScoreGate(0))
    small = answer(question, index, client, k=3, max_tokens=40, gate=rag.ScoreGate(0), context=330)
    assert len(full.passages) == 3 and not full.dropped
    # Compared by chunk and rank: each answer() embeds the question anew, and the server's
    # batching with other requests can move a cosine in its 7th digit.
    passages = [(h.chunk.id, h.rank) for h in full.passages]
    kept = [(h.chunk.id, h.rank) for h in small.passages]
    # Best first; a passage too large for what is left is dropped, a smaller later one may fit.
    assert 1 <= len(kept) < 3 and kept == [p for p in passages if p in kept]
    assert [(h.chunk.id, h.rank) for h in small.dropped] == [p for p in passages if p not in kept]
    with pytest.raises(InvalidInput, match="no room"):
        answer(question, index, client, max_tokens=40, gate=rag.ScoreGate(0), context=60)


def test_answer_says_not_in_the_documents_without_asking_the_model(
    index: Index, client: Client
) -> None:
    spy = Spy(client)
    question = "What is the boiling point of liquid nitrogen in kelvin?"
    hits = index.search(question, k=5)
    assert rag.HybridGate().score(question, hits, index) < rag.GATE_THRESHOLD, "this far off"
    result = answer(question, index, spy)
    assert not result.found and result.text == NOT_FOUND
    assert result.sources == [] and result.passages == [] and result.reply is None
    assert spy.calls["chat"] == []  # the model was never asked
