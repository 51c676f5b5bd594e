"""One kernel, one box: what a notebook starts cannot outlive it, outgrow it, or reach others.

The box-* notebooks in tests/data/grading/submissions/attacks/ attack the box around each
kernel (exercise 04): a helper that hides as a zombie and later kills every process of its
user, three 1.5 GB helpers, System V shared memory left behind, a disk filled through
every writable folder, and sleeps that a crash makes the grader repeat. They are graded
with `labkit grade` beside honest learners, one worker, so the honest are graded after the
attackers on the same worker and users, and then:

- the run completes; honest learners keep full marks; no process of a grading user, no
  System V IPC object, no cgroup of the run is left;
- the whole tree's memory and disk stayed under --memory-mb and --disk-mb;
- a kernel graded later sees none of the shared memory an earlier one left;
- --notebook-timeout bounds a notebook that sleeps and crashes its way through re-runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from needs import needs_root

from labkit import discovery
from labkit.cli import main
from labkit.grader import sandbox
from labkit.grader.network import _listen_inside
from labkit.grader.users import USER_PREFIX

PROJECT = Path(__file__).resolve().parents[2]
ATTACKS = PROJECT / "tests" / "data" / "grading" / "submissions" / "attacks"
SHM_KEY = 0x4C41424B  # the keys box-shm uses: this one and the next three
MEMORY_MB, DISK_MB = 2048, 64


def _grade(subs: Path, *options: str) -> dict[str, Any]:
    """Run `labkit grade` on exercise 04; its exit code, rows, output folder and printout."""
    out = subs.with_name(subs.name + "-grades")
    args = ["grade", str(subs), "--exercise", "04", "--root", str(PROJECT), "--quiet"]
    args += ["--workers", "1", *options]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(args)
    rows = {r["learner"]: r for r in csv.DictReader((out / "gradebook.csv").open())}
    return {"code": code, "rows": rows, "out": out, "printed": printed.getvalue()}


def _printed(out: Path, learner: str, tag: str) -> list[str]:
    """The lines an executed notebook printed that start with ``tag``."""
    executed = nbformat.read(str(out / "executed" / f"{learner}.ipynb"), as_version=4)
    lines = [
        line
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        for line in str(output.get("text", "")).splitlines()
    ]
    return [line for line in lines if line.startswith(tag)]


def _number(line: str, field: str) -> int:
    return int(line.split(f"{field}=", 1)[1].split()[0])


def _run_users(out: Path) -> dict[str, int]:
    """The grading users of the run that wrote ``out``, and the test runners of its slots.

    Only these: other grading runs on the machine have users (and processes) of their own.
    """
    state = json.loads((out / "state.json").read_text())
    uids = {u for r in state["results"].values() for u in r.get("uids", [])}
    names = {pwd.getpwuid(u).pw_name for u in uids}
    slots = {int(n.removeprefix(USER_PREFIX)) // 2 for n in names}
    names |= {f"{USER_PREFIX}tester-{slot}" for slot in slots}
    return {n: pwd.getpwnam(n).pw_uid for n in names if _exists(n)}


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _processes_of(uids: set[int]) -> list[str]:
    """Every process (zombies too) whose real or effective user is in ``uids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if {int(u) for u in fields["Uid"].split()[:2]} & uids:
                found.append(f"{entry.name} {fields['Name'].strip()} {fields['State'].strip()}")
    return found


def _ipc_objects(uids: set[int]) -> list[str]:
    """System V shared memory, semaphores and queues of ``uids`` or with box-shm's keys."""
    found = []
    for kind in ("shm", "sem", "msg"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split(), strict=False))
            ours = int(row["uid"]) in uids or int(row["cuid"]) in uids
            if ours or SHM_KEY <= int(row["key"]) & 0xFFFFFFFF < SHM_KEY + 4:
                found.append(f"{kind} {line.strip()}")
    return found


