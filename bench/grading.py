"""Benchmark the grader: kernel start, per-notebook overhead, and 2 workers against 1.

Run (as root, for the sandbox; the runtime must be up): .venv/bin/python bench/grading.py
Options: --rounds N (default 2), --no-sandbox (grade without isolation, e.g. not as root).

Goals: per-notebook overhead besides model time ≤ 0.5 s (trivial notebooks: kernel start,
cells, tests, feedback); 2 workers grade the same 20 notebooks ≥ 1.6x faster than 1.
Timings depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

from labkit import discovery
from labkit.grader import assign, grading

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"


def trivial_master(folder: Path) -> Path:
    """An exercise with one question and two quick tests: nothing but overhead to measure."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_raw_cell("# BEGIN QUESTION\nname: q1\npoints: 2"),
        nbformat.v4.new_raw_cell("# BEGIN SOLUTION"),
        nbformat.v4.new_code_cell("answer = 6 * 7  # SOLUTION"),
        nbformat.v4.new_raw_cell("# END SOLUTION"),
        nbformat.v4.new_raw_cell("# BEGIN TESTS"),
        nbformat.v4.new_code_cell("assert answer == 42"),
        nbformat.v4.new_code_cell("# HIDDEN\nassert isinstance(answer, int)"),
        nbformat.v4.new_raw_cell("# END TESTS"),
        nbformat.v4.new_raw_cell("# END QUESTION"),
    ]
    path = folder / "trivial.ipynb"
    nbformat.write(nb, str(path))
    return path


def make_class(master: Path, root: Path, folder: Path, copies: dict[str, int]) -> Path:
    """A class of submissions: copies of the solution and of the learner version."""
    generated = assign.assign([master], root, say=False)[0]
    folder.mkdir(parents=True)
    sources = {
        "solved": root / generated.solution_path,
        "untouched": root / generated.learner_path,
    }
    for kind, count in copies.items():
        for n in range(count):
            shutil.copy(sources[kind], folder / f"{kind}-{n:02d}.ipynb")
    return root / generated.key_path


def kernel_start_fresh(runs: int) -> tuple[float, float]:
    """Median seconds for a new ipykernel to answer, and to also import labkit.course.checks."""
    from jupyter_client.manager import KernelManager

    ready, imported = [], []
    for _ in range(runs):
        start = time.perf_counter()
        km = KernelManager(transport="ipc", ip=tempfile.mktemp(prefix="bench-kernel-"))
        km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        ready.append(time.perf_counter() - start)
        kc.execute_interactive("import labkit.course.checks", timeout=120)
        imported.append(time.perf_counter() - start)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return statistics.median(ready), statistics.median(imported)


def kernel_start_forked(runs: int, sandbox: bool, key: Path) -> float:
    """Median seconds for a kernel forked from the grader's zygote to answer."""
    exercise = assign.load_key(key)
    grading.SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="run-", dir=grading.SCRATCH_BASE)
    os.chmod(run_dir, 0o711)
    settings = grading.Settings(exercise=exercise, runtime_url="", sandbox=sandbox, run_dir=run_dir)
    settings.reach = grading._reachability_covers(grading._needed_paths())
    slots = grading.Slots(1)
    number = slots.numbers[0]
    users = [grading._grading_user(2 * number + k) for k in (0, 1)]
    if not sandbox:
        me = (os.getuid(), os.getgid(), "me")
        users = [me, me]
    worker = grading._Worker(settings, users)
    times = []

    async def one() -> None:
        start = time.perf_counter()
        kernel = await worker.start_kernel(worker.user())
        kc = kernel.km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        times.append(time.perf_counter() - start)
        kc.stop_channels()
        await worker.stop_kernel(kernel)

    try:
        for _ in range(runs):
            worker.loop.run_until_complete(one())
    finally:
        worker.close()
        slots.release()
        shutil.rmtree(run_dir, ignore_errors=True)
    return statistics.median(times)


