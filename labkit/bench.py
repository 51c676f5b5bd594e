"""Measure how a local model answers: time to first token, total time, tokens per second.

The thing measured is any call with no arguments. It may return text (or a ``Reply``) — a
non-streamed answer that arrives all at once — or an iterator of text pieces (a stream):

    from labkit import bench
    trace = bench.measure(lambda: client.stream("Hi", max_tokens=32))
    trace.first_token, trace.total, trace.tokens_per_second

Timing one call is in ``labkit/trace.py`` (its names are re-exported here). This file
summarises many calls: ``compare`` runs several configurations side by side, taking turns trial by trial, and gives
percentiles, a printable table and a CSV file. All times are in seconds on
``time.perf_counter``'s clock; tables and plots show milliseconds.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from labkit.errors import InvalidInput
from labkit.trace import (
    COUNTED,
    RUNTIME,
    UNKNOWN,
    USAGE,
    Call,
    Timed,
    Trace,
    Traces,
    measure,
    runtime_speed,
    timed,
)

# ---------------------------------------------------------------------------------------------
# Summarising many calls
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Percentiles and extremes of one figure over many calls."""

    n: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


def summarize(values: Iterable[float | None]) -> Summary:
    """Summarise numbers (missing ones, None or NaN, are left out); NaN everywhere if none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan)
    p50, p90, p99 = (float(p) for p in np.percentile(kept, [50, 90, 99]))
    return Summary(len(kept), sum(kept) / len(kept), min(kept), p50, p90, p99, max(kept))


METRICS = {
    "first_token": "time to first token",
    "total": "total time",
    "tokens_per_second": "decode speed",
}


def values(traces: Iterable[Trace], metric: str) -> list[float]:
    """One figure (a name in ``METRICS``) from every trace that has it."""
    if metric not in METRICS:
        raise InvalidInput(f"Unknown figure {metric!r}; choose one of {', '.join(METRICS)}.")
    found = (getattr(trace, metric) for trace in traces)
    return [float(v) for v in found if v is not None]


def batch_throughput(traces: Iterable[Trace]) -> list[float]:
    """Tokens per second over all calls that ran together, one figure per trial."""
    batches: dict[tuple[str, int], list[Trace]] = {}
    for trace in traces:
        batches.setdefault((trace.label, trace.trial), []).append(trace)
    figures = []
    for batch in batches.values():
        wall = max(t.end for t in batch) - min(t.start for t in batch)
        tokens = sum(t.tokens or 0 for t in batch)
        if wall > 0 and tokens:
            figures.append(tokens / wall)
    return figures


# ---------------------------------------------------------------------------------------------
# Running trials and comparing configurations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One configuration to measure: the call, and how many copies of it run at once."""

    call: Call
    concurrency: int = 1


def run_together(call: Call, concurrency: int, *, label: str = "", trial: int = 0) -> list[Trace]:
    """Start ``concurrency`` copies of ``call`` at the same moment; one trace for each."""
    if concurrency == 1:
        traces = [measure(call, label=label)]
    else:
        # The barrier releases all threads at once, so the requests really overlap.
        barrier = threading.Barrier(concurrency)

        def one() -> Trace:
            barrier.wait()
            return measure(call, label=label)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(one) for _ in range(concurrency)]
            traces = [future.result() for future in futures]  # re-raises a call's error
    for trace in traces:
        trace.trial, trace.concurrency = trial, concurrency
    return traces


