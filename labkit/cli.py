"""The ``labkit`` command: start and stop the embedded runtime, open the lab, and more."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from labkit import runtime  # the launcher alone: standard library only
from labkit.errors import LabkitError
from labkit.runtime import launcher

PROJECT = Path(__file__).resolve().parent.parent


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded runtime (or report the running one)."""
    runtime.up(args.port, threads=args.threads)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the embedded runtime that labkit started."""
    runtime.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show every runtime that answers here, and this folder's if it does not."""
    from labkit import discovery

    found = discovery.running_runtimes()
    own = runtime.read_record()
    # Alive but silent (stopped with SIGSTOP, hung): `labkit up` says the same and starts nothing.
    problem = None
    if own and not any(rt.url == own.url and not rt.foreign for rt in found):
        problem = launcher.unanswered(own)
        print(f"- {problem}" if problem else f"- this folder's kit runtime: {own.url} (slow)")
    if not found and own is None:
        print("No runtime is running. Start the embedded one with `labkit up`.")
    for rt in found:
        if rt.foreign:
            print(f"- {rt.name}: {rt.url} ({rt.reason}) — not used here; its owner may stop it")
            continue
        print(f"- {rt.name}: {rt.url} ({rt.dialect} dialect) — {rt.reason}")
        print(f"    models: {', '.join(rt.models) or 'none'}")
    return 1 if problem else 0


def cmd_which(args: argparse.Namespace) -> int:
    """Say which runtime notebooks will use, and why (starts nothing; `labkit up` does)."""
    from labkit import discovery

    print(discovery.find_runtime(start=False))
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    """Start the runtime if needed, then JupyterLab on the course."""
    from labkit import discovery

    rt = discovery.find_runtime(start=True)
    print(f"Runtime: {rt}")
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={PROJECT}"]
    cmd += ["--ServerApp.ip=127.0.0.1", f"--ServerApp.port={args.port}"]
    cmd += ["--LabApp.default_url=/lab/tree/notebooks/00-check-your-setup.ipynb"]
    if args.headless:
        cmd += ["--no-browser"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd += ["--allow-root"]  # containers and CI machines often run as root
    print("Starting JupyterLab — stop it with Ctrl+C; stop the runtime with `labkit down`.")
    env = {**os.environ, "LABKIT_BASE_URL": rt.url}
    lab = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
    return _wait_for_lab(lab)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A child-side hook: on Linux, the kernel sends SIGTERM when this launcher dies."""

    def hook() -> None:
        if sys.platform != "linux":
            return
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _wait_for_lab(lab: subprocess.Popen[bytes]) -> int:
    """Wait for JupyterLab; however this launcher is told to end, JupyterLab ends too."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return lab.wait()
            except KeyboardInterrupt:
                continue  # JupyterLab got the same Ctrl+C: let it ask and shut down cleanly
    finally:
        if lab.poll() is None:  # SIGTERM, SIGHUP or an error here: end JupyterLab too
            lab.terminate()
            try:
                lab.wait(timeout=10)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)


def cmd_faults(args: argparse.Namespace) -> int:
    """Run a fault-injecting proxy in front of a runtime until Ctrl+C."""
    from labkit import discovery, faults

    target = args.target or discovery.find_runtime(start=False).url
    faults.serve(target, args.rule, port=args.port)
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    """Make learner and solution notebooks and their tests from master notebooks."""
    from labkit.grader import assign

    return assign.cli(args)


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade a folder of submitted notebooks in isolated kernels."""
    from labkit.grader import cli

    return cli.cli(args)


def cmd_collect(args: argparse.Namespace) -> int:
    """Copy each learner's exercise notebook from their home into SUBMISSIONS/NAME.ipynb."""
    from labkit.grader import cli

    return cli.collect_cli(args)


def cmd_update(args: argparse.Namespace) -> int:
    """Bring the course's new version into your folder, keeping every file you changed."""
    from labkit import update

    return update.cli(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand (the grader's options only if ``command`` may use them)."""
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(func.__doc__ or "").strip())
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up)
    p.add_argument(
        "--port", type=int, help=f"port for the runtime (default {runtime.DEFAULT_PORT})"
    )
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    add("down", cmd_down)
    add("status", cmd_status)
    p = add("which", cmd_which)
    # Kept so that older scripts still run: `which` never starts anything now.
    p.add_argument("--no-start", action="store_true", help=argparse.SUPPRESS)
    p = add("lab", cmd_lab)
    p.add_argument("--headless", action="store_true", help="do not open a browser (servers)")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab's port (default 8888)")
    p = add("faults", cmd_faults)
    p.add_argument("--target", help="the runtime's URL (default: the one labkit finds)")
    p.add_argument("--port", type=int, default=0, help="the proxy's port (default: any free one)")
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        help="FAULT [/PATH] [times=N every=N after=N for=S chance=P], repeatable; "
        'e.g. "503 /api/chat times=2", "reset@3 /v1/*", "latency=0.5"',
    )
    from labkit import update  # standard library only: cheap for every command

    update.add_arguments(add("update", cmd_update))
    grader = add("assign", cmd_assign), add("grade", cmd_grade)
    collect = add("collect", cmd_collect)
    if command in (None, "collect"):
        from labkit.grader import cli as grader_cli

        grader_cli.add_collect_arguments(collect)
    if command in (None, "assign", "grade"):
        # The grader's options need the grader; other commands should not pay for loading it.
        from labkit.grader import assign, cli

        assign.add_arguments(grader[0])
        cli.add_arguments(grader[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``labkit`` command; errors become one clear line and exit code 1."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        code: int = args.func(args)
    except LabkitError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
