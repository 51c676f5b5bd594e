"""The coach's library: the lessons, the design guides and the docs they link, in one index.

The coach answers from the course, not from the model's memory. This file collects what it may
quote — the Markdown cells of each lesson (one document per notebook, split at its headings),
each module's design guide (``prompts/module-<n>.md``: brief, checklist, worked example) and the
files the lessons tell you to open (each ``labkit/*.py`` file's docstring, ``deploy/README.md``)
— and indexes them with ``labkit.rag``, the pipeline of Module 3: chunks that never cross a
heading, embeddings from the runtime, a FAISS index.

The index is saved under ``<labkit home>/coach-index/<hash>/``, where the hash covers every
indexed text, the chunk settings and the embedding model: it is built once (some 300 passages,
with a progress bar), and again only when the course or the model changes — then only the
passages that changed are embedded. ``python -m labkit.course.coach_index`` builds it ahead of
time, so that a learner's first message does not wait for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from labkit.errors import DocumentError, LabkitError, RagError
from labkit.rag.chunking import CHUNK_OVERLAP, CHUNK_SIZE, chunk_documents
from labkit.rag.documents import Document, parse_sections
from labkit.rag.embeddings import EMBED_MAX_TOKENS, Embedder, EmbeddingCache, embedding_model
from labkit.rag.index import Hit  # FAISS itself loads when an index is first built or read
from labkit.tokens import truncate_tokens

if TYPE_CHECKING:
    from labkit.rag.index import Index

__all__ = [
    "FORMAT",
    "LESSONS",
    "MODULE_BONUS",
    "CourseIndex",
    "Passage",
    "anchor",
    "course_documents",
    "course_folder",
    "lab_link",
    "main",
    "quotable_sentences",
]

FORMAT = 1  # bump when what is indexed, or how, changes: old caches are then ignored

# The lesson notebooks of each module's coach.
LESSONS: dict[int, tuple[str, ...]] = {
    1: ("01-local-model-apis.ipynb",),
    2: ("02-prompting.ipynb",),
    3: ("03-rag.ipynb",),
    4: ("04a-production-reliability.ipynb", "04b-production-operations.ipynb"),
}

# A passage from the learner's own module ranks as if this much more similar (cosine): a
# module-3 learner asking about "chunks" means the RAG lesson's chunks, not Module 2's.
# Chosen on the tuning part of tests/data/coach/messages.jsonl: the best passage came from a
# right section for 18 of 41 messages without it, 21 at 0.05, 22 at 0.1 and 0.2.
MODULE_BONUS = 0.1

_FILE_REF = re.compile(r"`?((?:labkit|deploy)/[\w/.-]+\.(?:py|md))`?")


def course_folder(start: Path | None = None) -> Path:
    """The folder that holds ``notebooks/`` (the course), or DocumentError saying where to run."""
    here = Path(__file__).resolve().parents[2]
    cwd = Path.cwd() if start is None else start
    for folder in (here, cwd, *cwd.parents):
        if (folder / "notebooks" / LESSONS[1][0]).is_file():
            return folder
    raise DocumentError(
        "The coach cannot find the course's lessons (notebooks/01-local-model-apis.ipynb) next "
        "to labkit or above the current folder. Open the notebook from the course folder."
    )


def anchor(heading: str) -> str:
    """The id JupyterLab gives a Markdown heading: its text as shown, spaces as hyphens."""
    shown = re.sub(r"[`*_]", "", heading).strip()
    return shown.replace(" ", "-")


def _notebook_markdown(path: Path) -> str:
    """The Markdown cells of a notebook, joined (read as JSON: no nbformat needed)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"Cannot read the lesson {path}: {exc}. Restore it from git.") from exc
    parts = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            parts.append("".join(source) if isinstance(source, list) else str(source))
    return "\n\n".join(parts)


def _document(name: str, path: str, text: str) -> Document:
    sections = parse_sections(text)
    titles = [s.headings[0] for s in sections if s.headings]
    return Document(name, path, titles[0] if titles else name, text, sections)


