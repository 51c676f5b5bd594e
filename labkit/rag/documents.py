"""Documents: read Markdown and text files, find their sections and superseded versions.

Markdown and plain text are read; PDF is not (it needs a text extractor): convert PDFs first,
e.g. with ``pdftotext file.pdf``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import DocumentError

__all__ = [
    "MAX_FILE_BYTES",
    "TEXT_SUFFIXES",
    "Document",
    "Section",
    "load_documents",
    "parse_sections",
    "read_document",
]

log = logging.getLogger("labkit.rag")

MAX_FILE_BYTES = 5_000_000  # a policy document is a few KB; 5 MB of plain text is a long book
TEXT_SUFFIXES = (".md", ".markdown", ".txt")


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
_HEADING_LINE = re.compile(r"^#{1,6}[ \t].*$", re.MULTILINE)
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
    if not any(_HEADING_LINE.sub("", text[s.start : s.end]).strip() for s in sections):
        log.warning(
            "%s has headings but no text under them: it adds nothing to an index. "
            "Fill it in, or leave it out.",
            path,
        )
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
