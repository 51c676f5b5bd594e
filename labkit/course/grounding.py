"""The coach's replies, built from the course: quoted by a small model, cited by a big one.

A 135M-parameter model asked for design advice writes fluent, confident and often wrong text
(model names that do not exist, code that does not run). So the coach never lets it write:

- **quote** (small models, the bundled one included): the coach retrieves the passages of the
  course closest to the learner's message, numbers their best sentences, and the model only
  chooses one or two numbers — a JSON schema allows nothing else. The reply quotes those
  sentences word for word under a link to their lesson section, shows the design guide's worked
  answer when one fits, and points to the other passages found.
- **generate** (models of a few billion parameters and up): the model answers from the numbered
  passages and cites them as [1], [2]; the citations become links to the lesson sections.

Either way ``unsupported`` checks the reply: every number, code name and model name in it must
appear in the passages it cites, and the reply says which do not. It is a necessary check, not
a sufficient one: a name that is in the passages can still be used wrongly.

Measured with bench/coach.py on the 82 messages of tests/data/coach/messages.jsonl, the bundled
model choosing the quotes (tuning part / held-out part):

    replies with an invented name or number     0/41 / 0/41
    replies citing a right lesson section      28/41 / 27/41   (top-scored, no model: 29 / 28)

Asked to write its own reply from the same passages, the bundled model stated names or numbers
that none of them holds in 5 of 8 Module 3 held-out messages, and cited no passage in most.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.course.picker import parameters
from labkit.errors import InvalidInput

if TYPE_CHECKING:
    from labkit.client import Client
    from labkit.course.coach_index import CourseIndex, Passage
    from labkit.reply import Reply

__all__ = [
    "MODES",
    "QUOTE_BELOW",
    "Grounded",
    "choose_mode",
    "claims",
    "generate_reply",
    "quote_reply",
    "unsupported",
]

MODES = ("auto", "quote", "generate")
# Models with fewer parameters than this (by the size in their name) only choose quotes.
QUOTE_BELOW = 3e9
PASSAGES = 6  # passages retrieved per message (the best three lesson ones are quoted from)
CANDIDATES = 5  # sentences the model chooses from
QUOTES = 2  # sentences it quotes
# A sentence's score: this much its own cosine, the rest its passage's. Chosen on the tuning
# part of the evaluation set (bench/coach.py): the best two sentences came from a right
# section for 29-30 of 41 messages at 0.3-0.6, 23 with passages alone, 28 with sentences alone.
SENTENCE_WEIGHT = 0.5
WORKED_MIN = 0.5  # cosine from which a worked example's question counts as the same question

Linker = Callable[["Passage"], str]


def choose_mode(mode: str, model: str | None) -> str:
    """ "quote" or "generate": ``mode`` itself, or for "auto" what the model's size allows."""
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if mode != "auto":
        return mode
    name = (model or "").lower()
    size = parameters(name)
    # The bundled model's family is small whatever its tag says ("smollm2", "smollm2:latest").
    if name.startswith("smollm") or (size is not None and size < QUOTE_BELOW):
        return "quote"
    return "generate"


# --- the check: is every name and number of a reply in its passages? --------------------------

_FENCED = re.compile(r"^\s*(```|~~~).*?^\s*(```|~~~)|^\s*(```|~~~).*\Z", re.M | re.S)
_CODE = re.compile(r"`([^`\n]+)`")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
_IDENT = re.compile(r"[A-Za-z_][\w]*")
_WORDISH = re.compile(r"[\w./:@()-]+")


def _is_name(token: str) -> bool:
    """True for what reads as a code or model name, not a word: max_tokens, qwen2.5:7b, a.b()."""
    core = token.strip(".,;:!?()'\"")
    if len(core) < 2 or not re.search(r"[A-Za-z]", core):
        return False
    return bool(
        (re.search(r"\d", core) and re.search(r"[A-Za-z]", core))
        or "_" in core
        or re.search(r"[a-z]\.[a-z]", core, re.I)
        or "/" in core
        or "()" in token
        or ":" in core.strip(":")
        or re.search(r"[a-z][A-Z]", core)
    )


def claims(reply: str) -> list[str]:
    """The numbers, code names and model names a reply states, in order, each once."""
    found: list[str] = []
    for block in _FENCED.finditer(reply):
        found += _IDENT.findall(block.group(0).strip("`~"))
    prose = _FENCED.sub(" ", reply)
    for span in _CODE.findall(prose):
        found += [t for t in _IDENT.findall(span) if len(t) > 1]
    prose = _CODE.sub(" ", prose)
    found += [t.strip(".,;:!?()'\"") for t in _WORDISH.findall(prose) if _is_name(t)]
    found += _NUMBER.findall(prose)
    seen: list[str] = []
    for item in found:
        if item and item not in seen:
            seen.append(item)
    return seen