def _guide_text(module: int) -> str:
    """A module's design guide as a document: what it says, not the coach's own settings."""
    raw = (resources.files("labkit.course") / "prompts" / f"module-{module}.md").read_text(
        encoding="utf-8"
    )
    keep, out = True, []
    for line in raw.splitlines():
        if line.startswith("# "):
            out.append(f"# Design guide, module {module}")
            continue
        if line.startswith("## "):
            name = line[3:].strip().lower()
            keep = name in ("brief", "checklist", "example")
            line = "## Worked example" if name == "example" else line
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def _docstring(path: Path) -> str:
    """A Python file's module docstring ("" if it has none)."""
    import ast

    try:
        text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    return text.replace("``", "`")  # reStructuredText's code marks, as Markdown writes them


def course_documents(folder: Path | None = None) -> list[tuple[Document, tuple[int, ...]]]:
    """Every document the coach may quote, with the modules whose lessons link it."""
    root = course_folder() if folder is None else folder
    found: list[tuple[Document, tuple[int, ...]]] = []
    linked: dict[str, set[int]] = {}
    for module, notebooks in LESSONS.items():
        for notebook in notebooks:
            path = root / "notebooks" / notebook
            text = _notebook_markdown(path)
            found.append((_document(notebook, str(path), text), (module,)))
            for ref in _FILE_REF.findall(text):
                linked.setdefault(ref, set()).add(module)
        found.append((_document(f"guide-{module}", "", _guide_text(module)), (module,)))
    for ref, modules in sorted(linked.items()):
        path = root / ref
        if not path.is_file():
            continue  # a lesson may name a file of the full repository that a release leaves out
        if path.suffix == ".py":
            doc = _docstring(path)
            text = f"# {ref}\n\n{doc}\n" if doc else ""
        else:
            text = path.read_text(encoding="utf-8")
        if text.strip():
            found.append((_document(ref, str(path), text), tuple(sorted(modules))))
    return found


@dataclass(frozen=True)
class Passage:
    """A retrieved piece of the course, and where a learner finds it."""

    hit: Hit
    score: float  # cosine similarity, plus MODULE_BONUS for the learner's own module
    kind: str  # "lesson", "guide" or "doc"
    label: str  # for people: "03-rag.ipynb > 2. Chunking... > The tuning knobs"
    notebook: str  # "03-rag.ipynb" for a lesson passage, else ""
    heading: str  # the innermost heading

    @property
    def text(self) -> str:
        """The passage's text."""
        return self.hit.chunk.text

    @property
    def section(self) -> str:
        """``<notebook> § <heading>`` for a lesson passage (as the evaluation set labels it)."""
        return f"{self.notebook} § {self.heading}" if self.notebook else self.label


def _kind(doc: str) -> str:
    if doc.endswith(".ipynb"):
        return "lesson"
    return "guide" if doc.startswith("guide-") else "doc"


def _label(hit: Hit) -> str:
    chunk = hit.chunk
    inner = [h for h in chunk.headings[1:]]
    if chunk.doc.endswith(".ipynb"):
        return " > ".join([chunk.doc, *inner]) if inner else chunk.doc
    if chunk.doc.startswith("guide-"):
        return " > ".join([chunk.title, *inner])
    return " > ".join([chunk.doc, *inner[-1:]])


_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE = re.compile(r"(?<=[.!?:])\s+(?=[A-Z*`(\"'])")


def quotable_sentences(text: str) -> list[str]:
    """The sentences and list items of a passage that can be quoted alone (no code, no tables)."""
    out: list[str] = []
    in_fence = False
    for paragraph in re.split(r"\n[ \t]*\n", text):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if _FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence or line.lstrip().startswith(("|", "#", "<", "!")):
                continue  # code, tables, headings, HTML, images: not a sentence to quote
            lines.append(line.strip())
        # A list item is a unit of its own; other lines of a paragraph run together.
        items: list[str] = []
        for line in lines:
            if re.match(r"^([-*+]|\d+[.)])\s", line) or not items:
                items.append(line)
            else:
                items[-1] += " " + line
        for item in items:
            item = re.sub(r"^([-*+]|\d+[.)])\s+", "", item).strip()
            if item.startswith(">"):
                item = item.lstrip("> ").strip()
            for sentence in _SENTENCE.split(item):
                sentence = sentence.strip()
                # Balanced backticks and bold marks: a quote must render as written.
                # A passage may start inside a sentence (lessons wrap their lines): a fragment
                # starts in lower case. A list of web addresses is no answer either.
                if (
                    len(sentence.split()) >= 4
                    and sentence.count("`") % 2 == 0
                    and sentence.count("**") % 2 == 0
                    and not sentence[0].islower()
                    and "://" not in sentence
                ):
                    out.append(sentence)
    return out