def grade_timed(subs: Path, key: Path, out: Path, url: str, workers: int, sandbox: bool) -> Any:
    """Grade everything again; (seconds, report)."""
    start = time.perf_counter()
    report = grading.grade(
        subs,
        assign.load_key(key),
        out,
        runtime_url=url,
        workers=workers,
        timeout=60,
        regrade=True,
        sandbox=sandbox,
        key_path=key,
        root=key.parent.parent.parent,
        progress=False,
        say=lambda _: None,
    )
    return time.perf_counter() - start, report


def row(name: str, value: str, goal: str = "", verdict: str = "") -> None:
    """One line of the side-by-side table."""
    print(f"{name:<52} {value:>10}  {goal:<9} {verdict}")


def main() -> None:
    """Measure, then print every figure next to its goal."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-sandbox", action="store_true")
    args = parser.parse_args()
    sandbox = not args.no_sandbox
    url = discovery.find_runtime(start=True).url
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        base = Path(tmp)
        trivial_key = make_class(
            trivial_master(base), base / "trivial", base / "trivial-class", {"solved": 10}
        )
        toy_key = make_class(TOY, base / "toy", base / "toy-class", {"solved": 14, "untouched": 6})

        fresh_ready, fresh_labkit = kernel_start_fresh(3)
        forked = kernel_start_forked(5, sandbox, trivial_key)

        # Trivial notebooks, one worker: what each notebook costs besides the model.
        _, report = grade_timed(
            base / "trivial-class", trivial_key, base / "trivial-out", url, 1, sandbox
        )
        per_notebook = statistics.median(r["seconds"] for r in report.results)
        start = time.perf_counter()
        grading._write_outputs(base / "trivial-out", report.exercise, report.results, "bench")
        feedback = (time.perf_counter() - start) / len(report.results)

        # The same 20 notebooks with 1 and 2 workers, alternating to spread the noise.
        one, two, one_phase, two_phase = [], [], [], []
        for _ in range(args.rounds):
            seconds, report = grade_timed(base / "toy-class", toy_key, base / "o1", url, 1, sandbox)
            one.append(seconds)
            one_phase.append(report.grading_seconds)
            seconds, report = grade_timed(base / "toy-class", toy_key, base / "o2", url, 2, sandbox)
            two.append(seconds)
            two_phase.append(report.grading_seconds)
    load_after = os.getloadavg()[0]
    speedup = statistics.median(one) / statistics.median(two)
    phase_speedup = statistics.median(one_phase) / statistics.median(two_phase)
    overhead = per_notebook + feedback

    print(
        f"\nGrading benchmark ({'sandboxed' if sandbox else 'no sandbox'}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} → {load_after:.1f})\n"
    )
    row("measure", "value", "goal", "verdict")
    row(
        "kernel start, new Python (median)",
        f"{fresh_ready:.2f} s",
        "≤ 0.5 s",
        "met" if fresh_ready <= 0.5 else "over: why kernels are forked",
    )
    row("  … and its `import labkit.course.checks`", f"{fresh_labkit:.2f} s")
    row("kernel start, forked from the preloaded zygote", f"{forked:.2f} s")
    row("per-notebook time in the worker (trivial, median)", f"{per_notebook:.2f} s")
    row("  + gradebook/feedback/plot share per notebook", f"{feedback:.3f} s")
    row(
        "per-notebook overhead besides model time",
        f"{overhead:.2f} s",
        "≤ 0.5 s",
        "met" if overhead <= 0.5 else "NOT met",
    )
    row("20 toy notebooks, 1 worker (median, with start-up)", f"{statistics.median(one):.1f} s")
    row("20 toy notebooks, 2 workers (median, with start-up)", f"{statistics.median(two):.1f} s")
    row(
        "speed-up, 2 workers vs 1",
        f"{speedup:.2f}x",
        "≥ 1.6x",
        "met" if speedup >= 1.6 else "NOT met",
    )
    row("  the same, grading phase only (workers busy)", f"{phase_speedup:.2f}x")
    print(f"\nruns: 1 worker {[round(x, 1) for x in one]}, 2 workers {[round(x, 1) for x in two]}")
    print(
        f"grading phase: 1 worker {[round(x, 1) for x in one_phase]}, "
        f"2 workers {[round(x, 1) for x in two_phase]}"
    )


if __name__ == "__main__":
    main()