def unsupported(reply: str, sources: Sequence[str], *, ignore: Sequence[str] = ()) -> list[str]:
    """What ``reply`` states (numbers, code and model names) that none of ``sources`` contains.

    ``ignore`` lists text to leave out first: the citation labels and links the coach adds.
    """
    for text in sorted(ignore, key=len, reverse=True):
        if text:
            reply = reply.replace(text, " ")
    reply = re.sub(r"\]\([^)\s]*\)", "] ", reply)  # link targets are addresses, not claims
    reply = re.sub(r"\[\d+\]", " ", reply)  # citation marks
    haystack = "\n".join(sources)
    lower = haystack.lower()
    missing = []
    for claim in claims(reply):
        if claim[0].isdigit():
            pattern = rf"(?<![\d]){re.escape(claim)}(?![\d])"
            if not re.search(pattern, haystack):
                missing.append(claim)
        elif claim.lower() not in lower:
            missing.append(claim)
    return missing


# --- the replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grounded:
    """One reply of the coach: its Markdown, the passages it cites and all it found."""

    text: str
    cited: list[Passage]
    passages: list[Passage]
    mode: str
    reply: Reply | None = None  # the model's own reply (timings, tokens)
    unsupported: list[str] = field(default_factory=list)
    worked: Passage | None = None  # the design guide's worked answer shown, if any

    def blocks(self) -> Iterator[str]:
        """The reply in whole Markdown blocks, each ending with its blank line."""
        for block in self.text.split("\n\n"):
            if block.strip():
                yield block + "\n\n"


def _cite(passage: Passage, link: Linker) -> str:
    target = link(passage)
    return f"[{passage.label}]({target})" if target else f"**{passage.label}**"


def _quote(sentences: Sequence[str]) -> str:
    return "\n>\n".join(f"> {s}" for s in sentences)


PICK_SYSTEM = (
    "You help a learner of a course on local language models. You are given the learner's "
    "message and numbered sentences from the course. Choose the two sentences that answer "
    'the message best. Reply in JSON: {"quotes": [numbers]}.'
)


def pick_schema(count: int) -> dict[str, Any]:
    """The JSON schema of the model's choice: one or two sentence numbers, nothing else."""
    return {
        "type": "object",
        "properties": {
            "quotes": {
                "type": "array",
                "items": {"type": "integer", "enum": list(range(1, count + 1))},
                "minItems": min(QUOTES, count),
                "maxItems": min(QUOTES, count),
            }
        },
        "required": ["quotes"],
    }


def _picked(text: str, count: int) -> list[int]:
    """The sentence numbers in the model's reply (1-based, in range, each once)."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    listed = data.get("quotes") if isinstance(data, dict) else None
    numbers: list[int] = []
    for n in listed if isinstance(listed, list) else []:
        if isinstance(n, int) and 1 <= n <= count and n not in numbers:
            numbers.append(n)
    return numbers[:QUOTES]


def _worked_answer(
    course: CourseIndex, module: int, vector: np.ndarray
) -> tuple[Passage, str, str] | None:
    """The guide's worked exchange whose question is closest to the message, if close enough."""
    best: tuple[float, Passage, str, str] | None = None
    for passage in course.guide_examples(module):
        for asked, answered, score in course.exchanges(passage, vector):
            if best is None or score > best[0]:
                best = (score, passage, asked, answered)
    if best is None or best[0] < WORKED_MIN:
        return None
    return best[1], best[2], best[3]


def _short(sentence: str, words: int = 30) -> str:
    """A sentence cut to ``words`` words for the model's choice: a short prompt is a fast one."""
    parts = sentence.split()
    return sentence if len(parts) <= words else " ".join(parts[:words]) + " …"


