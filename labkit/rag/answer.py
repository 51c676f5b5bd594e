"""Grounded answers: retrieve, decide whether the documents hold an answer, prompt, cite.

The model replies in JSON, ``{"answer": "...", "citations": [1, 2]}``, and the request carries
that shape as a JSON schema. Runtimes that constrain decoding to a schema (llama.cpp, Ollama)
then make even a 135M-parameter model give passage numbers; on one that ignores the schema,
citations written as [1] in the text are found instead.

The prompt is fitted to the model's context window (asked from the runtime): passages that do
not fit are left out, best ones first kept, and the answer says which were dropped.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from labkit.errors import InvalidInput, LabkitError
from labkit.rag.embeddings import Embedder
from labkit.rag.gate import GATE_K, Gate, HybridGate
from labkit.rag.index import Hit, Index
from labkit.rag.rerank import SentenceReranker, shared_reranker
from labkit.tokens import estimate_tokens

__all__ = [
    "ANSWER_SCHEMA",
    "DEFAULT_CONTEXT",
    "NOT_FOUND",
    "SYSTEM_PROMPT",
    "Answer",
    "Chatter",
    "answer",
    "answer_chars",
    "answer_schema",
    "build_prompt",
    "cited_passages",
    "context_window",
    "format_passages",
]

log = logging.getLogger("labkit.rag")

NOT_FOUND = "Not in the documents."
DEFAULT_CONTEXT = 2048  # used when the runtime does not say (the kit's runtime: 2048 per slot)
TOKENS_PER_MESSAGE = 5  # chat-template markup around each message

SYSTEM_PROMPT = (
    "You answer questions about a company's documents from the numbered passages you are "
    'given, and from nothing else. Reply in JSON: "citations" lists the numbers of the '
    'passages that state the answer, "answer" gives it in one or two sentences with the exact '
    "figures from those passages. A passage marked OUTDATED is only context: answer from the "
    f"current one. If no passage answers the question, the answer is: {NOT_FOUND}"
)


def answer_schema(passages: int, max_chars: int = 600) -> dict[str, Any]:
    """The JSON schema of a reply: the passages cited (at least one), then the answer.

    Citations come first so that a model decoding under the schema picks its passages before
    it writes; with at least one required, even a 135M-parameter model cites.
    """
    return {
        "type": "object",
        "properties": {
            "citations": {
                "type": "array",
                "items": {"type": "integer", "enum": list(range(1, passages + 1))},
                "minItems": 1,
                "maxItems": passages,
            },
            "answer": {"type": "string", "maxLength": max_chars},
        },
        "required": ["citations", "answer"],
    }


ANSWER_SCHEMA = answer_schema(3)


def answer_chars(max_tokens: int) -> int:
    """The longest answer (in characters) whose JSON reply still closes within ``max_tokens``."""
    # The braces, the citations and the newlines and indentation the grammar allows take about
    # 30 tokens; English runs about 4 characters a token, so 3 per token left is a safe bound.
    # Without it a long answer is cut off mid-string and the reply is no longer JSON.
    return max(20, min(600, 3 * (max_tokens - 30)))


def format_passages(hits: Sequence[Hit]) -> str:
    """The passages as the model sees them: a number, the source, then the text."""
    blocks = []
    for n, hit in enumerate(hits, start=1):
        where = " > ".join(hit.chunk.headings) or hit.chunk.title
        if hit.chunk.superseded_by:
            where += f"; OUTDATED, replaced by {hit.chunk.superseded_by}: context only"
        blocks.append(f"[{n}] ({hit.chunk.doc} — {where})\n{hit.chunk.text.strip()}")
    return "\n\n".join(blocks)


def build_prompt(question: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    """Chat messages asking the model to answer ``question`` from ``hits`` only, with citations."""
    user = f"Passages:\n\n{format_passages(hits)}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + TOKENS_PER_MESSAGE for m in messages)


class _Reply(Protocol):
    @property
    def text(self) -> str: ...


class Chatter(Embedder, Protocol):
    """A client that can embed and chat: ``labkit.Client`` is one."""

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        format: Any = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> _Reply: ...


_WINDOWS: dict[tuple[str, str], int] = {}


def context_window(client: object, model: str | None = None) -> int:
    """The chat model's context window in tokens, as the runtime reports it (asked once).

    Asks Ollama's ``/api/show`` (its ``num_ctx`` parameter), then ``/api/ps``, then llama.cpp's
    ``/props``; a runtime that says nothing gets DEFAULT_CONTEXT, with a logged warning.
    """
    session, url = getattr(client, "session", None), getattr(client, "url", None)
    if session is None or not isinstance(url, str):
        return DEFAULT_CONTEXT
    model = model or getattr(client, "model", None) or _chat_model(client)
    if (url, model) in _WINDOWS:
        return _WINDOWS[(url, model)]
    probes: list[tuple[str, str, Any]] = [
        ("POST", "/api/show", {"model": model}),
        ("GET", "/api/ps", None),
        ("GET", "/props", None),
    ]
    for method, path, body in probes:
        try:
            reply = session.request(method, url + path, json=body, timeout=10)
            data = reply.json() if reply.ok else {}
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors
            log.debug("%s%s: %s", url, path, exc)
            continue
        if found := _window_from(data, model):
            _WINDOWS[(url, model)] = found
            return found
    log.warning("The runtime does not report its context window; assuming %d.", DEFAULT_CONTEXT)
    return DEFAULT_CONTEXT


def _chat_model(client: object) -> str:
    """The model a client would chat with when none is named ("" if it cannot tell)."""
    pick = getattr(client, "_default_model", None)
    try:
        name = pick() if callable(pick) else ""
    except (LabkitError, OSError):
        return ""
    return name if isinstance(name, str) else ""


def _window_from(data: Any, model: object) -> int:
    if not isinstance(data, dict):
        return 0
    match = re.search(r"num_ctx\s+(\d+)", str(data.get("parameters", "")))
    if match:
        return int(match.group(1))
    for entry in data.get("models", []) if isinstance(data.get("models"), list) else []:
        if isinstance(entry, dict) and entry.get("name") == model:
            return int(entry.get("context_length") or 0)
    settings = data.get("default_generation_settings")
    return int(settings.get("n_ctx") or 0) if isinstance(settings, dict) else 0


@dataclass(frozen=True)
class Answer:
    """What ``answer`` returns: the text, the passages it cited, and all it was given."""

    text: str
    sources: list[Hit]  # the passages the answer cites, in order of citation
    passages: list[Hit]  # every passage put in the prompt (empty: nothing relevant was found)
    found: bool  # False when retrieval found nothing relevant and the model was not asked
    reply: object = None  # the client's full Reply, for timings and token counts
    dropped: list[Hit] = field(default_factory=list)  # retrieved, but left out to fit the window
    structured: bool = False  # True when the reply was the JSON the schema asked for

    @property
    def refused(self) -> bool:
        """True when the answer is "not in the documents" (by the gate or by the model)."""
        return not self.found or _is_refusal(self.text)

    def __str__(self) -> str:
        text = self.text
        if self.sources:
            text += "\n\nSources:\n" + "\n".join(f"[{h.rank}] {h.source}" for h in self.sources)
        elif self.passages:  # the model cited nothing: show what it was given
            listed = "\n".join(f"[{h.rank}] {h.source}" for h in self.passages)
            text += f"\n\nPassages given (none cited):\n{listed}"
        if self.dropped:
            listed = ", ".join(h.source for h in self.dropped)
            text += f"\n\nLeft out to fit the model's context window: {listed}"
        return text


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_passages(text: str, passages: Sequence[Hit]) -> list[Hit]:
    """The passages that ``text`` cites as [1], [2] or [1, 2]; numbers out of range are ignored."""
    numbers = [int(n) for m in _CITATION.finditer(text) for n in m.group(1).split(",")]
    return _by_number(numbers, passages)


def _by_number(numbers: Sequence[object], passages: Sequence[Hit]) -> list[Hit]:
    cited: list[Hit] = []
    for number in numbers:
        if not isinstance(number, int) or not 1 <= number <= len(passages):
            continue
        if passages[number - 1] not in cited:
            cited.append(passages[number - 1])
    return cited


def _read_reply(text: str, passages: Sequence[Hit]) -> tuple[str, list[Hit], bool]:
    """(answer text, cited passages, structured?) from the model's reply."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("answer"), str):
        listed = data.get("citations")
        numbers: list[object] = listed if isinstance(listed, list) else []
        return data["answer"].strip(), _by_number(numbers, passages), True
    return text.strip(), cited_passages(text, passages), False


