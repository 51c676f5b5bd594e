"""How long does each learner-facing labkit module take to import? Goal: under 0.3 s each.

Run: .venv/bin/python bench/imports.py [--rounds 5] [--goal 0.3]

Each module is imported in a fresh Python, round after round (taking turns, so a busy moment
hits them all alike), and the best round is kept: it is the closest to a quiet machine. The
time counts everything the import brings in, labkit's package and numpy included, but not
Python's own start. The unit tests check which modules each import loads
(tests/unit/test_exports.py); this script only reports the time, which depends on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from test_exports import LEARNER_MODULES  # noqa: E402  (the list the tests check)

TIMED = (
    "import sys, time; start, cpu = time.perf_counter(), time.process_time(); import {name}; "
    "print(time.perf_counter() - start, time.process_time() - cpu, len(sys.modules))"
)
Timing = tuple[float, float, int]  # wall seconds, CPU seconds, modules loaded


def import_time(name: str) -> Timing:
    """Seconds (wall, CPU) to import ``name`` in a fresh Python, and the modules loaded then."""
    out = subprocess.run(
        [sys.executable, "-c", TIMED.format(name=name)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    wall, cpu, modules = out.stdout.split()
    return float(wall), float(cpu), int(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="imports per module; best kept")
    parser.add_argument("--goal", type=float, default=0.3, help="seconds per module")
    args = parser.parse_args()
    names = sorted(LEARNER_MODULES)
    best: dict[str, Timing] = {}
    for _ in range(args.rounds):
        for name in names:
            took = import_time(name)
            if name not in best or took[0] < best[name][0]:
                best[name] = took
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"best of {args.rounds} rounds; {os.cpu_count()} CPUs, load average {load:.1f}")
    # On a busy machine the wall time waits for a CPU; the CPU time is the import's own work.
    print(f"{'module':28} {'wall s':>8} {'CPU s':>8} {'modules':>8}")
    for name in names:
        wall, cpu, modules = best[name]
        mark = "" if wall <= args.goal else f"  over the {args.goal:g} s goal"
        print(f"{name:28} {wall:8.3f} {cpu:8.3f} {modules:8d}{mark}")
    over = [n for n in names if best[n][0] > args.goal]
    print(f"{len(names) - len(over)} of {len(names)} modules within {args.goal:g} s")


if __name__ == "__main__":
    main()
