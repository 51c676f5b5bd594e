"""How fast does the local model answer? Streaming vs not, short vs long prompt, 1/2/4 at once.

Run: .venv/bin/python bench/latency.py [--trials 8] [--max-tokens 48] [--dialect openai] [--model M]
Uses the runtime labkit finds (set LABKIT_BASE_URL to choose one). Configurations take turns
trial by trial, so a busy moment on the machine hits all of them alike. Prints two tables and
writes CSV files and plots to bench/results/.

Every request starts with its own number, so the runtime cannot reuse the work it did for an
earlier, identical prompt (llama.cpp keeps the last prompt of each slot): each call pays for
its whole prompt, as a new question would.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no window

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from labkit import Client, bench, plots

RESULTS = Path(__file__).resolve().parent / "results"
SHORT = "Name three colours."
# About 560 tokens of made-up notes, then the same kind of short question.
LONG = (
    "Here are the stock notes of a small shop.\n"
    + "\n".join(
        f"Shelf {n % 9 + 1}, box {n}: {n * 3 + 2} pencils, {n % 5 + 1} rulers, checked on day {n % 28 + 1}."
        for n in range(1, 21)
    )
    + "\nWhich shelf holds box 7? Answer in one sentence."
)


def main() -> None:
    """Run both comparisons, print their tables, save CSV files and plots."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=8, help="counted calls per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer")
    parser.add_argument(
        "--dialect", choices=["ollama", "openai"], help="default: the runtime's own"
    )
    parser.add_argument("--model", help="chat model (default: the runtime's first chat model)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for CSV files and plots")
    args = parser.parse_args()

    client = Client(dialect=args.dialect, model=args.model)
    print(f"Runtime: {client.url} ({client.dialect.name} dialect), model {client.model}")
    # Request numbers start from the clock, so they differ from any earlier run's as well.
    numbers = itertools.count(int(time.time()) * 1000)
    settings = {"temperature": 0.0, "seed": 42, "max_tokens": args.max_tokens}

    def ask(prompt: str, *, stream: bool) -> bench.Call:
        def call() -> object:
            text = f"Request {next(numbers)}. {prompt}"  # a fresh prompt: no cache reuse
            return client.stream(text, **settings) if stream else client.chat(text, **settings)

        return call

    print(
        f"\nShort prompt {_tokens(client, SHORT)} tokens, long prompt {_tokens(client, LONG)} tokens"
    )
    # Other programs competing for the CPU slow everything down: note how busy the machine is.
    print(f"CPU load before: {_load()}")
    prompts = bench.compare(
        {
            "stream, short": ask(SHORT, stream=True),
            "no stream, short": ask(SHORT, stream=False),
            "stream, long": ask(LONG, stream=True),
            "no stream, long": ask(LONG, stream=False),
        },
        trials=args.trials,
        warmup=args.warmup,
    )
    print(prompts.table())

    print("\nThe short prompt, streamed, with several requests at once")
    together = bench.compare(
        {f"{k} at once": bench.Config(ask(SHORT, stream=True), k) for k in (1, 2, 4)},
        trials=args.trials,
        warmup=args.warmup,
    )
    print(together.table())

    print(f"\nCPU load after: {_load()}")

    args.out.mkdir(parents=True, exist_ok=True)
    prompts.to_csv(args.out / "prompts.csv")
    together.to_csv(args.out / "concurrency.csv")
    saved = _plot(prompts, together, args.out)
    print(
        f"\nSaved {len(saved) + 2} files to {args.out}: prompts.csv, concurrency.csv, "
        + ", ".join(saved)
    )


def _tokens(client: Client, prompt: str) -> str:
    """The prompt's length in tokens, as the runtime counts it (chat template included)."""
    count = client.chat(prompt, max_tokens=1).prompt_tokens
    return "?" if count is None else str(count)


def _load() -> str:
    """The 1-minute load average next to the number of CPU cores (Unix only)."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _typical(traces: Sequence[bench.Trace]) -> bench.Trace:
    """The call whose total time is the median: the one to show as an example."""
    middle = statistics.median_low(t.total for t in traces)
    return next(t for t in traces if t.total == middle)


def _plot(prompts: bench.Comparison, together: bench.Comparison, out: Path) -> list[str]:
    """Draw each figure into its own PNG; return the file names."""
    # Long prompts take far longer than short ones: side by side, each keeps its own scale.
    short = {label: found for label, found in prompts.items() if "short" in label}
    long = {label: found for label, found in prompts.items() if "long" in label}
    pairs: dict[str, Callable[[bench.Traces, Axes], Axes]] = {
        "timeline.png": lambda data, ax: plots.timeline(
            {label: _typical(found) for label, found in data.items()}, ax=ax
        ),
        "first_token_percentiles.png": lambda data, ax: plots.percentile_bars(
            data, "first_token", ax=ax
        ),
        "total_percentiles.png": lambda data, ax: plots.percentile_bars(data, "total", ax=ax),
        "total_histogram.png": lambda data, ax: plots.histogram(data, "total", ax=ax, bins=10),
    }
    for name, draw in pairs.items():
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        for ax, data, words in zip(axes, (short, long), ("short", "long"), strict=True):
            draw(data, ax)
            ax.set_title(f"{ax.get_title()} — {words} prompt")
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
    singles: dict[str, Callable[[Axes], Axes]] = {
        "total_cdf.png": lambda ax: plots.cdf(prompts, "total", ax=ax),
        "throughput_concurrency.png": lambda ax: plots.throughput_vs_concurrency(together, ax=ax),
        "concurrency_total_percentiles.png": lambda ax: plots.percentile_bars(
            together, "total", ax=ax
        ),
    }
    for name, single in singles.items():
        figure, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
        single(ax)
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
    return [*pairs, *singles]


if __name__ == "__main__":
    main()