def _cgroups_of(users: set[str]) -> list[str]:
    found = sandbox.cgroups()
    return [
        entry.path
        for parent in found.parents
        for entry in os.scandir(parent)
        if entry.is_dir() and entry.name.split(".")[0] in users
    ]


@pytest.fixture(scope="module")
def graded(
    tmp_path_factory: pytest.TempPathFactory, rt: discovery.Runtime
) -> Iterator[dict[str, Any]]:
    """Grade the box attackers, then honest learners and an untouched notebook, in one run."""
    needs_root("the grading box")
    subs = tmp_path_factory.mktemp("box") / "class"
    subs.mkdir()
    for name in ("box-disk", "box-memory", "box-shm", "box-zombie"):
        shutil.copy(ATTACKS / f"{name}.ipynb", subs)
    # A second copy, graded right after: it looks for the segments the first one left.
    shutil.copy(ATTACKS / "box-shm.ipynb", subs / "box-shm-later.ipynb")
    for name in ("honest-ada", "honest-bo"):  # after the zombie: both of the worker's users
        shutil.copy(PROJECT / "solutions" / "04-production.ipynb", subs / f"{name}.ipynb")
    shutil.copy(PROJECT / "exercises" / "04-production.ipynb", subs / "untouched.ipynb")
    result = _grade(
        subs, "--memory-mb", str(MEMORY_MB), "--disk-mb", str(DISK_MB), "--runtime", rt.url
    )
    # Read right away: a helper that survived would still be running now.
    users = _run_users(result["out"])
    result["users"] = set(users)
    result["processes"] = _processes_of(set(users.values()))
    result["ipc"] = _ipc_objects(set(users.values()))
    result["cgroups"] = _cgroups_of(result["users"])
    yield result


def test_the_run_completes_with_a_row_for_everyone(graded: dict[str, Any]) -> None:
    assert graded["code"] == 0, graded["printed"]
    expected = {"box-disk", "box-memory", "box-shm", "box-shm-later", "box-zombie"}
    assert set(graded["rows"]) == expected | {"honest-ada", "honest-bo", "untouched"}
    assert graded["users"]  # the run says which grading users it used


def test_honest_learners_after_the_attackers_keep_full_marks(graded: dict[str, Any]) -> None:
    rows = graded["rows"]
    for name in ("honest-ada", "honest-bo"):
        assert rows[name]["total"] == rows[name]["possible"], rows[name]
    # The zombie really was started, and did no good to its own learner.
    assert _printed(graded["out"], "box-zombie", "ZOMBIE helper started")
    floor = float(rows["untouched"]["total"])
    for name in ("box-disk", "box-memory", "box-shm", "box-shm-later", "box-zombie"):
        assert float(rows[name]["total"]) <= floor, rows[name]


def test_no_process_ipc_object_or_cgroup_is_left(graded: dict[str, Any]) -> None:
    assert graded["processes"] == []
    assert graded["ipc"] == []
    assert graded["cgroups"] == []


def test_the_whole_tree_stays_under_the_memory_cap(graded: dict[str, Any]) -> None:
    # Each 1.5 GB helper is under the cap alone; two at once are over it.
    [line] = _printed(graded["out"], "box-memory", "MEMORY")
    assert _number(line, "held") <= 1, line


def test_the_scratch_disk_holds_no_more_than_disk_mb(graded: dict[str, Any]) -> None:
    [line] = _printed(graded["out"], "box-disk", "DISK")
    wrote = _number(line, "wrote")
    assert 16 <= wrote <= DISK_MB, line  # scratch and every temp folder, together


def test_shared_memory_stays_in_its_box(graded: dict[str, Any]) -> None:
    for learner in ("box-shm", "box-shm-later"):
        assert _printed(graded["out"], learner, "SHM seen=0") != [], learner  # nothing left
        assert _printed(graded["out"], learner, "SHM made=4") != [], learner  # made inside


