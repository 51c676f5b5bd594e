"""Counting tokens without a tokenizer, and packing text into a token budget.

One estimate serves the whole kit: conversation budgets, RAG chunk sizes and the prompt that
``labkit.rag.answer`` fits to the model's context. It errs high, because the two mistakes
cost differently: an estimate that is too high wastes a little room, one that is too low
makes the runtime cut the prompt or refuse it (HTTP 400).

::

    estimate_tokens("Up to 5 days, by 31 March.")     # 11
    pack([120, 80, 90, 40], 200)                       # [(0, 2), (2, 4)]: item ranges per chunk
    split_text("x" * 5000, 300)                        # pieces of at most 300 tokens each

The rule, and how it was measured: every word or punctuation mark counts one token per 4
characters (at least one), a run of more than 20 letters and digits (an ID, a hash, base64)
one token per character, and the sum is raised by 20%. Compared with the real tokenizers
(llama.cpp's ``/tokenize``) of SmolLM2 (chat) and all-MiniLM-L6-v2 (embeddings), per paragraph:

==================  ===================  ===================
text                SmolLM2              MiniLM
==================  ===================  ===================
English (553 par.)  +45%, 1% below real  +49%, never below
Python (136 par.)   +111%, 1% below      +22%, 2% below
base64 and hex      +35%, never below    +59%, never below
German (50 par.)    -16%, 94% below      -6%, 70% below
==================  ===================  ===================

Characters / 3, the usual rule, is +54% on English but 29% of code paragraphs come out low
for MiniLM (worst: a third of the real count), every base64 string is half its real count,
and German is low too (-22%). Tokenizers trained mostly on English split German and other
languages into many more pieces: for them, count exactly with ``exact_counter(url)`` (one
request per text), or keep a larger share of the window free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import requests

from labkit.errors import InvalidInput, RuntimeUnavailable, ServerError

__all__ = [
    "CHARS_PER_TOKEN",
    "LONG_WORD",
    "SAFETY",
    "TokenCounter",
    "estimate_tokens",
    "exact_counter",
    "pack",
    "pack_texts",
    "split_text",
    "truncate_tokens",
]

TokenCounter = Callable[[str], int]

_PIECE = re.compile(r"\w+|[^\w\s]")
CHARS_PER_TOKEN = 4.0  # inside an ordinary word: tokenizers keep common words whole
LONG_WORD = 20  # longer runs are IDs, hashes or base64: about one token per character
SAFETY = 1.2  # the margin that keeps English and code at or above the real count


def _cost(piece: str) -> float:
    """Tokens (before the margin) that one word or mark counts for."""
    if len(piece) > LONG_WORD:
        return float(len(piece))
    return max(1.0, len(piece) / CHARS_PER_TOKEN)


def estimate_tokens(text: str) -> int:
    """Roughly how many tokens ``text`` is, erring high (see the module's docstring)."""
    raw = sum(_cost(p) for p in _PIECE.findall(text))
    # round() first: in floats 100 * 1.2 is 120.00000000000001, which would ceil to 121.
    return math.ceil(round(raw * SAFETY, 6))


def exact_counter(
    url: str, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> TokenCounter:
    """A counter that asks a llama.cpp server's ``/tokenize`` (exact, but one request per text)."""
    session = requests.Session()
    session.headers.update(headers or {})  # the embedded runtime's: ``record.llama_headers``

    def count(text: str) -> int:
        try:
            reply = session.post(
                url.rstrip("/") + "/tokenize", json={"content": text}, timeout=timeout
            )
            reply.raise_for_status()
            return len(reply.json()["tokens"])
        except requests.ConnectionError as exc:
            raise RuntimeUnavailable(
                f"Could not count tokens: nothing answers at {url}. Start the runtime "
                "(`labkit up`) or use estimate_tokens instead."
            ) from exc
        except (requests.RequestException, ValueError, KeyError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None) or 502
            raise ServerError(
                f"Could not count tokens with {url}/tokenize: {exc}. That endpoint exists on "
                "llama.cpp's own server (the embedded runtime's llama_url or embed_url), not on "
                "Ollama's API; use estimate_tokens instead.",
                status=status,
            ) from exc

    return count


def truncate_tokens(text: str, limit: int) -> str:
    """The start of ``text`` that is at most ``limit`` estimated tokens (cut between words)."""
    room = limit / SAFETY + 1e-9  # + 1e-9 because 120 / 1.2 is 99.99999...
    for match in _PIECE.finditer(text):
        cost = _cost(match.group())
        if cost > room:
            # A long run of characters is cut inside; an ordinary word is left out whole.
            keep = int(room) if len(match.group()) > LONG_WORD else 0
            return text[: match.start() + keep]
        room -= cost
    return text


def split_text(text: str, size: int, count: TokenCounter = estimate_tokens) -> list[str]:
    """Cut ``text`` into consecutive pieces of at most ``size`` tokens: between words, else inside.

    Joined back together the pieces give ``text`` exactly. Text without spaces (base64, a
    hash, a minified line) is cut by characters: nothing is ever longer than ``size``.
    """
    if size < 2:  # one character is estimated at 2 tokens (1 x SAFETY, rounded up)
        raise InvalidInput(f"size must be at least 2 tokens, not {size}.")
    if count(text) <= size:
        return [text]
    words = [m.end() for m in re.finditer(r"\S+\s*", text)]
    if len(words) > 1:
        # Halve at the word boundary nearest the middle: O(n log n) and every cut is a space.
        middle = min(words[:-1], key=lambda end: abs(end - len(text) / 2))
        return split_text(text[:middle], size, count) + split_text(text[middle:], size, count)
    # One unbroken "word": a token per character at worst, so size / SAFETY characters fit.
    step = max(1, int(size / SAFETY))
    while step > 1 and count(text[:step]) > size:
        step //= 2
    return [text[i : i + step] for i in range(0, len(text), step)]


def pack(
    costs: Sequence[int],
    size: int,
    *,
    overlap: int = 0,
    breaks: Sequence[bool] | None = None,
) -> list[tuple[int, int]]:
    """Group consecutive items into runs of at most ``size`` tokens; returns (first, end) ranges.

    An item larger than ``size`` gets a run of its own (split it first with ``split_text``).
    ``breaks[i]`` marks item ``i`` as a good place to start a run (a new paragraph): a run
    ends there if it is at least half full. ``overlap`` repeats up to that many tokens of a
    run's last items at the start of the next one.
    """
    if size < 1 or not 0 <= overlap < size:
        raise InvalidInput(f"need size >= 1 and 0 <= overlap < size (got {size}, {overlap}).")
    ranges: list[tuple[int, int]] = []
    first = 0
    while first < len(costs):
        end, total = first, 0
        while end < len(costs) and (end == first or total + costs[end] <= size):
            total += costs[end]
            end += 1
        if end < len(costs) and breaks is not None:
            for b in range(end, first, -1):
                if breaks[b] and sum(costs[first:b]) >= size / 2:
                    end = b
                    break
        ranges.append((first, end))
        if end >= len(costs):
            break
        back, carried = end, 0
        while back - 1 > first and carried + costs[back - 1] <= overlap:
            back -= 1
            carried += costs[back]
        first = back
    return ranges


def pack_texts(
    pieces: Sequence[str], size: int, count: TokenCounter = estimate_tokens, joiner: str = "\n\n"
) -> list[str]:
    """Join consecutive texts with ``joiner`` into chunks of at most ``size`` tokens each."""
    parts = [p for piece in pieces for p in split_text(piece, size, count)]
    # The joiner costs a token at most, so each part is costed as itself + 1 (errs high).
    costs = [count(p) + (1 if joiner.strip() else 0) for p in parts]
    return [joiner.join(parts[a:b]) for a, b in pack(costs, size)]