def _earlier_vectors(root: Path, model: str) -> EmbeddingCache:
    """An embedding cache holding the vectors of every index saved under ``root`` for ``model``."""
    from labkit.rag.index import Index

    cache = EmbeddingCache()
    for folder in sorted(root.glob("*/")) if root.is_dir() else []:
        try:
            old = Index.load(folder, model=model)
        except LabkitError:
            continue
        vectors = old.faiss.reconstruct_n(0, len(old))
        for chunk, vector in zip(old.chunks, vectors, strict=True):
            text = truncate_tokens(chunk.embed_text(), EMBED_MAX_TOKENS)
            cache.put(model, text, np.asarray(vector, dtype=np.float32))
    return cache


def _cache_root() -> Path:
    from labkit.runtime.launcher import home

    return home() / "coach-index"


class CourseIndex:
    """The course's passages in a ``labkit.rag`` index, searched for one module's coach."""

    def __init__(self, index: Index, owners: dict[str, tuple[int, ...]], key: str = "") -> None:
        self.index = index
        self.owners = owners  # document name -> the modules whose lessons it belongs to
        self.key = key
        self._sentences: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"<CourseIndex of {len(self)} passages, {self.index.model}>"

    @staticmethod
    def content_key(docs: Sequence[tuple[Document, tuple[int, ...]]], model: str) -> str:
        """The hash that names a saved index: every text, the settings and the model."""
        digest = hashlib.sha256(f"{FORMAT}\0{CHUNK_SIZE}\0{CHUNK_OVERLAP}\0{model}".encode())
        for doc, modules in docs:
            digest.update(f"\0{doc.name}\0{modules}\0{doc.text}".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def build(
        cls,
        client: Embedder,
        *,
        folder: Path | None = None,
        cache: Path | None = None,
        model: str | None = None,
        progress: bool = True,
        documents: Sequence[tuple[Document, tuple[int, ...]]] | None = None,
    ) -> CourseIndex:
        """The course's index: read from the cache when the course is unchanged, else built.

        ``documents`` replaces the course's own (``course_documents``), e.g. with a few sections.
        """
        from labkit.rag.index import Index, build_index

        docs = list(documents) if documents is not None else course_documents(folder)
        model = embedding_model(client, model)
        key = cls.content_key(docs, model)
        owners = {doc.name: modules for doc, modules in docs}
        where = (cache or _cache_root()) / key
        if (where / "meta.json").is_file():
            try:
                return cls(Index.load(where, client, model=model), owners, key)
            except LabkitError:
                shutil.rmtree(where, ignore_errors=True)  # damaged: build it again below
        chunks = chunk_documents([doc for doc, _ in docs])
        # Vectors of passages an earlier build already embedded are reused: after a lesson is
        # edited only its changed passages go to the runtime, not the whole course again.
        known = _earlier_vectors(where.parent, model)
        index = build_index(chunks, client, model=model, progress=progress, cache=known)
        try:
            index.save(where)
            for old in where.parent.iterdir():
                if old != where and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)  # the course changed: one index kept
        except (LabkitError, OSError):
            pass  # a read-only home: the coach still works, and builds again next time
        return cls(index, owners, key)

    def search(self, message: str, module: int, k: int = 4) -> list[Passage]:
        """The ``k`` passages closest to ``message``, the module's own ranked a little higher."""
        vector = self.index.embed_queries([message])
        return self.search_vector(vector[0], module, k)

    def search_vector(self, vector: np.ndarray, module: int, k: int = 4) -> list[Passage]:
        """Search with a ready-made query vector (see ``search``)."""
        if k < 1:
            raise RagError(f"k must be at least 1, not {k}.")
        pool = self.index.candidates(vector[None, :], min(len(self.index), 4 * k + 10))[0]
        scored = []
        for score, i in pool:
            chunk = self.index.chunks[i]
            bonus = MODULE_BONUS if module in self.owners.get(chunk.doc, ()) else 0.0
            scored.append((score + bonus, i))
        scored.sort(key=lambda pair: -pair[0])
        passages = []
        for rank, (score, i) in enumerate(scored[:k], start=1):
            hit = Hit(self.index.chunks[i], score, rank)
            chunk = hit.chunk
            kind = _kind(chunk.doc)
            heading = chunk.headings[-1] if chunk.headings else chunk.title
            notebook = chunk.doc if kind == "lesson" else ""
            passages.append(Passage(hit, score, kind, _label(hit), notebook, heading))
        return passages

    def guide_examples(self, module: int) -> list[Passage]:
        """The passages of module ``module``'s worked example (design guide), in order."""
        found = []
        for i, chunk in enumerate(self.index.chunks):
            if chunk.doc == f"guide-{module}" and chunk.headings[-1:] == ("Worked example",):
                hit = Hit(chunk, 0.0, i + 1)
                found.append(Passage(hit, 0.0, "guide", _label(hit), "", "Worked example"))
        return found

    def exchanges(self, passage: Passage, vector: np.ndarray) -> list[tuple[str, str, float]]:
        """The (learner's line, coach's answer, cosine to the query) pairs of a worked example."""
        pairs = []
        asked = ""
        for line in passage.text.splitlines():
            who, sep, said = line.partition(":")
            if sep and who.strip() == "You":
                asked = said.strip()
            elif sep and who.strip() == "Coach" and asked:
                pairs.append((asked, said.strip()))
                asked = ""
        if not pairs:
            return []
        key = (passage.hit.chunk.id + "#asked", self.key)
        if key not in self._sentences:
            self._sentences[key] = self.index.embed([a for a, _ in pairs])
        scores = self._sentences[key] @ vector
        return [(a, b, float(v)) for (a, b), v in zip(pairs, scores, strict=True)]

    def sentence_scores(self, passage: Passage, vector: np.ndarray) -> list[tuple[str, float]]:
        """The passage's quotable sentences with their cosine to the query, in text order."""
        chunk = passage.hit.chunk
        pieces = quotable_sentences(chunk.text)
        if not pieces:
            return []
        key = (chunk.id, self.key)
        if key not in self._sentences:
            # The heading path in front, as for chunks: "Retries" says what a sentence is about.
            context = " > ".join(chunk.headings[1:]) or chunk.title
            self._sentences[key] = self.index.embed([f"{context}\n{s}" for s in pieces])
        scores = self._sentences[key] @ vector
        return [(s, float(v)) for s, v in zip(pieces, scores, strict=True)]


