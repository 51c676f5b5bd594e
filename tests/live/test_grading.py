"""Grading: learners' check() and the instructor's sandboxed, parallel grader.

One class of toy submissions (tests/data/grading/submissions/toy) is graded once for the whole
module; each test then checks one promise against that run: partial credit, a status for
every kind of bad notebook, feedback that never shows hidden tests, isolation, nothing left
running, submissions untouched, and re-runs that grade only what changed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from labkit import discovery
from labkit.cli import main
from labkit.grader import assign, grading
from labkit.grader.report import file_stem

DATA = Path(__file__).resolve().parents[1] / "data" / "grading"
TOY = DATA / "masters" / "toy.ipynb"
SUBMISSIONS = DATA / "submissions" / "toy"
PROJECT = Path(__file__).resolve().parents[2]
TIMEOUT = "3"  # seconds per cell: the hanging notebooks cost this much each


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(path: Path, targets: dict[str, Any]) -> None:
    """Put the paths a probing notebook tries into its cells."""
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("{{TARGETS}}", repr(targets))
    nbformat.write(nb, str(path))


def _host_address() -> str:
    """This machine's first address that is not loopback (loopback if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


@pytest.fixture(scope="module")
def graded(
    tmp_path_factory: pytest.TempPathFactory, rt: discovery.Runtime
) -> Iterator[dict[str, Any]]:
    """Grade the toy class once through `labkit grade`; return where everything is."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the grading sandbox needs root on Linux")
    base = tmp_path_factory.mktemp("grading")
    root = base / "course"
    assign.assign([TOY], root, say=False)
    # The course is a git checkout whose history holds the key, as a real course's does.
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "course"], check=True)
    subs = base / "class-7f3a"
    shutil.copytree(SUBMISSIONS, subs)
    out = base / "class-7f3a-grades"
    key = root / "grading/hidden/toy.json"
    targets = {
        "read": {
            "key": str(key),
            "other": str(subs / "perfect.ipynb"),
            "gradebook": str(out / "gradebook.csv"),
            "solutions": str(root / "solutions/toy.ipynb"),
            "shadow": "/etc/shadow",
            "root_home": "/root/.bashrc",
        },
        "list": {"class": str(subs), "grades": str(out)},
        "write": {
            "tmp": "/tmp/labkit-snoop-was-here",
            "project": str(Path(__file__).parent / "labkit-snoop-was-here"),
            "grades": str(out / "snoop.txt"),
        },
    }
    _fill(subs / "snoop.ipynb", targets)
    looked_at = {
        "project": str(PROJECT),
        "checkouts": str(PROJECT.parent),
        "course_dir": str(root),
        "home": "/home",
        "scratch_base": str(grading.SCRATCH_BASE),
    }
    git_targets = {
        "git_course": [str(root), "HEAD:grading/hidden/toy.json"],
        "git_project": [str(PROJECT), "HEAD:grading/hidden/01-api-script.json"],
    }
    _fill(subs / "gitkey.ipynb", {"git": git_targets, "ls": looked_at})
    _fill(subs / "neighbours.ipynb", {"class_name": subs.name, "ls": looked_at})
    # Another service on this machine, on every address: kernels must not reach it.
    service = socket.create_server(("0.0.0.0", 0))
    port = service.getsockname()[1]
    tcp = {
        "other_local": ["127.0.0.1", port],
        "host_address": [_host_address(), port],
        "public": ["1.1.1.1", 53],
    }
    _fill(subs / "netprobe.ipynb", {"tcp": tcp})
    before = {str(p.relative_to(subs)): _sha(p) for p in subs.rglob("*") if p.is_file()}
    args = ["grade", str(subs), "--exercise", "toy", "--root", str(root), "--quiet"]
    args += ["--timeout", TIMEOUT, "--workers", "2", "--runtime", rt.url]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    ended = time.time()
    service.close()
    state = json.loads((out / "state.json").read_text())
    rows = list(csv.DictReader((out / "gradebook.csv").open()))
    yield {
        "ended": ended,
        "root": root,
        "subs": subs,
        "out": out,
        "before": before,
        "targets": targets,
        "state": state,
        "rows": {r["learner"]: r for r in rows},
        "args": args,
        "printed": printed.getvalue(),
    }


def _probe(graded: dict[str, Any], learner: str, tag: str) -> dict[str, Any]:
    """What a probing notebook printed (JSON after its tag)."""
    executed = nbformat.read(str(graded["out"] / f"executed/{learner}.ipynb"), as_version=4)
    printed = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    line = next(x for x in printed.splitlines() if x.startswith(tag + " "))
    seen: dict[str, Any] = json.loads(line.removeprefix(tag + " "))
    return seen


EXPECTED = {  # learner: (q1, q2, q3, total, status)
    "perfect": ("3", "2", "2", "7", "ok"),
    "partial": ("3", "1", "0", "4", "ok"),
    "untouched": ("0", "0", "0", "0", "untouched"),
    "crash": ("3", "2", "0", "5", "cell-errors"),
    "loop": ("3", "2", "0", "5", "timeout"),
    "stubborn": ("3", "2", "0", "5", "timeout"),
    "flood": ("3", "2", "0", "5", "output-limit, timeout"),
    "killer": ("2", "2", "0", "4", "kernel-died"),
    "invalid": ("0", "0", "0", "0", "invalid-notebook"),
    "snoop": ("3", "0", "0", "3", "ok"),
    # hostile ones
    "gitkey": ("0", "0", "0", "0", "ok"),
    "stackwalk": ("2", "1", "0", "3", "ok"),
    "neighbours": ("0", "0", "0", "0", "ok"),
    "netprobe": ("0", "0", "2", "2", "ok"),
    # entries of the folder: graded under a name, or a row that says why not
    "Carol": ("3", "2", "2", "7", "ok"),
    ".hidden.ipynb": ("0", "0", "0", "0", "not-graded, hidden-name"),
    "twobooks": ("0", "0", "0", "0", "not-graded, several-notebooks"),
    "dup": ("0", "0", "0", "0", "not-graded, duplicate-name"),
    "dup.ipynb": ("0", "0", "0", "0", "not-graded, duplicate-name"),
    "notes.txt": ("0", "0", "0", "0", "not-graded, not-a-notebook"),
}
GRADED = 15  # entries that were notebooks the grader could run


def test_gradebook_gives_partial_credit_and_a_status(graded: dict[str, Any]) -> None:
    rows = graded["rows"]
    assert sorted(rows) == sorted(EXPECTED)
    for learner, (q1, q2, q3, total, status) in EXPECTED.items():
        row = rows[learner]
        got = (row["q1"], row["q2"], row["q3"], row["total"], row["status"])
        assert got == (q1, q2, q3, total, status), (learner, row)
        assert row["possible"] == "7"


def test_notes_say_what_happened(graded: dict[str, Any]) -> None:
    rows = graded["rows"]
    assert "ZeroDivisionError" in rows["crash"]["notes"]
    assert "MemoryError" in rows["crash"]["notes"]  # the memory limit stopped it
    assert f"longer than {TIMEOUT} s" in rows["loop"]["notes"]
    assert f"longer than {TIMEOUT} s" in rows["stubborn"]["notes"]
    assert "kB" in rows["flood"]["notes"]
    assert "made the kernel stop" in rows["killer"]["notes"]
    assert "not a valid notebook" in rows["invalid"]["notes"]


def test_feedback_explains_without_showing_hidden_tests(graded: dict[str, Any]) -> None:
    feedback = graded["out"] / "feedback"
    assert sorted(p.stem for p in feedback.glob("*.md")) == sorted(map(file_stem, EXPECTED))
    key = assign.load_key(graded["root"] / "grading/hidden/toy.json")
    hidden_code = [
        line.strip()
        for q in key.questions
        for t in q.tests
        if t.hidden
        for line in t.code.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for path in feedback.glob("*.md"):
        text = path.read_text()
        for line in hidden_code:
            assert line not in text, (path.name, line)
        assert "Traceback" not in text
    partial = (feedback / "partial.md").read_text()
    assert "**Score: 4 / 7**" in partial
    assert "❌ q2.2 (hidden test): shout uses capitals and an exclamation mark" in partial
    assert "HELLO!" not in partial  # a hidden test's expected value stays hidden
    assert "not written yet" in partial  # q3 was left as it came
    killer = (feedback / "killer.md").read_text()
    assert "The kernel stopped during this test." in killer  # q1.3 killed the kernel
    assert "(q4) are not in this score" in killer


def test_pass_rates_table_and_plot(graded: dict[str, Any]) -> None:
    rows = list(csv.DictReader((graded["out"] / "pass_rates.csv").open()))
    rates = {r["test"]: (int(r["passed"]), int(r["graded"])) for r in rows}
    assert rates == {
        "q1.1": (10, GRADED),
        "q1.2": (10, GRADED),
        "q1.3": (8, GRADED),
        "q2.1": (9, GRADED),
        "q2.2": (7, GRADED),
        "q3.1": (3, GRADED),
        "q3.2": (3, GRADED),
    }
    png = (graded["out"] / "pass_rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_submissions_are_unchanged(graded: dict[str, Any]) -> None:
    subs = graded["subs"]
    after = {str(p.relative_to(subs)): _sha(p) for p in subs.rglob("*") if p.is_file()}
    assert after == graded["before"]


def _started_before(uids: set[int], moment: float) -> list[int]:
    """Live processes of ``uids`` that started before ``moment`` (a later run may reuse them)."""
    stat = Path("/proc/stat").read_text().splitlines()
    boot = float(next(line.split()[1] for line in stat if line.startswith("btime")))
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = entry.stat().st_uid
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if uid in uids and fields[0] != "Z" and boot + int(fields[19]) / ticks < moment:
            found.append(int(entry.name))
    return found


def test_no_kernel_or_process_is_left(graded: dict[str, Any]) -> None:
    uids = {u for r in graded["state"]["results"].values() for u in r.get("uids", [])}
    assert uids and 0 not in uids
    # Only look: another grading run (another test module) may use the same users now.
    assert _started_before(uids, graded["ended"]) == []
    ours = [
        run
        for run in grading.SCRATCH_BASE.glob("run-*")
        if (run / "owner.pid").exists() and (run / "owner.pid").read_text() == str(os.getpid())
    ]
    assert ours == []  # the scratch folders of this process's grading runs are gone


def test_learner_code_is_isolated(graded: dict[str, Any]) -> None:
    seen = _probe(graded, "snoop", "SNOOP")
    assert seen["uid"] != 0
    for name in ("key", "other", "gradebook", "solutions", "shadow", "root_home"):
        assert seen[name].startswith("DENIED"), (name, seen[name])
    for name in ("class", "grades"):
        assert seen[name].startswith("DENIED"), (name, seen[name])
    assert seen["project"].startswith("DENIED")
    assert seen["grades"].startswith("DENIED")
    # /tmp inside the sandbox is private and thrown away: the write never reached the host.
    assert not Path(graded["targets"]["write"]["tmp"]).exists()
    assert not Path(graded["targets"]["write"]["project"]).exists()
    assert not (graded["out"] / "snoop.txt").exists()
    assert (graded["out"].stat().st_mode & 0o777) == 0o700


def test_every_entry_gets_a_row_and_the_skipped_are_named(graded: dict[str, Any]) -> None:
    entries = [p for p in graded["subs"].iterdir()]
    assert len(graded["rows"]) == len(entries)  # nothing dropped in silence
    printed = graded["printed"]
    for entry in (".hidden.ipynb", "twobooks", "dup.ipynb", "dup/", "notes.txt"):
        assert f"Not graded: {entry}:" in printed, entry
    assert "Carol" not in printed  # .IPYNB is a notebook: graded, not skipped
    assert "two notebooks" not in printed and "2 notebooks (draft.ipynb, final.ipynb)" in printed
    assert "5 not graded" in printed
    notes = graded["rows"]["dup"]["notes"]
    assert "dup/ and dup.ipynb both name learner 'dup'" in notes


def test_the_key_is_not_readable_through_git(graded: dict[str, Any]) -> None:
    # The course's history does hold the key, where the instructor runs git.
    shown = subprocess.run(
        ["git", "-C", str(graded["root"]), "show", "HEAD:grading/hidden/toy.json"],
        capture_output=True,
        check=True,
    )
    assert b"square(1.5)" in shown.stdout
    seen = _probe(graded, "gitkey", "GITKEY")
    assert seen["git_course"].startswith("DENIED"), seen["git_course"]
    assert seen["git_project"].startswith("DENIED"), seen["git_project"]
    # Of the checkout that holds labkit, the kernel sees labkit and its public data only.
    beside = {PROJECT.name}
    if PROJECT.parent == grading.SCRATCH_BASE.parent:  # a checkout right in /tmp
        beside.add(grading.SCRATCH_BASE.name)
    assert set(seen["checkouts"]) == beside
    kept = _probe(graded, "neighbours", "NEIGHBOURS")["project"]
    assert set(kept) <= {"labkit", "data", ".venv"} and "labkit" in kept, kept
    assert seen["course_dir"].startswith("DENIED") and seen["home"] in (
        [],
        "DENIED FileNotFoundError",
    )


def test_hidden_test_code_never_reaches_feedback(graded: dict[str, Any]) -> None:
    # The notebook walks the stack from inside its functions for test code and throws what
    # it found back in its errors. Tests run in a process of their own: it finds nothing.
    text = (graded["out"] / "feedback" / "stackwalk.md").read_text()
    assert "q1.3 (hidden test)" in text and "The hidden test stopped with an error." in text
    assert "A hidden check failed." in text  # q2.2: its AssertionError text is not shown
    for path in [*(graded["out"] / "feedback").glob("*.md"), graded["out"] / "gradebook.csv"]:
        shown = path.read_text()
        assert "square(1.5)" not in shown and "shout(greeting)" not in shown, path.name
        assert "square_works_for_floats" not in shown, path.name


def test_a_kernel_sees_only_its_own_work(graded: dict[str, Any]) -> None:
    seen = _probe(graded, "neighbours", "NEIGHBOURS")
    assert seen["owners"] == [seen["uid"]]  # no process of anyone else, the grader included
    assert not seen["grader_seen"] and not seen["pytest_seen"]
    assert seen["scratch_siblings"] == [seen["own_scratch"]]  # no other learner's scratch
    allowed = {grading.SCRATCH_BASE.name}
    if PROJECT.is_relative_to("/tmp"):  # a checkout under /tmp: the way to labkit stays
        allowed.add(PROJECT.relative_to("/tmp").parts[0])
    assert set(seen["tmp"]) == allowed
    assert len(seen["scratch_base"]) == 1  # its own run's folder only
    assert "submission.ipynb" in seen["scratch_files"]
    assert seen["course_dir"].startswith("DENIED")


def test_a_kernel_reaches_the_runtime_and_nothing_else(graded: dict[str, Any]) -> None:
    seen = _probe(graded, "netprobe", "NET")
    assert seen["runtime"] == 200
    for name in ("other_local", "host_address", "public"):
        assert seen[name].startswith("BLOCKED"), (name, seen[name])
    assert graded["rows"]["netprobe"]["q3"] == "2"  # its model calls were graded live


def test_check_shows_rich_and_plain_feedback_in_a_kernel(graded: dict[str, Any]) -> None:
    untouched = nbformat.read(str(graded["out"] / "executed/untouched.ipynb"), as_version=4)
    perfect = nbformat.read(str(graded["out"] / "executed/perfect.ipynb"), as_version=4)

    def shown(nb: Any, source: str) -> dict[str, str]:
        cell = next(c for c in nb.cells if c.source == source)
        result = next(o for o in cell.outputs if o.output_type == "execute_result")
        return dict(result.data)

    q1 = shown(untouched, 'check("q1")')
    assert q1["text/plain"].startswith("q1: not implemented yet")
    assert "🚧" in q1["text/html"] and "Traceback" not in q1["text/plain"]
    assert "1 more hidden test" in q1["text/plain"]
    q2 = shown(perfect, 'check("q2")')
    assert q2["text/plain"].startswith("q2: 1 of 1 tests passed (1/1 points)")
    assert "✅" in q2["text/html"]


def test_regrading_only_what_changed(graded: dict[str, Any], rt: discovery.Runtime) -> None:
    subs, out, root = graded["subs"], graded["out"], graded["root"]
    exercise = assign.load_key(root / "grading/hidden/toy.json")
    options = grading.GradeOptions(timeout=float(TIMEOUT), progress=False)
    common: dict[str, Any] = {"runtime_url": rt.url, "root": root, "say": lambda _: None}
    again = grading.grade(subs, exercise, out, options, **common)
    assert again.graded == []  # nothing changed: every result is reused
    assert again.result("perfect")["total"] == 7
    # --master finds the same exercise, so the same results are reused too.
    assert main([*graded["args"][:2], "--master", str(TOY), *graded["args"][4:]]) == 0
    nb = nbformat.read(str(subs / "untouched.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("def square"))
    cell.source = "def square(x):\n    return x * x"
    nbformat.write(nb, str(subs / "untouched.ipynb"))
    one_worker = dataclasses.replace(options, workers=1)
    changed = grading.grade(subs, exercise, out, one_worker, **common)
    assert changed.graded == ["untouched"]
    assert changed.result("untouched")["total"] == 3
    assert changed.result("loop")["total"] == 5  # reused from the first run


def test_grading_without_sandbox(tmp_path: Path, rt: discovery.Runtime) -> None:
    """--no-sandbox runs the same grading as the current user (trusted notebooks only)."""
    root = tmp_path / "course"
    assign.assign([TOY], root, say=False)
    subs = tmp_path / "class"
    subs.mkdir()
    for name in ("perfect", "invalid"):
        shutil.copy(SUBMISSIONS / f"{name}.ipynb", subs)
    report = grading.grade(
        subs,
        assign.load_key(root / "grading/hidden/toy.json"),
        tmp_path / "out",
        grading.GradeOptions(timeout=float(TIMEOUT), sandbox=False, progress=False),
        runtime_url=rt.url,
        root=root,
        say=lambda _: None,
    )
    assert [(r["learner"], r["total"]) for r in report.results] == [("invalid", 0), ("perfect", 7)]
