"""A JSON-lines record of every model call: what was asked, how long it took, what went wrong.

    log = CallLog("calls.jsonl")
    client = Client(log=log)
    ...
    summarize(read_log("calls.jsonl"))   # error rate, latency percentiles, validation failures

One line per call, appended, so a crash loses at most the line being written. Prompts are
stored as a sha256 hash (to spot repeats) and, when short, as text too.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from labkit.errors import InvalidInput

__all__ = [
    "PROMPT_KEEP",
    "CallLog",
    "Record",
    "percentile",
    "prompt_hash",
    "read_log",
    "summarize",
]

PROMPT_KEEP = 500  # prompts up to this many characters are stored in full

Record = dict[str, Any]


def prompt_hash(prompt: str) -> str:
    """The sha256 hex digest of a prompt (the same prompt always gives the same hash)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class CallLog:
    """Appends one JSON object per call to ``path`` (safe to share between threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        endpoint: str,
        dialect: str,
        model: str,
        prompt: str,
        latency: float,
        first_token: float | None = None,
        reply_chars: int | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        validation: str | None = None,  # "ok" or "failed" when the reply was checked
        attempts: int = 1,
        error: BaseException | None = None,
        **extra: Any,
    ) -> Record:
        """Write one call's record and return it."""
        entry: Record = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "endpoint": endpoint,
            "dialect": dialect,
            "model": model,
            "prompt_sha256": prompt_hash(prompt),
            "prompt": prompt if len(prompt) <= PROMPT_KEEP else None,
            "prompt_chars": len(prompt),
            "latency_s": round(latency, 6),
            "first_token_s": None if first_token is None else round(first_token, 6),
            "reply_chars": reply_chars,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "validation": validation,
            "attempts": attempts,
            "error": type(error).__name__ if error is not None else None,
            "error_message": str(error) if error is not None else None,
            **extra,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)
        return entry


def read_log(path: str | Path) -> list[Record]:
    """Every record in a call log, oldest first."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidInput(f"No call log at {path}: no call has been logged there yet.") from exc
    lines = text.split("\n")
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # the last line without its newline: a write cut short by a crash
            raise InvalidInput(f"Line {number} of {path} is not a JSON record: {exc.msg}.") from exc
    return records


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(records: Iterable[Mapping[str, Any]]) -> Record:
    """Error rate, latency percentiles (successful calls) and validation failures of a log."""
    records = list(records)
    calls = len(records)
    failed = [r for r in records if r.get("error")]
    ok_latency = [float(r["latency_s"]) for r in records if not r.get("error")]
    first_tokens = [
        float(r["first_token_s"]) for r in records if r.get("first_token_s") is not None
    ]
    validated = [r for r in records if r.get("validation") is not None]
    invalid = [r for r in validated if r["validation"] != "ok"]
    return {
        "calls": calls,
        "errors": len(failed),
        "error_rate": len(failed) / calls if calls else 0.0,
        "error_types": _count(str(r["error"]) for r in failed),
        "retries": sum(max(0, int(r.get("attempts", 1)) - 1) for r in records),
        "latency_p50": percentile(ok_latency, 50),
        "latency_p90": percentile(ok_latency, 90),
        "latency_p99": percentile(ok_latency, 99),
        "first_token_p50": percentile(first_tokens, 50),
        "validated": len(validated),
        "validation_failures": len(invalid),
    }


def _count(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts
