"""labkit.plots: every plot renders headless, from live measurements, and shows the data."""

from __future__ import annotations

import io
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch

from labkit import Client, bench, plots, runtime

PROMPT = "Name three colours."
SETTINGS = {"temperature": 0.0, "seed": 42, "max_tokens": 16}


@pytest.fixture(scope="module")
def results(embedded: runtime.RuntimeRecord) -> bench.Comparison:
    """Live measurements: a stream, a whole reply, and two streams at once."""
    with Client(embedded.url, dialect="openai", model=runtime.CHAT_MODEL) as client:
        return bench.compare(
            {
                "stream": lambda: client.stream(PROMPT, **SETTINGS),
                "no stream": lambda: client.chat(PROMPT, **SETTINGS),
                "2 at once": bench.Config(lambda: client.stream(PROMPT, **SETTINGS), 2),
            },
            trials=3,
            warmup=1,
            progress=False,
        )


@pytest.fixture(autouse=True)
def no_show(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plots must never call show(); close every figure afterwards."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a labkit plot called plt.show()")

    monkeypatch.setattr(plt, "show", refuse)
    yield
    plt.close("all")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def assert_renders_with_data(ax: Axes) -> None:
    """The figure saves as a PNG clearly bigger than a blank one with the same words on it."""
    data = _png(ax.figure)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    blank_figure, blank = plt.subplots(figsize=ax.figure.get_size_inches(), layout="constrained")
    blank.set_title(ax.get_title())
    blank.set_xlabel(ax.get_xlabel())
    blank.set_ylabel(ax.get_ylabel())
    assert len(data) > len(_png(blank_figure)) + 500, "the plot looks empty"


def test_timeline_shows_stream_climbing_and_whole_reply_jumping(
    results: bench.Comparison,
) -> None:
    stream, whole = results["stream"][0], results["no stream"][0]
    ax = plots.timeline({"stream": stream, "no stream": whole})
    steps = [line for line in ax.lines if len(line.get_xdata()) > 1]
    assert len(steps) == 2
    for line, trace in zip(steps, (stream, whole), strict=True):
        ys = list(line.get_ydata())
        assert ys[0] == 0 and ys[-1] == len(trace.text)  # every character is accounted for
        assert ys == sorted(ys)
        assert line.get_xdata()[-1] == pytest.approx(trace.total * 1000)
    # The stream climbs in many steps; the whole reply goes from nothing to everything at once.
    assert len(set(steps[0].get_ydata())) > 3
    assert len(set(steps[1].get_ydata())) == 2
    assert ax.get_xlabel().endswith("(ms)") and ax.get_title()
    assert_renders_with_data(ax)


def test_timeline_draws_on_the_given_axes(results: bench.Comparison) -> None:
    _, (left, right) = plt.subplots(1, 2)
    assert plots.timeline(results["stream"][:2], ax=right) is right
    assert not left.lines
    # Two calls of one configuration: two step lines, told apart by number in the legend.
    steps = [line for line in right.lines if len(line.get_xdata()) > 1]
    assert len(steps) == 2
    legend = [text.get_text() for text in right.get_legend().get_texts()]
    assert legend[0].startswith("stream 1") and legend[1].startswith("stream 2")


@pytest.mark.parametrize("metric", ["first_token", "total", "tokens_per_second"])
def test_histogram_counts_every_call(results: bench.Comparison, metric: str) -> None:
    ax = plots.histogram(results, metric)
    filled = {p.get_label(): p for p in ax.patches if isinstance(p, StepPatch) and p.get_fill()}
    assert list(filled) == list(results)
    for label, patch in filled.items():
        counts, _edges, _baseline = patch.get_data()
        assert sum(counts) == len(bench.values(results[label], metric)) > 0
    assert ax.get_xlabel() == plots._axis_label(metric)
    assert_renders_with_data(ax)


def test_cdf_reaches_one(results: bench.Comparison) -> None:
    ax = plots.cdf(results, "total")
    curves = [line for line in ax.lines if line.get_label() in results]
    assert len(curves) == 3
    for line in curves:
        assert line.get_ydata()[-1] == pytest.approx(1.0)
    assert_renders_with_data(ax)


def test_percentile_bars_match_the_summary(results: bench.Comparison) -> None:
    ax = plots.percentile_bars(results, "first_token")
    assert len(ax.patches) == 3 * len(results)  # p50, p90, p99 per configuration
    summary = results.summary("first_token")
    p50_bars = ax.containers[0]
    for bar, label in zip(p50_bars, results, strict=True):
        assert bar.get_height() == pytest.approx(summary[label].p50 * 1000)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(results)
    assert_renders_with_data(ax)


def test_throughput_vs_concurrency(results: bench.Comparison) -> None:
    ax = plots.throughput_vs_concurrency(results)
    lines = [line for line in ax.lines if len(line.get_xdata()) == 2]
    assert len(lines) >= 2  # all requests together, and each request
    assert [round(x) for x in lines[0].get_xdata()] == [1, 2]
    assert all(y > 0 for line in lines for y in line.get_ydata())
    assert_renders_with_data(ax)
