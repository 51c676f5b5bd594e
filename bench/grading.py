"""Benchmark the grader: kernel start, per-notebook overhead, 2 workers against 1, and
model-bound classes (the course's real exercises) with and without the reply cache.

Run (as root, for the sandbox; the runtime must be up): .venv/bin/python bench/grading.py
Options: --rounds N (default 2), --no-sandbox (grade without isolation, e.g. not as root),
--exercises 01,02,03,04 (model-bound classes to grade; "" for none), --copies N (learners
per model-bound class, default 6), --skip-overhead (only the model-bound classes),
--varied N (a varied class of exercise 3, N learners; 0 for none), --varied-workers W
(default 2), --scheduler ADDRESS (grade the varied class on that Dask cluster too).

A varied class is what a real class looks like to the cache: each learner's exercise 3 is
the solution with their own chunk size, overlap, k and system prompt, drawn (seeded) from
choices a learner might make, so their embeddings and chats differ. It reports core-seconds
per notebook (grading phase x cores busy / notebooks) and projects a class of 300 on 2, 8
and 32 cores (on one machine, or on several with a runtime each: --scheduler), at that
rate; the goal is 30 min.

Goals: per-notebook overhead besides model time ≤ 0.5 s (trivial notebooks: kernel start,
cells, tests, feedback); 2 workers grade the same 20 notebooks ≥ 1.6x faster than 1; a class
of 300 graded on 2 cores in ≤ 10 min (ex01, ex04) and ≤ 30 min (ex02, ex03). The class is
copies of the solution plus one untouched notebook: every learner asks the same questions,
which is the cache's best case (learners who write different prompts or chunks hit less);
the projection for 300 is one cold notebook plus 299 cached ones at the measured speed-up.
Timings depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

from labkit import discovery
from labkit.grader import assign, grading
from labkit.grader.kernels import Worker
from labkit.grader.report import write_outputs
from labkit.grader.sandbox import needed_paths, reachability_covers
from labkit.grader.users import grading_user

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT / "tests" / "data" / "grading"
GOALS = {"01": 600.0, "02": 1800.0, "03": 1800.0, "04": 600.0}  # seconds for a class of 300
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
    url = discovery.find_runtime().url
    settings = grading.Settings(
        exercise=exercise,
        options=grading.GradeOptions(sandbox=sandbox),
        runtime_url=url,
        reach=reachability_covers(needed_paths()),
        run_dir=run_dir,
    )
    slots = grading.Slots(1)
    number = slots.numbers[0]
    users = [grading_user(2 * number + k) for k in (0, 1)]
    if not sandbox:
        me = (os.getuid(), os.getgid(), "me")
        users = [me, me]
    worker = Worker(settings, users)
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


def grade_timed(
    subs: Path,
    key: Path,
    out: Path,
    url: str,
    workers: int,
    sandbox: bool,
    *,
    cache: bool = True,
    root: Path | None = None,
    timeout: float = 60,
) -> Any:
    """Grade everything again; (seconds, report)."""
    start = time.perf_counter()
    report = grading.grade(
        subs,
        assign.load_key(key),
        out,
        grading.GradeOptions(
            workers=workers,
            timeout=timeout,
            regrade=True,
            sandbox=sandbox,
            cache=cache,
            progress=False,
        ),
        runtime_url=url,
        key_path=key,
        root=root or key.parent.parent.parent,
        say=lambda _: None,
    )
    return time.perf_counter() - start, report


def row(name: str, value: str, goal: str = "", verdict: str = "") -> None:
    """One line of the side-by-side table."""
    print(f"{name:<52} {value:>10}  {goal:<9} {verdict}")


def overhead(args: argparse.Namespace, sandbox: bool, url: str) -> None:
    """Kernel start, per-notebook overhead and the 2-worker speed-up, on model-free notebooks."""
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
        write_outputs(base / "trivial-out", report.exercise, report.results, "bench")
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


def model_bound(args: argparse.Namespace, sandbox: bool, url: str) -> None:
    """The course's exercises: seconds per submission, cached or not, 1 or 2 workers, 300."""
    names = [n.strip() for n in args.exercises.split(",") if n.strip()]
    if not names:
        return
    rows: list[tuple[str, ...]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="labkit-bench-model-") as tmp:
        base = Path(tmp)
        for name in names:
            key = grading.find_key(PROJECT, name)
            exercise = key.stem
            subs = base / exercise
            subs.mkdir()
            for n in range(args.copies):
                shutil.copy(
                    PROJECT / "solutions" / f"{exercise}.ipynb", subs / f"solved-{n:02d}.ipynb"
                )
            shutil.copy(PROJECT / "exercises" / f"{exercise}.ipynb", subs / "untouched.ipynb")
            runs: dict[tuple[bool, int], Any] = {}
            plan = [(True, 1), (True, 2), (True, 4), *((True, n) for n in args.more_workers)]
            if not args.no_cold:
                plan.insert(0, (False, 1))
            if args.uncached_two:
                plan.append((False, 2))
            for cache, workers in plan:
                out = base / f"{exercise}-{cache}-{workers}"
                _, report = grade_timed(
                    subs, key, out, url, workers, sandbox, cache=cache, root=PROJECT, timeout=180
                )
                runs[cache, workers] = report
                totals = sorted({r["total"] for r in report.results if r["learner"] != "untouched"})
                for r in report.results:  # say why a solution lost points (runtime, limits…)
                    if r["learner"] != "untouched" and r["total"] < report.exercise.possible:
                        lost = [t["name"] for t in r["tests"] if t["status"] != "passed"]
                        print(f"  {r['learner']}: {r['status']} lost {lost}; {r['notes'][:2]}")
                print(
                    f"{exercise}: cache={cache} workers={workers}: "
                    f"{report.grading_seconds:.1f} s for {len(report.results)} notebooks, "
                    f"solution scores {totals} of {report.exercise.possible:g}",
                    flush=True,
                )
            cold = runs.get((False, 1), runs[True, 1])
            warm = runs[True, 2]
            per_cold = statistics.median(r["seconds"] for r in cold.results)
            if args.no_cold:  # the cached run's first notebook is the one that filled it
                per_cold = cold.result("solved-00")["seconds"]
            per_warm = statistics.median(
                r["seconds"] for r in runs[True, 1].results if r["learner"] != "solved-00"
            )
            same = all(_scores(runs[k]) == _scores(cold) for k in runs)
            # 300 learners: one cold notebook fills the cache, the other 299 run warm, as fast
            # as the workers went together on this class (the speed-up measured, not assumed).
            one_worker = runs[True, 1].grading_seconds
            projected = per_cold + 299 * per_warm / max(1.0, one_worker / warm.grading_seconds)
            most = max(w for _, w in runs)  # the most kernels tried on these 2 cores
            four = per_cold + 299 * per_warm / max(
                1.0, one_worker / runs[True, most].grading_seconds
            )
            goal = GOALS.get(exercise[:2], 0.0)
            rows.append(
                (
                    exercise,
                    f"{per_cold:.1f}",
                    f"{per_warm:.1f}",
                    f"{runs[True, 1].grading_seconds:.0f}",
                    f"{warm.grading_seconds:.0f}",
                    f"{runs[True, 1].grading_seconds / warm.grading_seconds:.2f}x",
                    f"{projected / 60:.1f} min",
                    f"{four / 60:.1f} min",
                    f"{goal / 60:.0f} min",
                    "met" if min(projected, four) <= goal else "NOT met",
                    "yes" if same else "NO",
                )
            )
    load_after = os.getloadavg()[0]
    print(
        f"\nModel-bound classes ({args.copies} solved + 1 untouched each, "
        f"{'sandboxed' if sandbox else 'no sandbox'}, load average {load_before:.1f} → "
        f"{load_after:.1f})\n"
    )
    head = ("exercise", "s/nb cold", "s/nb cached", "1w cached", "2w cached", "2w/1w")
    head += ("300 (2w)", "300 (most)", "goal", "verdict", "same scores")
    widths = [20, 9, 11, 9, 9, 6, 9, 9, 7, 8, 11]
    for line in (head, *rows):
        print("  ".join(f"{c:>{w}}" for c, w in zip(line, widths, strict=True)))
    print(
        "\ns/nb: median seconds per notebook in a worker (cold: no cache; cached: the class's "
        "later notebooks); 1w/2w: grading phase with 1 or 2 workers, cache on; 300 (2w): "
        "one cold notebook plus 299 cached ones at the speed-up the 2 workers reached over 1 "
        "(most: the most kernels tried on the same 2 cores, 4 unless --more-workers, for tests "
        "that mostly wait); same scores: every run gave every "
        "learner the scores of the uncached run."
    )