def _fit(question: str, hits: Sequence[Hit], room: int) -> tuple[list[Hit], list[Hit]]:
    """The passages (best first) that fit in ``room`` prompt tokens, and those left out."""
    if _prompt_tokens(build_prompt(question, [])) > room:
        raise InvalidInput(
            f"The question alone (~{estimate_tokens(question)} tokens) leaves no room for "
            f"passages in the model's {room}-token prompt budget. Shorten the question."
        )
    kept: list[Hit] = []
    dropped: list[Hit] = []
    for hit in hits:
        if _prompt_tokens(build_prompt(question, [*kept, hit])) <= room:
            kept.append(hit)
        else:
            dropped.append(hit)
    return kept, dropped


def answer(
    question: str,
    index: Index,
    client: Chatter,
    *,
    k: int = 3,
    gate: Gate | None = None,
    max_tokens: int = 200,
    seed: int = 42,
    context: int | None = None,
    reranker: SentenceReranker | None = None,
    rerank: bool = True,
) -> Answer:
    """Answer from the index's documents with citations, or say they do not contain it.

    ``gate`` scores the top passages: below its threshold the documents are taken not to hold
    an answer and the model is not asked (default: ``HybridGate()``, see labkit/rag/gate.py).
    The ``k`` best passages go into the prompt; ``context`` is the model's window in tokens
    (default: asked from the runtime). The passages are reranked by their best sentence
    (``reranker``, default: the index's ``shared_reranker``; ``rerank=False`` keeps plain
    search's); the gate still scores plain search, the scale it was calibrated on.
    """
    vectors = index.embed_queries([question])  # once, for plain search and the reranker
    found = index.search_vectors(vectors, max(k, GATE_K))[0]
    gate = gate if gate is not None else HybridGate()
    if not found or gate.score(question, found, index) < gate.threshold:
        # Nothing close enough: asking the model anyway invites an invented answer.
        return Answer(NOT_FOUND, [], [], found=False)
    if rerank:
        # Held out, reranking keeps recall@5 at or above plain search's (labkit/rag/rerank.py).
        chosen = reranker if reranker is not None else shared_reranker(index)
        hits = chosen.search_vectors(index, vectors, k)[0]
    else:
        hits = found[:k]
    window = context or context_window(client)
    room = window - max_tokens
    if room < 64:
        raise InvalidInput(
            f"max_tokens={max_tokens} leaves no room for the prompt in a {window}-token "
            "context window; ask for a shorter reply."
        )
    passages, dropped = _fit(question, hits, room)
    if dropped:
        log.warning(
            "Left out %d passage(s) to fit the %d-token window: %s",
            len(dropped),
            window,
            ", ".join(h.source for h in dropped),
        )
    if not passages:
        return Answer(NOT_FOUND, [], [], found=False, dropped=dropped)
    reply = client.chat(
        build_prompt(question, passages),
        format=answer_schema(len(passages), answer_chars(max_tokens)),
        temperature=0.0,
        seed=seed,
        max_tokens=max_tokens,
    )
    text, sources, structured = _read_reply(reply.text, passages)
    if _is_refusal(text):
        sources = []  # the schema makes a model cite even when it says it cannot answer
    return Answer(text, sources, passages, True, reply, dropped, structured)


def _is_refusal(text: str) -> bool:
    return NOT_FOUND.rstrip(".").lower() in text.lower()