class Comparison(Mapping[str, list[Trace]]):
    """Traces per configuration, with summaries, a printable table and CSV export."""

    def __init__(self, traces: Mapping[str, list[Trace]]) -> None:
        self.traces = {label: list(found) for label, found in traces.items()}

    def __getitem__(self, label: str) -> list[Trace]:
        return self.traces[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)

    def summary(self, metric: str) -> dict[str, Summary]:
        """One figure (``first_token``, ``total`` or ``tokens_per_second``) per configuration."""
        return {label: summarize(values(found, metric)) for label, found in self.items()}

    def throughput(self) -> dict[str, Summary]:
        """Tokens per second of all calls running together, per configuration."""
        return {label: summarize(batch_throughput(found)) for label, found in self.items()}

    def table(self) -> str:
        """A plain-text table: milliseconds for times, tokens per second for speeds."""
        headers = ["configuration", "calls", "at once", "first token ms p50/p90/p99"]
        headers += ["total ms p50/p90/p99", "mean", "decode tok/s p50", "together tok/s p50"]
        first, total = self.summary("first_token"), self.summary("total")
        speed, together = self.summary("tokens_per_second"), self.throughput()
        rows = [headers]
        for label, found in self.items():
            f, t = first[label], total[label]
            rows.append(
                [
                    label,
                    str(len(found)),
                    str(max((x.concurrency for x in found), default=1)),
                    f"{_ms(f.p50)} / {_ms(f.p90)} / {_ms(f.p99)}",
                    f"{_ms(t.p50)} / {_ms(t.p90)} / {_ms(t.p99)}",
                    _ms(t.mean),
                    _num(speed[label].p50),
                    _num(together[label].p50),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
        lines = []
        for n, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per call (pieces as JSON) and return the path."""
        return write_csv([t for found in self.values() for t in found], path)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def compare(
    configs: Mapping[str, Call | Config],
    *,
    trials: int = 10,
    warmup: int = 1,
    progress: bool = True,
) -> Comparison:
    """Measure each configuration ``trials`` times, taking turns so drift affects all alike."""
    if not configs:
        raise InvalidInput("Nothing to compare: pass at least one configuration.")
    if trials < 1 or warmup < 0:
        raise InvalidInput(f"Need trials >= 1 and warmup >= 0 (got {trials} and {warmup}).")
    plan = {label: c if isinstance(c, Config) else Config(c) for label, c in configs.items()}
    for label, config in plan.items():
        if config.concurrency < 1:
            raise InvalidInput(f"{label!r}: concurrency must be at least 1.")
    labels = list(plan)
    results: dict[str, list[Trace]] = {label: [] for label in labels}
    rounds = warmup + trials
    with tqdm(total=rounds * len(labels), desc="measuring", disable=not progress) as bar:
        for n in range(rounds):
            # Rotate who goes first each round, so no configuration always follows the same one.
            turn = labels[n % len(labels) :] + labels[: n % len(labels)]
            for label in turn:
                config = plan[label]
                traces = run_together(config.call, config.concurrency, label=label, trial=n)
                if n >= warmup:  # warm-up rounds load the model and fill caches: not counted
                    for trace in traces:
                        trace.trial = n - warmup
                    results[label] += traces
                bar.update()
    return Comparison(results)


def run(
    call: Call,
    *,
    trials: int = 10,
    warmup: int = 1,
    concurrency: int = 1,
    label: str = "",
    progress: bool = True,
) -> list[Trace]:
    """Measure one configuration ``trials`` times after ``warmup`` uncounted calls."""
    config = Config(call, concurrency)
    return compare({label: config}, trials=trials, warmup=warmup, progress=progress)[label]


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

COLUMNS = [f.name for f in fields(Trace)]


def write_csv(traces: Iterable[Trace], path: str | Path) -> Path:
    """Write traces, one row each; floats keep full precision so reading back is exact."""
    path = Path(path)
    rows = [_to_row(trace) for trace in traces]  # convert first: a bad trace writes nothing
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | Path) -> Comparison:
    """Read traces written by ``write_csv`` (or ``Comparison.to_csv``) back, by configuration."""
    path = Path(path)
    traces: dict[str, list[Trace]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise InvalidInput(
                    f"{path} is not a trace file: columns {', '.join(sorted(missing))} are "
                    "missing. Write it with labkit.bench.write_csv."
                )
            for number, row in enumerate(reader, start=2):
                trace = _from_row(row, path, number)
                traces.setdefault(trace.label, []).append(trace)
    except OSError as exc:
        raise InvalidInput(f"Cannot read {path}: {exc.strerror}.") from exc
    return Comparison(traces)


def _to_row(trace: Trace) -> dict[str, str]:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value)  # repr round-trips a float exactly
        return str(value)

    row = {name: cell(getattr(trace, name)) for name in COLUMNS}
    row["pieces"] = json.dumps([[t, text] for t, text in trace.pieces], ensure_ascii=False)
    return row


def _from_row(row: Mapping[str, str], path: Path, number: int) -> Trace:
    def number_or_none(name: str, kind: type[float] | type[int]) -> Any:
        return kind(row[name]) if row[name] != "" else None

    try:
        return Trace(
            start=float(row["start"]),
            total=float(row["total"]),
            first_token=number_or_none("first_token", float),
            pieces=[(float(t), str(text)) for t, text in json.loads(row["pieces"])],
            tokens=number_or_none("tokens", int),
            tokens_per_second=number_or_none("tokens_per_second", float),
            source=row["source"],
            streamed=row["streamed"] == "true",
            prompt_tokens=number_or_none("prompt_tokens", int),
            label=row["label"],
            trial=int(row["trial"]),
            concurrency=int(row["concurrency"]),
        )
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path}, line {number}: not a valid trace row ({exc}).") from exc


__all__ = [
    "COUNTED",
    "METRICS",
    "RUNTIME",
    "UNKNOWN",
    "USAGE",
    "Call",
    "Comparison",
    "Config",
    "Summary",
    "Timed",
    "Trace",
    "Traces",
    "batch_throughput",
    "compare",
    "measure",
    "read_csv",
    "run",
    "run_together",
    "runtime_speed",
    "summarize",
    "timed",
    "values",
    "write_csv",
]