def test_the_notebook_timeout_bounds_sleeps_and_reruns(
    tmp_path: Path, rt: discovery.Runtime
) -> None:
    """8 cells that sleep just under --timeout and 3 that end the kernel: 113 s unbounded."""
    needs_root("the grading box")
    subs = tmp_path / "sleepy"
    subs.mkdir()
    shutil.copy(ATTACKS / "box-sleepy.ipynb", subs)
    result = _grade(subs, "--timeout", "5", "--notebook-timeout", "20", "--runtime", rt.url)
    assert result["code"] == 0, result["printed"]
    row = result["rows"]["box-sleepy"]
    assert "gave-up" in row["status"], row
    assert "--notebook-timeout" in row["notes"], row
    assert _processes_of(set(_run_users(result["out"]).values())) == []


def test_a_process_that_joins_a_box_shares_its_files_and_network_not_its_processes() -> None:
    """The hook the test runner uses: same mounts and loopback as a kernel, not its PIDs."""
    needs_root("the grading box")
    user = pwd.getpwnam("nobody")
    folder = Path(tempfile.mkdtemp(prefix="labkit-join-"))
    os.chmod(folder, 0o777)
    box = {
        "uid": user.pw_uid,
        "gid": user.pw_gid,
        "cwd": str(folder),
        # As for kernels: Python may live where others cannot enter (such as /root).
        "covers": sandbox.reachability_covers(sandbox.needed_paths()),
        "chown": [],
        "limits": {},
        "network": "runtime",
    }
    launcher = [sys.executable, "-I", "-S", "-c", sandbox.LAUNCHER]
    kernel_side = (
        "import socket, sys, time\n"
        "s = socket.socket()\n"
        "s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n"
    )
    kernel = subprocess.Popen(
        [*launcher, json.dumps(box), sys.executable, "-c", kernel_side],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kernel.stdout is not None
        port = int(kernel.stdout.readline())
        # Loopback comes up as the grader brings it up, from a thread it throws away.
        made: list[socket.socket] = []
        namespace = f"/proc/{kernel.pid}/ns/net"
        thread = threading.Thread(target=lambda: made.append(_listen_inside(namespace, 0)))
        thread.start()
        thread.join()
        made[0].close()
        probe = (
            "import os, socket, sys\n"
            "socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()\n"
            "print(os.getuid(), flush=True)\n"
            "sys.stdin.readline()\n"
        )
        joined = {**box, "join": kernel.pid, "limits": {"CORE": 0}}
        tester = subprocess.Popen(
            [*launcher, json.dumps(joined), sys.executable, "-c", probe, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert tester.stdout is not None and tester.stdin is not None
        assert tester.stdout.readline().split() == [str(user.pw_uid)]  # reached the port

        def space(pid: int, kind: str) -> str:
            return os.readlink(f"/proc/{pid}/ns/{kind}")

        for kind in ("mnt", "net"):
            assert space(tester.pid, kind) == space(kernel.pid, kind)
        assert space(tester.pid, "pid") == space(os.getpid(), "pid")  # not the box's PIDs
        tester.stdin.write("\n")
        tester.stdin.close()
        assert tester.wait(timeout=30) == 0
        # Out here the port is not open: it is on the box's own loopback.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        kernel.kill()
        kernel.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_command_says_what_this_machine_cannot_enforce(graded: dict[str, Any]) -> None:
    gaps = [line for line in graded["printed"].splitlines() if "Not enforced here" in line]
    if sandbox.cgroups().version:
        assert gaps == []
    else:  # said once, at the start
        assert len(gaps) == 1 and graded["printed"].startswith(gaps[0]), graded["printed"]


def test_a_machine_without_cgroups_is_named_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "cgroups", lambda: sandbox.Cgroups("", why="none mounted"))
    [gap] = sandbox.box_gaps()
    assert "none mounted" in gap and "RLIMIT_AS" in gap
    assert "Without root" in sandbox.ISOLATION and "without a usable cgroup" in sandbox.ISOLATION
    [unboxed] = sandbox.box_gaps(sandbox=False)
    assert "--no-sandbox" in unboxed
