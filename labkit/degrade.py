"""Graceful degradation: when the model cannot answer, say something useful anyway.

Wrap any call that may raise a ``LabkitError``. On success you get the live answer (and it is
remembered); on failure you get the last good answer to the *same* request from the cache, or
else a fixed, honest message. The result says which one it is::

    cache = ReplyCache("replies.jsonl")                 # or ReplyCache() to keep it in memory
    ask = with_fallback(client.chat, cache=cache)
    answer = ask("What is the capital of France?", temperature=0)
    answer.text, answer.source                          # ("Paris ...", "live")
    # ... the runtime goes down ...
    ask("What is the capital of France?", temperature=0).source   # "cache"
    ask("Something never asked before").source                     # "fallback"

The cache is a *stale-if-error* cache: a live answer is always preferred while the runtime works.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, overload

from labkit.errors import InvalidInput, LabkitError, ModelNotFound

__all__ = [
    "DEFAULT_FALLBACK",
    "MISTAKES",
    "Degraded",
    "Fallback",
    "KeyFunc",
    "ReplyCache",
    "Source",
    "cache_key",
    "call_key",
    "with_fallback",
]

P = ParamSpec("P")
Source = Literal["live", "cache", "fallback"]
DEFAULT_FALLBACK = "AI is unavailable right now — try again in a minute."
# The arguments that say *what* is asked; every other keyword is an option of the request.
_PROMPT_ARGS = ("messages", "prompt", "messages_or_str", "texts")


@dataclass(frozen=True)
class Degraded:
    """An answer and where it came from: ``live``, ``cache`` or ``fallback``."""

    text: str
    source: Source
    error: BaseException | None = None  # why the live call failed (None when live)
    value: Any = None  # what the wrapped function returned, when live (e.g. a Reply)

    @property
    def degraded(self) -> bool:
        """True when this is not a live answer."""
        return self.source != "live"

    def __str__(self) -> str:
        return self.text


def cache_key(model: str | None, prompt: Any, options: Mapping[str, Any] | None = None) -> str:
    """A stable hash of (model, messages or prompt, options): equal requests, equal keys."""
    # sort_keys makes {"a":1,"b":2} and {"b":2,"a":1} hash alike; default=str copes with
    # values JSON does not know (a Path, a schema class) by using their text.
    canonical = json.dumps(
        [model, prompt, dict(options or {})], sort_keys=True, default=str, ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ReplyCache:
    """Answers by request key, in memory and optionally in a JSON-lines file that survives restarts."""

    def __init__(self, path: str | Path | None = None, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise InvalidInput(f"max_entries must be 1 or more, not {max_entries}.")
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                    self._remember(str(entry["key"]), str(entry["text"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: skip it, keep the rest

    def _remember(self, key: str, text: str) -> None:
        self._entries[key] = text
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # forget the oldest

    def get(self, key: str) -> str | None:
        """The cached answer for ``key``, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, text: str, **meta: Any) -> None:
        """Remember ``text`` for ``key`` (and append it to the file, if there is one)."""
        with self._lock:
            if self._entries.get(key) == text:
                return  # nothing new: keep the file from growing on every repeat
            self._remember(key, text)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                record = {"key": key, "text": text, "saved": time.time(), **meta}
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


KeyFunc = Callable[..., str]
# Failures a fallback must not hide: the same call fails the same way until the code changes.
MISTAKES: tuple[type[BaseException], ...] = (InvalidInput, ModelNotFound)
Fallback = str | Callable[[BaseException], str]


def call_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The cache key of ``func(*args, **kwargs)`` for a labkit-style call.

    The prompt is the first positional argument (or ``messages=`` / ``prompt=``), the model is
    ``model=`` or the client's default, and every other argument is an option. The function's
    name counts too, so ``chat("hi")`` and ``generate("hi")`` are cached apart.
    """
    options = {k: v for k, v in kwargs.items() if k != "model" and k not in _PROMPT_ARGS}
    prompt = next((kwargs[k] for k in _PROMPT_ARGS if k in kwargs), None)
    if args:
        prompt, extra = (args[0], args[1:]) if prompt is None else (prompt, args)
        if extra:
            options["args"] = list(extra)
    owner = getattr(func, "__self__", None)  # the client, when func is a bound method
    model = kwargs.get("model") or getattr(owner, "model", None)
    options["call"] = getattr(func, "__qualname__", type(func).__name__)
    return cache_key(model if isinstance(model, str) else None, prompt, options)


def _text_of(result: Any) -> str:
    """The text of a result: a str itself, or its ``.text`` (a Reply), or its str()."""
    if isinstance(result, str):
        return result
    text = getattr(result, "text", None)
    return text if isinstance(text, str) else str(result)


@overload
def with_fallback(
    func: Callable[P, Any],
    *,
    fallback: Fallback = ...,
    cache: ReplyCache | None = ...,
    key: KeyFunc | None = ...,
    errors: tuple[type[BaseException], ...] = ...,
) -> Callable[P, Degraded]: ...


@overload
def with_fallback(
    func: None = None,
    *,
    fallback: Fallback = ...,
    cache: ReplyCache | None = ...,
    key: KeyFunc | None = ...,
    errors: tuple[type[BaseException], ...] = ...,
) -> Callable[[Callable[P, Any]], Callable[P, Degraded]]: ...


def with_fallback(
    func: Callable[P, Any] | None = None,
    *,
    fallback: Fallback = DEFAULT_FALLBACK,
    cache: ReplyCache | None = None,
    key: KeyFunc | None = None,
    errors: tuple[type[BaseException], ...] = (LabkitError,),
) -> Callable[P, Degraded] | Callable[[Callable[P, Any]], Callable[P, Degraded]]:
    """Make ``func`` return a ``Degraded`` instead of raising ``errors`` (a decorator too).

    ``fallback`` is the text (or a function of the error giving the text) used when the cache
    has nothing; ``key`` computes the cache key from the call's arguments (default ``call_key``).
    Errors outside ``errors`` (bugs) still raise, and so do ``MISTAKES`` (a wrong model name,
    bad input): they fail the same way every time and are for the caller to fix, not to hide.
    """

    def decorate(f: Callable[P, Any]) -> Callable[P, Degraded]:
        @functools.wraps(f)
        def call(*args: P.args, **kwargs: P.kwargs) -> Degraded:
            k = None
            if cache is not None:
                k = key(*args, **kwargs) if key is not None else call_key(f, args, kwargs)
            try:
                result = f(*args, **kwargs)
            except MISTAKES:
                raise
            except errors as exc:
                return degrade(k, exc, fallback(exc) if callable(fallback) else fallback)
            text = _text_of(result)
            if k is not None and cache is not None:
                cache.put(k, text)
            return Degraded(text, "live", None, result)

        def degrade(k: str | None, exc: BaseException, text: str) -> Degraded:
            """The cached answer for key ``k`` if there is one, else ``text``."""
            if k is not None and cache is not None and (cached := cache.get(k)) is not None:
                return Degraded(cached, "cache", exc)
            return Degraded(text, "fallback", exc)

        return call

    return decorate(func) if func is not None else decorate