CHUNK_SIZES = (120, 160, 200, 240, 300, 400)
OVERLAPS = (0, 10, 20, 30, 50)
TOP_KS = (2, 3, 4, 5, 6)
PROMPTS = (
    "You answer employees' questions about Fernhollow Analytics' HR policies. Use only the "
    "numbered passages. After each fact, cite its passage number in square brackets, like [2]. ",
    "You are Fernhollow Analytics' HR assistant. Answer from the numbered passages only, "
    "briefly, and cite the passage of each fact as [n]. ",
    "Answer questions about HR policy using nothing but the passages below. Every sentence "
    "ends with the number of its passage in square brackets. ",
    "You help staff find HR rules. Quote the rule, cite its passage like [1], never guess. ",
)


def varied_class(folder: Path, learners: int, seed: int = 3) -> list[dict[str, Any]]:
    """``learners`` notebooks of exercise 3, each the solution with its own choices.

    The chunk size, overlap, k and system prompt are drawn per learner (seeded): the
    settings a class would try, so each notebook builds its own index and asks its own
    prompts, as in a real class (the cache then helps only where choices coincide).
    """
    import random

    pick = random.Random(seed)
    solution = nbformat.read(str(PROJECT / "solutions" / "03-hr-rag.ipynb"), as_version=4)
    folder.mkdir(parents=True)
    chosen = []
    for n in range(learners):
        nb = nbformat.from_dict(json.loads(json.dumps(solution)))  # a copy to edit
        size = pick.choice(CHUNK_SIZES)
        overlap = pick.choice([o for o in OVERLAPS if o < size // 3])
        k, prompt = pick.choice(TOP_KS), pick.choice(PROMPTS)
        settings = {"CHUNK_SIZE": size, "CHUNK_OVERLAP": overlap, "TOP_K": k}
        changed = 0
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for name, value in settings.items():
                cell.source, hits = re.subn(rf"(?m)^{name} = .*$", f"{name} = {value}", cell.source)
                changed += hits
            if cell.source.startswith("SYSTEM_PROMPT = ("):
                first = cell.source.index("(") + 1
                end = cell.source.index("f'If the passages")
                cell.source = cell.source[:first] + f"\n    {prompt!r}\n    " + cell.source[end:]
                changed += 1
        if changed != 4:  # the solution's cells moved: say so rather than bench copies
            raise SystemExit(f"exercise 3's solution changed shape ({changed} of 4 settings found)")
        nbformat.write(nb, str(folder / f"learner-{n:03d}.ipynb"))
        chosen.append({"size": size, "overlap": overlap, "k": k, "prompt": PROMPTS.index(prompt)})
    return chosen


def _grade_varied(
    args: argparse.Namespace, sandbox: bool, url: str, base: Path, key: Path, scheduler: str
) -> tuple[float, Any]:
    """Grade the varied class in ``base`` (here, or on ``scheduler``); (seconds, report)."""
    start = time.perf_counter()
    report = grading.grade(
        base / "class",
        assign.load_key(key),
        base / f"out-{'cluster' if scheduler else 'here'}",
        grading.GradeOptions(
            workers=args.varied_workers,
            timeout=180,
            regrade=True,
            sandbox=sandbox,
            progress=False,
            scheduler=scheduler,
        ),
        runtime_url=url,
        key_path=key,
        root=PROJECT,
        say=lambda _: None,
    )
    return time.perf_counter() - start, report


def varied(args: argparse.Namespace, sandbox: bool, url: str) -> None:
    """A varied class of exercise 3: core-seconds per notebook, and 300 learners projected."""
    if args.varied <= 0:
        return
    load_before = os.getloadavg()[0]
    key = grading.find_key(PROJECT, "03")
    with tempfile.TemporaryDirectory(prefix="labkit-bench-varied-") as tmp:
        base = Path(tmp)
        chosen = varied_class(base / "class", args.varied)
        distinct = len({tuple(c.values()) for c in chosen})
        print(
            f"\nVaried class: {args.varied} notebooks of {key.stem}, {distinct} distinct choices "
            f"of chunk size, overlap, k and system prompt",
            flush=True,
        )
        wall, report = _grade_varied(args, sandbox, url, base, key, "")
        load_after = os.getloadavg()[0]
        cores = min(args.varied_workers, os.cpu_count() or 1)
        per_notebook = [r["seconds"] for r in report.results]
        core_seconds = report.grading_seconds * cores / len(report.results)
        totals = [r["total"] for r in report.results]
        print(
            f"graded here: {report.grading_seconds:.0f} s grading phase ({wall:.0f} s with "
            f"start-up), {args.varied_workers} workers on {cores} of {os.cpu_count()} cores, "
            f"load average {load_before:.1f} → {load_after:.1f}"
        )
        print(
            f"scores: mean {statistics.mean(totals):.2f} of {report.exercise.possible:g}, "
            f"min {min(totals):g}, max {max(totals):g}"
        )
        row("measure", "value", "goal", "verdict")
        row("seconds per notebook in a worker (median)", f"{statistics.median(per_notebook):.1f} s")
        row("seconds per notebook in a worker (mean)", f"{statistics.mean(per_notebook):.1f} s")
        row("core-seconds per notebook (phase x cores / n)", f"{core_seconds:.1f} cs")
        for n in (2, 8, 32):
            minutes = 300 * core_seconds / n / 60
            row(
                f"300 learners on {n} cores (projected)",
                f"{minutes:.1f} min",
                "≤ 30 min",
                "met" if minutes <= 30 else "NOT met",
            )
        print(
            "\ncore-seconds: the cores the workers kept busy (the runtime's included) for the "
            "grading phase, per notebook; on a loaded machine this overstates the cost (the "
            "load average is printed). The projection divides 300 notebooks' core-seconds by "
            "the cores: it holds while each machine has its own runtime and a worker per core, "
            "which is how `labkit grade --scheduler` runs; a shared cache across a class of "
            "300 could only lower it.",
            flush=True,
        )
        if args.scheduler:
            cluster_wall, cluster = _grade_varied(args, sandbox, url, base, key, args.scheduler)
            same = _scores(cluster) == _scores(report)
            row("the same class on the cluster (grading phase)", f"{cluster.grading_seconds:.0f} s")
            row("  … with connecting and its workers' start-up", f"{cluster_wall:.0f} s")
            row("  same scores as graded here", "yes" if same else "NO")


def _scores(report: Any) -> dict[str, Any]:
    return {r["learner"]: r["scores"] for r in report.results}


def main() -> None:
    """Measure, then print every figure next to its goal."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--exercises", default="01,02,03,04")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--uncached-two", action="store_true", help="also 2 workers, no cache")
    parser.add_argument(
        "--more-workers", type=int, nargs="*", default=[], help="also try these worker counts"
    )
    parser.add_argument(
        "--no-cold", action="store_true", help="skip the uncached run (scores compared cached)"
    )
    parser.add_argument("--varied", type=int, default=0, help="learners in a varied class")
    parser.add_argument("--varied-workers", type=int, default=2)
    parser.add_argument("--scheduler", default="", help="also grade the varied class there")
    args = parser.parse_args()
    sandbox = not args.no_sandbox
    url = discovery.find_runtime().url
    if not args.skip_overhead:
        overhead(args, sandbox, url)
    model_bound(args, sandbox, url)
    varied(args, sandbox, url)


if __name__ == "__main__":
    main()
