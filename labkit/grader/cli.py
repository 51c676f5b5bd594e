"""``labkit grade``: its options and what it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.grader.options import NETWORKS, GradeOptions

__all__ = ["add_arguments", "cli", "grade_options", "hide_from_command_line"]


def add_arguments(parser: Any) -> None:
    """The options of ``labkit grade``."""
    parser.add_argument("submissions", help="folder of submitted notebooks (NAME.ipynb or NAME/)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--exercise", help="exercise name or number (its key in grading/hidden/)")
    which.add_argument("--master", help="grade against this master notebook directly")
    parser.add_argument("--root", default=".", help="course folder with grading/ (default: .)")
    parser.add_argument("--out", help="results folder (default: SUBMISSIONS-grades next to it)")
    default = GradeOptions()  # one set of defaults, for the command and for scripts
    parser.add_argument(
        "--workers",
        type=int,
        default=default.workers,
        help=f"parallel kernels (default {default.workers})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default.timeout,
        help=f"seconds per cell and per test (default {default.timeout:g})",
    )
    parser.add_argument("--regrade", action="store_true", help="grade unchanged notebooks too")
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=default.memory_mb,
        help="memory cap for each kernel and every process it starts, together "
        f"(default {default.memory_mb})",
    )
    parser.add_argument(
        "--disk-mb",
        type=int,
        default=default.disk_mb,
        help=f"scratch disk of each kernel, temp folders included (default {default.disk_mb})",
    )
    parser.add_argument(
        "--notebook-timeout",
        type=float,
        default=default.notebook_timeout,
        help="wall-time seconds per notebook, re-runs included "
        f"(default {default.notebook_timeout:g})",
    )
    parser.add_argument(
        "--max-notebook-mb",
        type=float,
        default=default.max_notebook_mb,
        help=f"notebooks larger than this are not graded (default {default.max_notebook_mb:g})",
    )
    parser.add_argument("--runtime", help="model runtime URL for the kernels (default: found)")
    parser.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run kernels as yourself, without isolation (trusted notebooks only)",
    )
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        default=default.network,
        help="runtime: kernels reach only the model runtime (default); host: the machine's network",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="send every model request to the runtime (default: repeats of deterministic "
        "requests and embeddings are answered from a cache shared by the run)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli(args: Any) -> int:
    """Run ``labkit grade`` with parsed arguments."""
    from labkit import discovery
    from labkit.grader import assign
    from labkit.grader.run import find_key, grade
    from labkit.grader.sandbox import box_gaps

    options = grade_options(args)
    root = Path(args.root)
    submissions = Path(args.submissions).resolve()
    hide_from_command_line(args.submissions)
    key_path = master_path = None
    if args.master:
        master_path = Path(args.master)
        exercise = assign.parse_master(master_path).exercise
    else:
        key_path = find_key(root, args.exercise)
        exercise = assign.load_key(key_path)
    out = Path(args.out) if args.out else submissions.with_name(submissions.name + "-grades")
    url = args.runtime or discovery.find_runtime(start=True).url
    for gap in box_gaps(sandbox=options.sandbox):  # never a weaker box in silence
        print(f"Not enforced here: {gap}")
    report = grade(
        submissions,
        exercise,
        out,
        options,
        runtime_url=url,
        key_path=key_path,
        master_path=master_path,
        root=root,
    )
    totals = [r["total"] for r in report.results]
    print(
        f"{exercise.name}: {len(totals)} learners, mean {sum(totals) / len(totals):.2f} "
        f"of {exercise.possible:g}; see {out / 'gradebook.csv'} and {out / 'feedback'}/"
    )
    return 0


def grade_options(args: Any) -> GradeOptions:
    """The grading options that parsed ``labkit grade`` arguments ask for (checked)."""
    return GradeOptions(
        workers=args.workers,
        timeout=args.timeout,
        regrade=args.regrade,
        sandbox=not args.no_sandbox,
        memory_mb=args.memory_mb,
        disk_mb=args.disk_mb,
        notebook_timeout=args.notebook_timeout,
        max_notebook_mb=args.max_notebook_mb,
        network=args.network,
        cache=not args.no_cache,
        progress=not args.quiet,
    )


def hide_from_command_line(text: str) -> bool:
    """Blank ``text`` out of this process's command line, as others see it in /proc.

    Every user on the machine can read /proc/PID/cmdline; the submissions folder names the
    class. The kernel shows the bytes of the original argument area, so overwriting them
    in place (through /proc/self/mem, root's own memory) hides the name. True if it did.
    """
    needle = text.encode()
    if not needle:
        return False
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            if needle not in area:
                return False
            mem.seek(start)
            mem.write(area.replace(needle, b"*" * len(needle)))
    except (OSError, ValueError, IndexError):
        return False
    return True
