"""Plots of measured calls (see ``labkit.bench``): timelines, distributions, percentiles.

Every function draws on the Axes you give it (or on a new figure) and returns that Axes; none
calls ``show()``, so plots can be combined, styled further and saved. Times are shown in
milliseconds.

    from labkit import bench, plots
    results = bench.compare({"stream": ..., "no stream": ...}, trials=10)
    plots.percentile_bars(results, "first_token")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from labkit.bench import (
    METRICS,
    Trace,
    Traces,
    batch_throughput,
    summarize,
    values,
)
from labkit.errors import InvalidInput

if TYPE_CHECKING:  # matplotlib loads when the first plot is drawn: it takes a second
    from matplotlib.axes import Axes

_UNITS = {"first_token": "ms", "total": "ms", "tokens_per_second": "tokens/s"}


def _new_axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=(7, 4), layout="constrained")
    return new


def _figures(traces: Iterable[Trace], metric: str) -> list[float]:
    """One figure per trace, in display units (milliseconds for times)."""
    found = values(traces, metric)
    return [v * 1000 for v in found] if _UNITS[metric] == "ms" else found


def _axis_label(metric: str) -> str:
    return f"{METRICS[metric]} ({_UNITS[metric]})"


def _check(data: Traces) -> None:
    if not any(data.values()):
        raise InvalidInput("No measured calls to plot: run bench.compare or bench.run first.")


def timeline(traces: Mapping[str, Trace] | Sequence[Trace], ax: Axes | None = None) -> Axes:
    """Characters received over time for each call: a stream climbs, a whole reply jumps once."""
    if isinstance(traces, Mapping):
        named = traces
    else:  # a list may hold several calls of one configuration: number them
        named = {f"{t.label or 'call'} {i + 1}": t for i, t in enumerate(traces)}
    if not named:
        raise InvalidInput("No calls to draw: pass at least one trace.")
    ax = _new_axes(ax)
    for label, trace in named.items():
        times = [0.0] + [t * 1000 for t, _ in trace.pieces] + [trace.total * 1000]
        counts = np.cumsum([0] + [len(text) for _, text in trace.pieces])
        counts = np.append(counts, counts[-1])
        first = (
            "" if trace.first_token is None else f", first text {trace.first_token * 1000:.0f} ms"
        )
        (line,) = ax.step(times, counts, where="post", label=f"{label}{first}")
        if trace.first_token is not None:
            # Mark the moment the reader first sees something: the latency they feel.
            shown = len(next(text for _, text in trace.pieces if text))
            ax.plot(trace.first_token * 1000, shown, "o", color=line.get_color())
    ax.set_title("Text arriving over time")
    ax.set_xlabel("time since the request was sent (ms)")
    ax.set_ylabel("characters received")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return ax


def histogram(data: Traces, metric: str = "total", ax: Axes | None = None, bins: int = 20) -> Axes:
    """How one figure is spread over the calls, one outline per configuration."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.ticker import MaxNLocator

    _check(data)
    ax = _new_axes(ax)
    per_config = {label: _figures(found, metric) for label, found in data.items()}
    everything = [v for found in per_config.values() for v in found]
    # The same bin edges for every configuration, so their bars can be compared.
    edges = np.histogram_bin_edges(everything, bins=bins)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, found) in enumerate(per_config.items()):
        color = colors[n % len(colors)]
        counts, _ = np.histogram(found, bins=edges)
        # A light fill shows overlap; the solid outline keeps each configuration readable.
        face = to_rgba(color, 0.25)
        ax.stairs(counts, edges, fill=True, facecolor=face, edgecolor=color, lw=1.5, label=label)
    ax.set_title(f"Distribution of {METRICS[metric]}")
    ax.set_xlabel(_axis_label(metric))
    ax.set_ylabel("calls")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # calls are whole numbers
    ax.legend(fontsize="small")
    return ax


def cdf(data: Traces, metric: str = "total", ax: Axes | None = None) -> Axes:
    """Share of calls at or below each value: read p50 and p90 where the curves cross 0.5, 0.9."""
    _check(data)
    ax = _new_axes(ax)
    for label, found in data.items():
        figures = np.sort(_figures(found, metric))
        if len(figures) == 0:
            continue
        shares = np.arange(1, len(figures) + 1) / len(figures)
        ax.step(
            np.concatenate([[figures[0]], figures]),
            np.concatenate([[0], shares]),
            where="post",
            label=label,
        )
    for level in (0.5, 0.9):
        ax.axhline(level, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(f"Cumulative distribution of {METRICS[metric]}")
    ax.set_xlabel(_axis_label(metric))
    ax.set_ylabel("share of calls at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return ax


def percentile_bars(data: Traces, metric: str = "first_token", ax: Axes | None = None) -> Axes:
    """p50, p90 and p99 of one figure, grouped by configuration."""
    _check(data)
    ax = _new_axes(ax)
    labels = list(data)
    summaries = [summarize(_figures(data[label], metric)) for label in labels]
    x = np.arange(len(labels))
    width = 0.27
    for i, (name, pick) in enumerate([("p50", "p50"), ("p90", "p90"), ("p99", "p99")]):
        heights = [getattr(s, pick) for s in summaries]
        bars = ax.bar(x + (i - 1) * width, heights, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=1)
    ax.set_xticks(x, labels)
    ax.set_title(f"{METRICS[metric].capitalize()} by configuration")
    ax.set_ylabel(_axis_label(metric))
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", title="percentile", title_fontsize="small")
    return ax


def throughput_vs_concurrency(data: Traces, ax: Axes | None = None) -> Axes:
    """Tokens per second for all requests together, and for each one, as more run at once."""
    _check(data)
    ax = _new_axes(ax)
    by_level: dict[int, list[Trace]] = {}
    for found in data.values():
        for trace in found:
            by_level.setdefault(trace.concurrency, []).append(trace)
    levels = sorted(by_level)
    # Both lines divide tokens by waiting time (prompt included), so at 1 they nearly meet.
    together = [summarize(batch_throughput(by_level[k])) for k in levels]
    each = [summarize(_own_throughput(by_level[k])) for k in levels]
    for name, summaries, style, nudge in [
        ("all requests together", together, "o-", -0.03),
        ("each request on its own", each, "s--", 0.03),
    ]:
        medians = np.array([s.p50 for s in summaries])
        spread = np.array([[s.p50 - s.min for s in summaries], [s.max - s.p50 for s in summaries]])
        # Nudge the two series apart sideways so their error bars do not hide each other.
        xs = [k + nudge for k in levels]
        label = f"{name} (median, min to max)"
        ax.errorbar(xs, medians, yerr=spread, fmt=style, capsize=3, label=label)
    ax.set_xticks(levels)
    ax.set_title("Throughput as more requests run at once")
    ax.set_xlabel("requests running at once")
    ax.set_ylabel("generated tokens per second")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def _own_throughput(traces: Iterable[Trace]) -> list[float]:
    """Each call's tokens over its own total time."""
    return [t.tokens / t.total for t in traces if t.tokens and t.total > 0]


__all__ = ["cdf", "histogram", "percentile_bars", "throughput_vs_concurrency", "timeline"]