def quote_reply(
    message: str,
    module: int,
    course: CourseIndex,
    client: Client,
    link: Linker,
    *,
    seed: int = 42,
    timeout: float = 60.0,
    k: int = PASSAGES,
) -> Grounded:
    """A reply that only quotes the course: the model picks sentences, nothing else."""
    from labkit.reply import Timeout

    vector = course.index.embed_queries([message])[0]
    passages = course.search_vector(vector, module, k)
    ranked: list[tuple[float, str, Passage]] = []
    # Quotes come from the lessons; the guide speaks through its worked answer below.
    for passage in [p for p in passages if p.kind == "lesson"][:3]:
        for sentence, score in course.sentence_scores(passage, vector):
            blend = SENTENCE_WEIGHT * score + (1 - SENTENCE_WEIGHT) * passage.score
            ranked.append((blend, sentence, passage))
    ranked.sort(key=lambda item: -item[0])
    options = ranked[:CANDIDATES]
    reply = None
    chosen: list[int] = []
    if len(options) > 1:
        listing = "\n".join(f"[{n}] {_short(s)}" for n, (_, s, _) in enumerate(options, start=1))
        reply = client.chat(
            [
                {"role": "system", "content": PICK_SYSTEM},
                {
                    "role": "user",
                    "content": f"Learner: {message}\n\nSentences:\n{listing}\n\nWhich answer it?",
                },
            ],
            format=pick_schema(len(options)),
            temperature=0.0,
            seed=seed,
            max_tokens=24,
            timeout=Timeout(connect=5.0, read=timeout),
        )
        chosen = _picked(reply.text, len(options))
    if not chosen and options:
        chosen = list(range(1, min(QUOTES, len(options)) + 1))  # no usable choice: the best
    # Quotes grouped under their section (two passages of one section share a heading), in
    # the order the section has them.
    quoted: dict[str, list[tuple[Passage, str]]] = {}
    cited: list[Passage] = []
    for n in chosen:
        _, sentence, passage = options[n - 1]
        if passage not in cited:
            cited.append(passage)
        quoted.setdefault(passage.label, []).append((passage, sentence))
    parts = []
    for pairs in quoted.values():
        ordered = sorted(pairs, key=lambda pair: (pair[0].hit.chunk.start, _position(*pair)))
        sentences = [sentence for _, sentence in ordered]
        first = ordered[0][0]
        parts.append(f"**From the course** — {_cite(first, link)}:\n\n{_quote(sentences)}")
    worked = _worked_answer(course, module, vector)
    shown_worked = None
    if worked is not None:
        passage, asked, answered = worked
        shown_worked = passage
        parts.append(
            f"**A worked answer from the design guide** — {_cite(passage, link)}:\n\n"
            f"> *Question:* {asked}\n>\n> *Answer:* {answered}"
        )
    more = [p for p in passages if p not in cited and p.kind == "lesson"]
    seen_labels = {p.label for p in cited}
    pointers = []
    for passage in more:
        if passage.label not in seen_labels:
            seen_labels.add(passage.label)
            pointers.append(_cite(passage, link))
    if pointers:
        parts.append("**Read on:** " + " · ".join(pointers))
    if not cited:
        parts.insert(0, "The course has nothing close to this message. Try other words.")
    text = "\n\n".join(parts)
    sources = [p.text for p in cited] + ([shown_worked.text] if shown_worked else [])
    labels = [_cite(p, link) for p in passages] + (
        [_cite(shown_worked, link)] if shown_worked else []
    )
    return Grounded(
        text,
        cited,
        passages,
        "quote",
        reply,
        unsupported(text, sources, ignore=labels),
        shown_worked,
    )


def _position(passage: Passage, sentence: str) -> int:
    """Where ``sentence`` stands among the quotable sentences of ``passage``."""
    from labkit.course.coach_index import quotable_sentences

    found = quotable_sentences(passage.text)
    return found.index(sentence) if sentence in found else 0


GENERATE_RULES = (
    "Answer the learner's message only from the numbered course passages below. After each "
    "statement write the number of the passage it comes from in brackets, like [2]. Never "
    "name a model, function, setting or number that the passages do not contain, and write "
    "no code unless a passage shows it. If the passages do not answer the message, say so "
    "in one sentence and name the closest passage."
)


def generate_messages(
    message: str, passages: Sequence[Passage], persona: str
) -> list[dict[str, str]]:
    """The chat messages of a generated reply: persona, rules and passages, then the message."""
    listed = "\n\n".join(
        f"[{n}] ({p.label})\n{p.text.strip()}" for n, p in enumerate(passages, start=1)
    )
    system = f"{persona}\n\n{GENERATE_RULES}\n\nPassages:\n\n{listed}"
    return [{"role": "system", "content": system}, {"role": "user", "content": message}]


def generate_reply(
    text: str, passages: Sequence[Passage], link: Linker, reply: Reply | None = None
) -> Grounded:
    """A generated reply made whole: citations as links, sources listed, the check's findings."""
    numbers = [
        int(n) for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text) for n in group.split(",")
    ]
    cited: list[Passage] = []
    for n in numbers:
        if 1 <= n <= len(passages) and passages[n - 1] not in cited:
            cited.append(passages[n - 1])
    body = text.strip()
    sources = [p.text for p in (cited or passages)]
    # A model that copies a passage's label ("03-rag.ipynb > ...") names no new fact.
    missing = unsupported(body, sources, ignore=[p.label for p in passages])
    lines = [body]
    if cited:
        listed = "\n".join(f"- [{passages.index(p) + 1}] {_cite(p, link)}" for p in cited)
        lines.append(f"**Sources:**\n\n{listed}")
    else:
        lines.append("*This reply cites no passage of the course: check it in the lesson.*")
    if missing:
        named = ", ".join(f"`{m}`" for m in missing[:8])
        lines.append(
            f"⚠ *Not in the passages it cites:* {named}. Check these in the lesson before you "
            "rely on them."
        )
    return Grounded("\n\n".join(lines), cited, list(passages), "generate", reply, missing)
