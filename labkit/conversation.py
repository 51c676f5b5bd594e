"""Keeping a conversation inside the model's context window.

A model sees only what fits in its context window (2048 tokens per request on the kit's
runtime; 4K to 128K on others), and that window holds the question *and* the answer. So an
application decides what to send each time:

1. **A budget.** The course's rule of thumb: at most 70% of the window for the input, the
   other 30% kept free for the reply — ``budget(2048) == (1433, 615)``.
2. **A sliding window.** Always the system prompt, then the last few exchanges; older turns
   are dropped (``Conversation(keep_turns=4)``), optionally replaced by a short running
   summary that the model itself writes (``summarise=summarise_with(client)``).
3. **Chunks for long documents.** A document longer than the budget is split at paragraph
   and sentence boundaries into pieces that fit with room for the instructions
   (``split_to_budget``), and each piece is sent on its own.

::

    chat = Conversation("You are a concise assistant.", context_tokens=2048, keep_turns=4)
    chat.add_user("What is a context window?")
    reply = client.chat(chat.messages(), max_tokens=200)
    chat.add_assistant(reply.text)
    chat.trimmed            # what was left out of the last messages(), and why

Token counts here are *estimates* from ``labkit.tokens`` (the same rule RAG uses): no
tokenizer is needed, it works for every model, and it errs high on English and code (see
that module for the measurements, and for German and other languages).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.errors import ContextOverflow, InvalidInput, LabkitError
from labkit.tokens import TokenCounter, estimate_tokens, pack_texts, split_text

if TYPE_CHECKING:  # only for type hints: a Conversation works without a runtime
    from labkit.client import Client

__all__ = [
    "INPUT_SHARE",
    "SUMMARY_PROMPT",
    "SUMMARY_SYSTEM",
    "TOKENS_PER_MESSAGE",
    "ContextOverflow",
    "Conversation",
    "Message",
    "Summariser",
    "TokenCounter",
    "Trimmed",
    "budget",
    "estimate_tokens",
    "message_tokens",
    "split_to_budget",
    "summarise_with",
    "transcript",
]

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

# --- 1. counting tokens, roughly -----------------------------------------------------------

# Each message also costs a few tokens of chat-template markup (<|im_start|>role ... <|im_end|>).
TOKENS_PER_MESSAGE = 5
INPUT_SHARE = 0.7  # the rule of thumb: 70% of the window for input, 30% for the reply


def message_tokens(messages: Sequence[Message], count: TokenCounter = estimate_tokens) -> int:
    """Estimated tokens of a message list, template markup included."""
    return sum(count(m["content"]) + TOKENS_PER_MESSAGE for m in messages)


def budget(context_tokens: int, input_share: float = INPUT_SHARE) -> tuple[int, int]:
    """Split a context window into (input tokens, reply tokens): 70% / 30% by default."""
    if context_tokens < 64:
        raise InvalidInput(
            f"context_tokens={context_tokens} is too small for a conversation; pass the "
            "model's context window in tokens (e.g. 2048, 4096, 8192)."
        )
    if not 0.1 <= input_share <= 0.95:
        raise InvalidInput(f"input_share must be between 0.1 and 0.95, not {input_share}.")
    input_tokens = int(context_tokens * input_share)
    return input_tokens, context_tokens - input_tokens


# --- 2. summarising older turns --------------------------------------------------------------

# The summariser gets the previous summary ("" at first) and the turns that just left the
# window, and returns the new summary. Any function will do: tests pass a deterministic one.
Summariser = Callable[[str, Sequence[Message]], str]

# Instructions after the text work better for small models than a system prompt alone.
SUMMARY_SYSTEM = "You write short factual summaries."
SUMMARY_PROMPT = (
    "Summarise the facts from this conversation in one or two sentences: names, numbers, "
    "decisions and open questions. No greeting, no advice."
)


def transcript(messages: Sequence[Message]) -> str:
    """Messages as plain text, one ``Role: content`` paragraph each."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def summarise_with(
    client: Client,
    *,
    max_tokens: int = 120,
    temperature: float = 0.0,
    seed: int | None = 0,
    prompt: str = SUMMARY_PROMPT,
    timeout: float | None = 60.0,
) -> Summariser:
    """A summariser that asks the model (through ``client``) for a short factual summary."""

    def summarise(previous: str, older: Sequence[Message]) -> str:
        text = transcript(older)
        if previous:  # the new summary replaces the old one, so it must carry its facts on
            text = f"Earlier: {previous}\n\n{text}"
        ask = f"Conversation:\n\n{text}\n\n{prompt}"
        reply = client.chat(
            [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": ask}],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            options={"repeat_penalty": 1.2},  # small models repeat themselves at temperature 0
            timeout=timeout,
        )
        return reply.text.strip()

    return summarise


# --- 3. the sliding window ----------------------------------------------------------------------


@dataclass(frozen=True)
class Trimmed:
    """What the last ``messages()`` left out, and what it sent instead."""

    dropped: tuple[Message, ...] = ()  # older messages not sent word for word
    by_budget: int = 0  # exchanges dropped to fit the token budget (beyond keep_turns)
    summary: str = ""  # the summary sent in their place ("" if none)
    tokens: int = 0  # estimated tokens of what was sent
    input_budget: int = 0

    def __bool__(self) -> bool:
        return bool(self.dropped)

    def __str__(self) -> str:
        sent = f"~{self.tokens} of {self.input_budget} input tokens"
        if not self.dropped:
            return f"Sent the whole conversation ({sent})."
        instead = " (summarised)" if self.summary else ""
        return f"Left out {len(self.dropped)} older messages{instead}; sent {sent}."


@dataclass
class Conversation:
    """A chat history that sends the system prompt, a summary and the last exchanges."""

    system: str = ""
    context_tokens: int = 2048  # the model's window per request (the kit's runtime: 2048)
    keep_turns: int = 4  # exchanges (a user message and its answer) sent word for word
    summarise: Summariser | None = None
    summary_tokens: int = 150  # room kept in the budget for the summary
    count: TokenCounter = estimate_tokens
    history: list[Message] = field(default_factory=list)  # every message, nothing dropped
    summary: str = field(default="", init=False)  # covers history[:summarised]
    summarised: int = field(default=0, init=False)
    trimmed: Trimmed = field(default_factory=Trimmed, init=False)  # set by messages()

    def __post_init__(self) -> None:
        if self.keep_turns < 1:
            raise InvalidInput(f"keep_turns must be at least 1, not {self.keep_turns}.")
        budget(self.context_tokens)  # check it now rather than at the first messages()

    @property
    def input_tokens(self) -> int:
        """Tokens the input may use: 70% of the window."""
        return budget(self.context_tokens)[0]

    @property
    def reply_tokens(self) -> int:
        """Tokens kept free for the reply: the other 30%."""
        return budget(self.context_tokens)[1]

    def add_user(self, text: str) -> None:
        """Append what the user said."""
        self._add("user", text)

    def add_assistant(self, text: str) -> None:
        """Append what the model answered."""
        self._add("assistant", text)

    def _add(self, role: str, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidInput(f"A {role} message must be a string, not {type(text).__name__}.")
        self.history.append({"role": role, "content": text})

    def undo(self) -> Message | None:
        """Remove and return the last message (e.g. a question that got no answer)."""
        if not self.history:
            return None
        if len(self.history) <= self.summarised:  # it is inside the summary: start that again
            self.summary, self.summarised = "", 0
        return self.history.pop()

    def clear(self) -> None:
        """Forget the whole conversation (the system prompt stays)."""
        self.history, self.summary, self.summarised = [], "", 0
        self.trimmed = Trimmed()

    def exchanges(self) -> list[list[Message]]:
        """The history grouped into exchanges: each starts at a user message."""
        groups: list[list[Message]] = []
        for message in self.history:
            if message["role"] == "user" or not groups:
                groups.append([])
            groups[-1].append(message)
        return groups

    def messages(self) -> list[Message]:
        """What to send now: system prompt (+ summary), then the recent exchanges, in budget."""
        fixed = self.count(self.system) + TOKENS_PER_MESSAGE if self.system else 0
        reserve = self.summary_tokens + TOKENS_PER_MESSAGE if self.summarise else 0
        room = self.input_tokens - fixed - reserve
        if room < 32:
            raise ContextOverflow(
                f"The system prompt is ~{fixed} tokens, which leaves no room for the "
                f"conversation in the {self.input_tokens} input tokens of a "
                f"{self.context_tokens}-token window. Shorten the system prompt."
            )

        # Walk back from the newest exchange, keeping whole exchanges while they fit.
        groups = self.exchanges()
        kept: list[list[Message]] = []
        used = 0
        for group in reversed(groups):
            cost = message_tokens(group, self.count)
            if len(kept) == self.keep_turns or used + cost > room:
                break
            kept.insert(0, group)
            used += cost
        if groups and not kept:
            newest = groups[-1][0]
            raise ContextOverflow(
                f"The last message alone is ~{self.count(newest['content'])} tokens, more than "
                f"the {room} left for the conversation in a {self.context_tokens}-token window. "
                "Shorten it, or split a long document with split_to_budget() and send the "
                "parts one at a time."
            )
        by_budget = min(len(groups), self.keep_turns) - len(kept)

        start = len(self.history) - sum(len(g) for g in kept)
        dropped = self.history[:start]
        if self.summarise is not None and start > self.summarised:
            # Fold only the turns that left the window since the last summary into it.
            new = self.history[self.summarised : start]
            try:
                self.summary = self.summarise(self.summary, new).strip()
            except LabkitError:
                pass  # no summary this time: the turns are still dropped, the chat goes on
            else:
                self.summarised = start
            # Never let a long-winded summary push the conversation out of its budget.
            self.summary = _clip(self.summary, self.summary_tokens, self.count)

        system = self.system
        if self.summary and self.summarised:
            # One system message, not two: several chat templates accept only one, at the start.
            note = f"Summary of the earlier conversation: {self.summary}"
            system = f"{system}\n\n{note}" if system else note
        sent: list[Message] = [{"role": "system", "content": system}] if system else []
        sent += [dict(m) for group in kept for m in group]
        self.trimmed = Trimmed(
            dropped=tuple(dropped),
            by_budget=by_budget,
            summary=self.summary if dropped else "",
            tokens=message_tokens(sent, self.count),
            input_budget=self.input_tokens,
        )
        return sent

    def ask(self, client: Client, text: str, **options: Any) -> str:
        """Add ``text``, send the window through ``client``, add and return the answer."""
        self.add_user(text)
        options.setdefault("max_tokens", self.reply_tokens)
        try:
            reply = client.chat(self.messages(), **options)
        except LabkitError:
            self.undo()  # a question that got no answer would confuse the next turn
            raise
        self.add_assistant(reply.text)
        return reply.text


def _clip(text: str, tokens: int, count: TokenCounter) -> str:
    """Cut ``text`` at a word boundary so that it is at most ``tokens`` (estimated)."""
    if count(text) <= tokens:
        return text
    words = text.split()
    while words and count(" ".join(words) + " …") > tokens:
        # Drop a tenth at a time: fast on long texts, precise enough on short ones.
        words = words[: max(0, len(words) - max(1, len(words) // 10))]
    return " ".join(words) + " …" if words else ""


# --- 4. documents longer than the window ---------------------------------------------------------

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def split_to_budget(
    text: str,
    context_tokens: int,
    *,
    prompt_tokens: int = 200,
    input_share: float = INPUT_SHARE,
    count: TokenCounter = estimate_tokens,
) -> list[str]:
    """Split ``text`` into chunks that each fit the input budget beside a prompt.

    Each chunk is at most ``budget(context_tokens)[0] - prompt_tokens`` tokens (estimated),
    so the instructions (``prompt_tokens``) and the reply (the other 30%) still fit. Chunks
    break between paragraphs where possible, then between sentences, then between words.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("split_to_budget() got no text: pass the document as a string.")
    input_tokens, _ = budget(context_tokens, input_share)
    size = input_tokens - prompt_tokens
    if size < 16:
        raise ContextOverflow(
            f"prompt_tokens={prompt_tokens} leaves {size} tokens for the document in a "
            f"{context_tokens}-token window ({input_tokens} for input). Shorten the prompt or "
            "use a model with a larger context window."
        )
    pieces: list[str] = []
    for paragraph in _PARAGRAPHS.split(text.strip()):
        pieces += _fit(paragraph.strip(), size, count)
    return pack_texts([p for p in pieces if p], size, count)


def _fit(paragraph: str, size: int, count: TokenCounter) -> list[str]:
    """A paragraph as pieces of at most ``size`` tokens: itself, its sentences, or word runs."""
    if count(paragraph) <= size:
        return [paragraph]
    # A "sentence" longer than a whole chunk (a table, base64) is cut by split_text.
    sentences = [p for s in _SENTENCES.split(paragraph) for p in split_text(s, size, count)]
    return pack_texts(sentences, size, count, joiner=" ")