def _servers() -> list[dict[str, str]]:
    """The Jupyter servers running on this machine: their root folder and base URL."""
    try:
        # jupyter_client (declared) hands on jupyter_core's runtime folder: the servers list there.
        from jupyter_client.connect import jupyter_runtime_dir  # type: ignore[attr-defined]

        files = sorted(Path(jupyter_runtime_dir()).glob("jpserver-*.json"))
    except (ImportError, OSError):
        return []
    found = []
    for file in files:
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("root_dir"), str):
            found.append({"root_dir": info["root_dir"], "base_url": str(info.get("base_url", "/"))})
    return found


def lab_link(notebook: str, heading: str, *, folder: Path | None = None) -> str:
    """A link that opens ``notebook`` at ``heading`` in JupyterLab, from the running notebook.

    Jupyter names the running notebook in ``$JPY_SESSION_NAME`` (its full path, or one relative
    to the server's root), and lists its servers' root folders and base URLs in its runtime
    folder: from both, the lesson's ``<base>/lab/tree/<path>`` address follows. Outside Jupyter
    it is the lesson's path relative to the current folder.
    """
    root = course_folder() if folder is None else folder
    target = (root / "notebooks" / notebook).resolve()
    fragment = quote(anchor(heading), safe="-.:?!,'&/")
    session = os.environ.get("JPY_SESSION_NAME", "")
    cwd = Path.cwd()
    if session:
        servers = _servers()
        if not os.path.isabs(session):  # older servers: relative to the root, as is the cwd
            depth = len(Path(session).parts) - 1
            here = cwd.parents[depth - 1] if depth > 0 else cwd
            servers.append({"root_dir": str(here), "base_url": "/"})
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        for server in servers:
            try:
                inside = target.relative_to(Path(server["root_dir"]).resolve())
            except ValueError:
                continue
            base = (prefix or server["base_url"]).rstrip("/")
            return f"{base}/lab/tree/{quote(inside.as_posix())}#{fragment}"
    return f"{quote(os.path.relpath(target, cwd))}#{fragment}"


def main() -> None:
    """Build the coach's index now, with a progress bar (``python -m labkit.course.coach_index``)."""
    from labkit.client import Client

    course = CourseIndex.build(Client(start=True))
    print(f"{course} ready in {_cache_root() / course.key}")


if __name__ == "__main__":
    main()
