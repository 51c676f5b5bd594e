"""How a saved index sits on disk: meta.json with checksums, written atomically, read warily."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from labkit.errors import IndexFileError
from labkit.rag.chunking import Chunk

__all__ = [
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "fsync",
    "previous_files",
    "read_chunks",
    "read_meta",
    "sha256",
    "verify",
    "write_atomic",
]

INDEX_FORMAT = "labkit-rag-index"
INDEX_VERSION = 2  # 2: files named in meta.json, with SHA-256 checksums


def sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(file, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(file: Path) -> None:
    """Make sure the file's data is on disk, not only in the page cache."""
    with open(file, "rb+") as handle:
        os.fsync(handle.fileno())


def write_atomic(file: Path, text: str) -> None:
    """Write ``file`` so that a reader sees the old content or the new, never half of it."""
    partial = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)


def previous_files(path: Path) -> set[Path]:
    """The vector and chunk files that the index already saved in ``path`` names (if any)."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        files = meta["files"] if meta.get("format") == INDEX_FORMAT else {}
        return {path / Path(str(name)).name for name in files.values()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()  # no index there yet (or not ours): nothing to remove


def verify(file: Path, expected: object) -> None:
    """Raise IndexFileError unless ``file`` has the SHA-256 checksum ``expected``."""
    try:
        actual = sha256(file)
    except OSError as exc:
        raise IndexFileError(
            f"{file} is missing or unreadable ({exc}); rebuild the index."
        ) from exc
    if actual != expected:
        raise IndexFileError(
            f"{file} was changed after the index was saved (its SHA-256 checksum differs from "
            "the one in meta.json): it is damaged or was edited, and would return wrong "
            "passages. Rebuild the index with build_index(...) and index.save(path)."
        )


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a saved index, checked field by field."""
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
        raise IndexFileError(
            f"{path} has index format version {meta.get('version')}, this labkit reads "
            f"version {INDEX_VERSION}; rebuild the index."
        )
    files, sums = meta.get("files"), meta.get("sha256")
    if (
        not isinstance(meta.get("model"), str)
        or not isinstance(meta.get("dim"), int)
        or not isinstance(files, dict)
        or not isinstance(sums, dict)
        or set(files) != {"index", "chunks"}
        or any(not isinstance(n, str) or Path(n).name != n for n in files.values())
    ):
        raise IndexFileError(
            f"{path / 'meta.json'} lacks the model, dimension or file checksums; rebuild the index."
        )
    meta.setdefault("kind", "flat")
    meta.setdefault("count", -1)
    return meta


def read_chunks(file: Path) -> list[Chunk]:
    """The chunks saved as JSON lines."""
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
