"""``labkit grade``: its options and what it prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.grader.options import NETWORKS, GradeOptions

__all__ = [
    "add_arguments",
    "add_collect_arguments",
    "cli",
    "collect_cli",
    "grade_options",
    "hide_from_command_line",
]


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
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default="",
        help="grade on the workers of this Dask scheduler (tcp://HOST:8786), each with its "
        "own runtime and sandbox, instead of on this machine (needs the [class] extra; "
        "--workers is then each `dask worker`'s --nthreads)",
    )
    lms = parser.add_argument_group("an import file for a learning platform, beside gradebook.csv")
    lms.add_argument(
        "--lms", choices=("canvas", "moodle"), help="also write canvas.csv or moodle.csv"
    )
    lms.add_argument(
        "--lms-column",
        help="the assignment's column: Canvas 'Name (assignment id)' for an existing "
        "assignment, Moodle's grade item name (default: the exercise's name)",
    )
    lms.add_argument(
        "--roster",
        help="a CSV of the class: Canvas's own gradebook export, or for Moodle one with a "
        "'learner' column and an email or idnumber column",
    )
    lms.add_argument(
        "--roster-match",
        help="the roster's column holding hub names (default: 'SIS Login ID' for Canvas, "
        "'learner' for Moodle)",
    )
    lms.add_argument(
        "--moodle-id",
        choices=("username", "email", "idnumber"),
        default="username",
        help="how Moodle finds each user (default: username, the learner's hub name)",
    )


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
    if args.lms and args.roster:  # a bad roster stops here, not after an hour of grading
        from labkit.grader.lms import read_roster

        match = args.roster_match or ("SIS Login ID" if args.lms == "canvas" else "learner")
        read_roster(Path(args.roster), match)
    if options.scheduler:  # each worker uses its own runtime and box, and names its gaps
        url = args.runtime or ""
    else:
        url = args.runtime or discovery.find_runtime(start=True).url
        for gap in box_gaps(sandbox=options.sandbox):  # never a weaker box in silence
            print(f"Not enforced here: {gap}")
    cluster: Callable[..., Any] | None = None
    if options.scheduler:  # Dask is imported only for a run that asks for it
        from labkit.grader.distributed import Cluster

        cluster = Cluster
    report = grade(
        submissions,
        exercise,
        out,
        options,
        runtime_url=url,
        key_path=key_path,
        master_path=master_path,
        root=root,
        cluster=cluster,
    )
    totals = [r["total"] for r in report.results]
    print(
        f"{exercise.name}: {len(totals)} learners, mean {sum(totals) / len(totals):.2f} "
        f"of {exercise.possible:g}; see {out / 'gradebook.csv'} and {out / 'feedback'}/"
    )
    if args.lms:
        _write_lms(args, out, report.results, exercise.name, exercise.possible)
    return 0


def _write_lms(
    args: Any, out: Path, results: list[dict[str, Any]], name: str, possible: float
) -> None:
    """Write the learning platform's import file and say what it left out."""
    from labkit.grader.lms import write_lms

    written = write_lms(
        out,
        args.lms,
        results,
        exercise=name,
        possible=possible,
        column=args.lms_column,
        roster=Path(args.roster) if args.roster else None,
        roster_match=args.roster_match,
        moodle_id=args.moodle_id,
    )
    print(f"{args.lms.capitalize()} import file: {written.path} ({written.rows} learners)")
    for learner, why in sorted(written.left_out.items()):
        print(f"  left out {learner}: not graded ({why}); its row in gradebook.csv says why")
    if written.not_in_roster:
        print(f"  not in the roster, left out: {', '.join(written.not_in_roster)}")


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
        scheduler=args.scheduler,
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


def add_collect_arguments(parser: Any) -> None:
    """The options of ``labkit collect``."""
    from labkit.grader.collect import DEFAULT_PATH

    parser.add_argument("homes", help="the folder of the learners' home folders, e.g. /home")
    parser.add_argument("--exercise", required=True, help="exercise name or number, e.g. 03")
    parser.add_argument(
        "--out", default="SUBMISSIONS", help="where NAME.ipynb files go (default: SUBMISSIONS)"
    )
    parser.add_argument("--root", default=".", help="the course folder (default: .)")
    parser.add_argument(
        "--path",
        default=DEFAULT_PATH,
        help=f"each notebook's path below HOMES (default: {DEFAULT_PATH}; on The Littlest "
        "JupyterHub: jupyter-{learner}/...)",
    )
    parser.add_argument(
        "--hub",
        help="JupyterHub's address: collect for the users it lists (token in "
        "JUPYTERHUB_API_TOKEN) instead of every home folder",
    )
    parser.add_argument("--hub-admins", action="store_true", help="with --hub: admins too")
    parser.add_argument(
        "--learner", action="append", default=None, help="only this learner (repeatable)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace submissions newer than the learner's file"
    )
    parser.add_argument(
        "--max-notebook-mb", type=float, default=20, help="larger notebooks are not copied"
    )


def collect_cli(args: Any) -> int:
    """Run ``labkit collect`` with parsed arguments."""
    import os

    from labkit.errors import GradingError
    from labkit.grader import collect

    name = collect.exercise_name(Path(args.root), args.exercise)
    homes = Path(args.homes)
    if not homes.is_dir():
        raise GradingError(f"{homes} is not a folder; name the folder of home folders (/home).")
    learners = args.learner
    if args.hub:
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not token:
            raise GradingError(
                "--hub needs an API token in JUPYTERHUB_API_TOKEN (an admin's token, e.g. from "
                "`jupyterhub token ADMIN` or the hub's Token page); it is not read from the "
                "command line, which other users can see."
            )
        listed = collect.hub_users(args.hub, token, admins=args.hub_admins)
        learners = [n for n in listed if not learners or n in learners]
    out = Path(args.out)
    results = collect.collect(
        homes,
        name,
        out,
        learners=learners,
        template=args.path,
        force=args.force,
        max_mb=args.max_notebook_mb,
    )
    groups: dict[str, list[collect.Collected]] = {}
    for r in results:
        groups.setdefault(r.status, []).append(r)
    got = [r.learner for s in (collect.COLLECTED, collect.UPDATED) for r in groups.get(s, [])]
    print(f"{name}: {len(got)} notebooks copied into {out}/ ({len(results)} learners)")
    if groups.get(collect.UNCHANGED):
        print(f"  unchanged since the last collection: {len(groups[collect.UNCHANGED])}")
    if groups.get(collect.UPDATED):
        print(
            f"  newer work replaced an earlier copy: {', '.join(r.learner for r in groups[collect.UPDATED])}"
        )
    if groups.get(collect.MISSING):
        print(f"  no notebook (skipped): {', '.join(r.learner for r in groups[collect.MISSING])}")
    for r in groups.get(collect.KEPT_NEWER, []) + groups.get(collect.UNREADABLE, []):
        print(f"  not copied, {r.learner}: {r.detail}")
    if not results:
        print(f"  no learners found in {homes} for --path {args.path}")
    return 0
