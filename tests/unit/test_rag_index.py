"""Saving and loading an index: never lose one, never touch other files, refuse damaged ones.

The indexes here hold random vectors: saving and loading need no runtime. Interruptions are
real: a child process saving over an existing index is killed between every two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from labkit import rag
from labkit.errors import IndexFileError, InvalidInput, LabkitError
from labkit.rag import Chunk, Index

ROOT = Path(__file__).resolve().parents[2]


def synthetic_index(dim: int = 8, count: int = 5, model: str = "test-model") -> Index:
    """An index over random vectors, one chunk per vector."""
    vectors = np.random.default_rng(count).standard_normal((count, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    chunks = [
        Chunk(f"d.md#{i}", "d.md", "D", ("D", f"S{i}"), 0, 1, f"text {i}", 2) for i in range(count)
    ]
    return Index(rag.make_faiss_index(vectors, "flat"), chunks, model=model)


def meta(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return data


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    index = synthetic_index()
    saved = index.save(tmp_path / "idx")
    files = meta(saved)["files"]
    assert sorted(p.name for p in saved.iterdir()) == sorted([*files.values(), "meta.json"])
    assert meta(saved)["model"] == "test-model" and meta(saved)["count"] == 5
    loaded = Index.load(saved)
    assert loaded.chunks == index.chunks and loaded.model == "test-model" and loaded.dim == 8
    probe = index.faiss.reconstruct_n(0, 2)
    assert [[h.chunk.id for h in r] for r in loaded.search_vectors(probe, 2)] == [
        [h.chunk.id for h in r] for r in index.search_vectors(probe, 2)
    ]
    # Saving again replaces the index: the old save's files go, nothing else is left over.
    synthetic_index(count=3).save(saved)
    assert len(Index.load(saved)) == 3 and len(list(saved.iterdir())) == 3
    with pytest.raises(LabkitError, match="no client"):
        loaded.search("a question")


def test_save_never_touches_files_it_did_not_write(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    synthetic_index().save(folder)
    (folder / "NOTES.md").write_text("my notes")
    (folder / "index-deadbeef.faiss").write_text("a file that only looks like ours")
    (tmp_path / "sibling.txt").write_text("next door")
    synthetic_index(count=3).save(folder)
    synthetic_index(count=4).save(folder)
    assert (folder / "NOTES.md").read_text() == "my notes"
    assert (folder / "index-deadbeef.faiss").read_text() == "a file that only looks like ours"
    assert (tmp_path / "sibling.txt").read_text() == "next door"
    assert len(Index.load(folder)) == 4
    # A folder full of someone's documents is fine too: three files are added, none removed.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.md").write_text("# Keep")
    synthetic_index().save(docs)
    assert (docs / "keep.md").read_text() == "# Keep" and len(Index.load(docs)) == 5


SAVE_AND_DIE = """
import os, sys
import numpy as np, faiss
from labkit import rag
from labkit.rag import Chunk, Index, index as module

die_at = sys.argv[2]
def step(name):
    if name == die_at:
        os._exit(9)  # as abrupt as a kill: no clean-up, no finally blocks
module._step = step
vectors = np.eye(8, dtype=np.float32)[:3]
chunks = [Chunk(f"new.md#{i}", "new.md", "N", ("N",), 0, 1, f"new {i}", 2) for i in range(3)]
Index(rag.make_faiss_index(vectors, "flat"), chunks, model="test-model").save(sys.argv[1])
"""


@pytest.mark.parametrize("step", ["index", "chunks", "meta", "never"])
def test_a_save_killed_at_any_step_leaves_a_complete_index(tmp_path: Path, step: str) -> None:
    folder = synthetic_index(count=5).save(tmp_path / "idx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SAVE_AND_DIE), str(folder), step],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == (0 if step == "never" else 9), child.stderr
    loaded = Index.load(folder)  # never raises: either index is complete
    expected = 5 if step in ("index", "chunks") else 3
    assert len(loaded) == expected
    assert {c.doc for c in loaded.chunks} == {"d.md" if expected == 5 else "new.md"}


def test_a_failed_save_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = synthetic_index(count=5).save(tmp_path / "idx")
    before = sorted(p.name for p in saved.iterdir())

    def disk_full(index: Any, path: str) -> None:
        Path(path).write_bytes(b"half an ind")  # a partial write, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(IndexFileError, match="No space left") as raised:
        synthetic_index(count=3).save(saved)
    assert "unchanged" in str(raised.value)
    assert len(Index.load(saved)) == 5 and sorted(p.name for p in saved.iterdir()) == before


def test_saving_to_a_file_is_invalid_input(tmp_path: Path) -> None:
    file = tmp_path / "index.txt"
    file.write_text("not a folder")
    with pytest.raises(InvalidInput, match="is a file, not a folder") as raised:
        synthetic_index().save(file)
    assert file.read_text() == "not a folder"
    assert not isinstance(raised.value, NotADirectoryError)
    with pytest.raises(IndexFileError, match="Cannot create"):
        synthetic_index().save(file / "below")


def garbage_inside(file: Path) -> None:
    """4 KB of random bytes written over the middle of the file (its size unchanged)."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = np.random.default_rng(1).bytes(4096)[: len(data) - middle]
    file.write_bytes(bytes(data))


def edit_chunk_text(file: Path) -> None:
    """A chunk's text changed by hand, the JSON still perfectly valid."""
    lines = file.read_text().splitlines(keepends=True)
    row = json.loads(lines[1])
    row["text"] = "Employees get 99 days of leave."
    lines[1] = json.dumps(row) + "\n"
    file.write_text("".join(lines))


def drop_last_line(file: Path) -> None:
    file.write_text("".join(file.read_text().splitlines(keepends=True)[:-1]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p, f: None, "No saved index"),  # the folder itself is missing
        (lambda p, f: (p / "meta.json").unlink(), "meta.json"),
        (lambda p, f: (p / "meta.json").write_text("{not json"), "meta.json"),
        (lambda p, f: (p / "meta.json").write_text('{"format": "other"}'), "not describe"),
        (lambda p, f: edit_meta(p, version=1), "version"),
        (lambda p, f: edit_meta(p, files={"index": "../x", "chunks": "y"}), "checksums"),
        (lambda p, f: garbage_inside(p / f["index"]), "changed after the index was saved"),
        (lambda p, f: (p / f["index"]).write_bytes(b"garbage"), "changed after"),
        (lambda p, f: (p / f["index"]).unlink(), "missing"),
        (lambda p, f: edit_chunk_text(p / f["chunks"]), "changed after"),
        (lambda p, f: drop_last_line(p / f["chunks"]), "changed after"),
        (lambda p, f: (p / f["chunks"]).unlink(), "missing"),
        (lambda p, f: edit_meta(p, dim=16), "disagree"),
    ],
)
def test_damaged_index_files_are_refused(tmp_path: Path, damage: Any, message: str) -> None:
    folder = synthetic_index(dim=64, count=40).save(tmp_path / "idx")
    damage(folder, meta(folder)["files"])
    if message == "No saved index":
        folder = tmp_path / "nowhere"
    with pytest.raises(IndexFileError, match=message) as raised:
        Index.load(folder)
    assert "ebuild" in str(raised.value) or "build_index" in str(raised.value)


def edit_meta(folder: Path, **changes: Any) -> None:
    (folder / "meta.json").write_text(json.dumps({**meta(folder), **changes}))
