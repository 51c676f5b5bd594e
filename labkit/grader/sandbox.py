"""The sandbox: what a grading kernel may see, reach and use.

A kernel starts as root in a fork, enters a box (private PID, IPC, mount and network
namespaces, a cgroup capping the whole tree), covers what it must not see with empty
folders, sets its limits and only then becomes its grading user.

Why not bubblewrap (Debian's ``bwrap``), which does namespaces, covers and a pid 1 well:
it can only start a box by executing a program. Kernels here are forks of a process that
has imported IPython, ipykernel, numpy and labkit once (about 0.6-0.7 s of imports per
fresh Python on this kind of machine, more than the whole per-notebook budget of 0.5 s),
and a fork cannot be handed to bwrap. It would not cap memory or processes either (no
cgroups), so that code would stay, and every grading machine would need one more package.
The namespace code below is a few system calls through ctypes; the box's pid 1 and the
cgroup are what was missing, and they are added here in the same way.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings
from labkit.grader.users import kill_user_processes

__all__ = [
    "CGROUP_PARENT",
    "ISOLATION",
    "LAUNCHER",
    "MAX_TASKS",
    "PROJECT",
    "WORLD_WRITABLE",
    "Cgroups",
    "box_covers",
    "box_gaps",
    "box_limits",
    "cgroups",
    "enter_sandbox",
    "kernel_env",
    "needed_paths",
    "preflight",
    "private_paths",
    "reachability_covers",
    "temp_folders",
]


ISOLATION = """\
Enforced: each kernel and every process it starts live in a box of their own: private
PID, IPC, mount and network namespaces, run as an unprivileged grading user. The box sees
the operating system's folders, Python, the labkit package, the course's public data/
folder and its own scratch folder (its notebook, the exercise's data files, its public
tests) — nothing else of the course checkout (no .git, grading keys, masters, solutions),
no other submission or scratch folder, no folder outside the system ones (/home, /root,
/opt, /srv, /mnt and the like are empty), and no process outside the box (a tiny init is
its pid 1, the kernel its child). Its network is its own loopback only: the runtime's
port on 127.0.0.1 is forwarded to the runtime by the grader, and nothing else is reachable
(no public address, no other local service); pass --network host to give kernels the
machine's network instead. It can write only to its scratch folder and private temp
folders (/tmp, /var/tmp, /dev/shm, /run/lock), all on one tmpfs of --disk-mb (default
512) that is thrown away; System V shared memory, semaphores and message queues are the
box's own and vanish with it. The whole box shares one memory cap (--memory-mb, default
4096, tmpfs files and shared memory included) and one cap of 256 processes and threads
(a cgroup, v2 or v1); each process also has file-size and CPU-time limits. Each notebook
has a wall-time budget, re-runs included (--notebook-timeout). When a notebook is done,
the whole box is killed — pid 1 going takes every process with it, zombies and processes
that left the kernel's process group included — and its cgroup and tmpfs are removed.
Tests, public and hidden, run outside the box, in a tester process of their own (another
user, the box's files and network, not its processes): the test code never enters the
kernel, learner functions are called across a boundary where only plain data crosses, and
nothing of the learner's is evaluated where the verdict is made; feedback for a hidden
test carries only a short, fixed message (why it failed goes to instructor/). Through the
run's reply cache, a kernel's requests are rebuilt without its headers, have at most 4 in
flight, take turns with other kernels' requests, and never change another kernel's reply.
Not enforced: the operating system's world-readable files stay readable; CPU time is
limited per process but not shared out (a busy box can use every core until its limits
stop it); a notebook can keep the shared model runtime busy within those turns (each cell
and test still has its limit), and with --no-cache nothing shares the runtime out.
Where the machine cannot: without a usable cgroup (v2, or v1 with memory and pids),
--memory-mb caps each process on its own (RLIMIT_AS) and processes are capped per grading
user (RLIMIT_NPROC), not per box; `labkit grade` says so when it starts. Without root (and
with --no-sandbox) nothing above is enforced: kernels run as the user who grades.
"""

# Top-level folders of the operating system a kernel keeps; every other one is emptied.
SYSTEM = frozenset(
    {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "nix", "proc", "run"}
    | {"sbin", "snap", "sys", "tmp", "usr", "var"}
)
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000


WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


PROJECT = Path(__file__).resolve().parents[2]


def enter_sandbox(spec: dict[str, Any]) -> None:
    """Put this process in a box of its own, then drop from root to the grading user.

    It joins the box's cgroups (``spec["cgroups"]``: the whole tree's memory and process
    caps), unshares the mount, IPC, PID (and, for ``network="runtime"``, network)
    namespaces, and forks: this process stays outside as the box's keeper, writes the
    box's pid to ``spec["report_fd"]`` if given, waits, and exits with the box's status.
    Inside, a tiny init (pid 1) mounts a /proc of the box, empty tmpfs folders over what
    learner code must not see (keeping chosen sub-folders, re-attached from file
    descriptors opened before the cover went on; a cover with a fourth item binds that
    folder instead, so temp folders count against the scratch disk), sets resource
    limits, gives up root and forks the process that returns from here. When that one
    ends, init ends, and with pid 1 every process of the box dies, zombies included. It
    uses the standard library only, so a bare ``python -I -S`` can run it too. Raises
    OSError when something cannot be set up.

    With ``spec["join"]`` set to the pid of a process in a kernel's box, it enters that
    box's mount and network namespaces instead (same files, same 127.0.0.1, not the same
    processes), then sets limits and drops to ``spec``'s user the same way.
    """
    import contextlib
    import ctypes
    import os
    import resource
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    ms_nosuid, ms_nodev, ms_bind, ms_rec, ms_private = 2, 4, 4096, 16384, 1 << 18
    new_ns, new_ipc, new_pid, new_net = 0x00020000, 0x08000000, 0x20000000, 0x40000000

    def call(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
        rc = libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        call(rc, f"mount {target}")

    def set_signals(handler: Any) -> None:
        for number in range(1, signal.NSIG):
            if number not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                with contextlib.suppress(OSError, ValueError):  # some cannot be set
                    signal.signal(number, handler)

    def exit_code(status: int) -> int:
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code

    if spec.get("join"):
        # Step into an existing box's files and network (both opened before either is
        # entered: once in its mounts, /proc is the box's own). Its covers are there already.
        box = spec["join"]
        handles = [os.open(f"/proc/{box}/ns/{name}", os.O_RDONLY) for name in ("mnt", "net")]
        try:
            for fd, kind in zip(handles, (new_ns, new_net), strict=True):
                call(libc.setns(fd, kind), f"setns into process {box}'s namespaces")
        finally:
            for fd in handles:
                os.close(fd)
        covers = []
    else:
        for group in spec.get("cgroups", []):  # before the fork: every process inherits it
            with open(os.path.join(group, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        flags = new_ns | new_ipc | new_pid | (new_net if spec.get("network") == "runtime" else 0)
        call(libc.unshare(flags), "unshare (needs root with CAP_SYS_ADMIN)")
        report = spec.get("report_fd")
        init = os.fork()
        if init:  # the keeper, outside the box's processes
            if report is not None:
                os.write(report, f"{init}\n".encode())
                os.close(report)
            while True:
                try:
                    _, status = os.waitpid(init, 0)
                    os._exit(exit_code(status))
                except InterruptedError:
                    continue
        # pid 1 of the box, which ends (and takes every process in it along) with its keeper.
        # A signal it handles could stop it; ignored ones do not even reach it.
        set_signals(signal.SIG_IGN)
        if report is not None:
            os.close(report)
        os.setsid()  # a process group of its own: an interrupt reaches the whole box
        mount(None, "/", None, ms_rec | ms_private, "")  # our mounts stay in this namespace
        # A /proc of the box's processes only (hidepid: of the grading user's only).
        mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | 8, "hidepid=2")  # 8: MS_NOEXEC
        covers = spec["covers"]
    # Folders to bind in are opened first: an earlier cover may hide where they are.
    sources = [os.open(c[3], os.O_RDONLY) if len(c) > 3 else -1 for c in covers]
    for (target, keeps, mode, *_), source in zip(covers, sources, strict=True):
        if not os.path.lexists(target):  # under an earlier cover: hidden already
            continue
        if os.path.isfile(target):  # a single file: show /dev/null in its place
            mount("/dev/null", target, None, ms_bind, "")
            continue
        kept = [(k, os.path.isdir(k), os.open(k, os.O_RDONLY)) for k in keeps]
        if source >= 0:
            mount(f"/proc/self/fd/{source}", target, None, ms_bind, "")
            os.close(source)
        else:
            mount("tmpfs", target, "tmpfs", ms_nosuid | ms_nodev, f"mode={mode},size=64m")
        for keep, is_dir, fd in kept:
            if is_dir:
                os.makedirs(keep, exist_ok=True)
            else:  # a single file (such as Python itself): an empty file to mount it on
                os.makedirs(os.path.dirname(keep), exist_ok=True)
                open(keep, "a").close()
            mount(f"/proc/self/fd/{fd}", keep, None, ms_bind | ms_rec, "")
            os.close(fd)
    uid, gid = spec["uid"], spec["gid"]
    for path in spec["chown"]:
        os.chown(path, uid, gid)
    for name, value in spec["limits"].items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if not spec.get("join"):
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL; set after setuid, which clears it
        worker = os.fork()
        if worker:  # init: reap every orphan, and end when the box's process ends
            while True:
                try:
                    pid, status = os.wait()
                except InterruptedError:
                    continue
                except ChildProcessError:
                    os._exit(0)
                if pid == worker:
                    os._exit(exit_code(status))
        set_signals(signal.SIG_DFL)
    os.chdir(spec["cwd"])


# A stand-alone launcher: ``python -I -S -c LAUNCHER SPEC COMMAND...`` runs COMMAND sandboxed.
LAUNCHER = (
    "from __future__ import annotations\nfrom typing import Any\n"
    + inspect.getsource(enter_sandbox)
    + """
import json, os, sys
try:
    enter_sandbox(json.loads(sys.argv[1]))
except OSError as exc:
    sys.stderr.write(f"labkit sandbox: {exc}\\n")
    os._exit(70)
os.execv(sys.argv[2], sys.argv[2:])
"""
)


def box_covers(settings: Settings, scratch: Path, temp: Path | None = None) -> list[list[Any]]:
    """The mounts for one kernel: empty what is not the system's, hide, private temp.

    Every top-level folder that is not the operating system's (/home, /root, /opt, /work…)
    is replaced by an empty one that holds only what the kernel needs (Python, the labkit
    package); so is the course checkout itself, wherever it is: its .git, keys and other
    learners' work are simply not there. With ``temp`` (a folder on the kernel's scratch
    disk holding one sub-folder per temp folder, see ``temp_folders``) the temp folders
    are bound from there, so everything the kernel writes counts against one disk cap.
    """
    needed = [p for p in needed_paths() if p != SCRATCH_BASE]
    # The course's public data folder (the handbook, the evaluation set) is what learners'
    # notebooks open from the course; it ships with the course handed out, so it stays.
    checkouts = [PROJECT, *(Path(c) for c in settings.hide_checkouts)]
    needed += [c / "data" for c in checkouts if (c / "data").is_dir()]
    covers: list[list[Any]] = []
    for folder in _outside_system():
        keep = _outermost(str(p.resolve()) for p in needed if _is_within(p, Path(folder)))
        covers.append([folder, keep, "755"])
    for base in sorted({str(PROJECT), *settings.hide_checkouts}):
        keep = _outermost(str(p.resolve()) for p in needed if _is_within(p, Path(base)))
        covers.append([base, keep, "755"])
    covers += [list(c) for c in settings.reach]
    covers += [[path, [], "000"] for path in settings.hide if os.path.exists(path)]
    # Temp folders are replaced too: only this kernel's scratch folder (and Python or
    # labkit, if they live there, as on some CI machines) stays. Not the whole scratch
    # base: it holds other learners' scratch folders.
    wanted = [scratch, *needed]
    for folder in WORLD_WRITABLE:
        if os.path.isdir(folder) and os.stat(folder).st_mode & stat.S_IWOTH:
            keep = _outermost(str(p.resolve()) for p in wanted if _is_within(p, Path(folder)))
            source = [str(temp / _temp_name(folder))] if temp is not None else []
            covers.append([folder, keep, "1777", *source])
    return covers


def _temp_name(folder: str) -> str:
    return folder.strip("/").replace("/", "-")


def temp_folders(temp: Path) -> None:
    """Make the world-writable sub-folders of ``temp`` that stand in for /tmp and the like."""
    temp.mkdir(mode=0o711, exist_ok=True)
    for folder in WORLD_WRITABLE:
        path = temp / _temp_name(folder)
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o1777)


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another one (kept with it already)."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and _is_within(Path(p), Path(q)) for q in unique)]


def _outside_system() -> list[str]:
    """Top-level folders that are not the operating system's (where people keep things)."""
    found = []
    for entry in os.scandir("/"):
        if entry.name not in SYSTEM and entry.is_dir(follow_symlinks=False):
            found.append(entry.path)
    return sorted(found)


def reachability_covers(needed: Iterable[Path]) -> list[list[Any]]:
    """Covers that let an unprivileged user reach ``needed`` through private parents.

    Python may live under a folder others cannot enter (such as /root/.pyenv): such a
    parent is replaced by a tmpfs that holds only the way to what the kernel needs.
    """
    keeps: dict[Path, set[str]] = {}
    for path in needed:
        path = path.resolve()
        chain = [path, *path.parents]
        for child, parent in itertools.pairwise(chain):
            if not parent.stat().st_mode & stat.S_IXOTH:
                keeps.setdefault(parent, set()).add(str(child))
    deepest_first = sorted(keeps, key=lambda p: len(p.parts), reverse=True)
    return [[str(p), sorted(keeps[p]), "755"] for p in deepest_first]


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def needed_paths() -> list[Path]:
    """What every kernel must be able to read: the interpreter, its packages, labkit."""
    return [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(sys.executable),
        Path(__file__).resolve().parents[1],  # the labkit package
        SCRATCH_BASE,
    ]


def private_paths(
    submissions: Path, out: Path, key: Path | None, master: Path | None, root: Path
) -> list[str]:
    """What learner code must not see: other work, results, keys, masters, solutions."""
    hide = {submissions.resolve(), out.resolve()}
    for base in {root.resolve(), PROJECT}:
        for name in ("masters", "grading", "solutions", ".labkit"):
            hide.add(base / name)
    for path in (key, master):
        if path is not None:
            hide.add(path.resolve())
            if not _contains_needed(path.resolve().parent):
                hide.add(path.resolve().parent)
    with contextlib.suppress(Exception):
        from labkit import runtime

        hide.add(runtime.home().resolve())
    for path in list(hide):
        if path.is_dir() and _contains_needed(path):
            raise GradingError(
                f"{path} holds files the grading kernels need (Python or labkit), so it cannot "
                "be hidden from learner code. Keep submissions and results outside it."
            )
    existing = [p for p in hide if p.exists()]
    # A path inside another hidden folder is hidden with it (and could not be mounted on).
    outer = [p for p in existing if not any(q != p and _is_within(p, q) for q in existing)]
    return sorted(str(p) for p in outer)


def _contains_needed(folder: Path) -> bool:
    return any(_is_within(p, folder) for p in needed_paths() if p.exists())


def box_limits(settings: Settings, tree_caps: bool) -> dict[str, int]:
    """Per-process limits (``tree_caps``: a cgroup caps the whole tree's memory and tasks).

    The per-process memory limit stays either way: one allocation larger than the cap then
    fails at once with MemoryError, which a learner can read, instead of being killed.
    """
    cells_and_tests = 200  # a generous ceiling on how many timed steps one notebook takes
    return {
        "AS": settings.options.memory_mb * 1024 * 1024,
        "FSIZE": settings.options.disk_mb * 1024 * 1024,
        # A grading user has one box at a time, so without a cgroup this per-user cap is
        # the box's; with one it is only a second line behind the cgroup's.
        "NPROC": 512 if tree_caps else MAX_TASKS,
        "CORE": 0,
        "CPU": int(settings.options.timeout * cells_and_tests),
    }


CGROUP_PARENT = "labkit-grading"  # the folder of the boxes' cgroups in each hierarchy


MAX_TASKS = 256  # processes and threads in one kernel's box, all together


@dataclass(frozen=True)
class Cgroups:
    """Where boxes get their memory and task caps: cgroup v2, v1, or nowhere (and why)."""

    version: str  # "v2", "v1", or "" when neither works on this machine
    parents: tuple[str, ...] = ()  # v2: one folder; v1: the memory one, then the pids one
    why: str = ""  # why there are none, for the instructor

    def create(self, name: str, memory_mb: int, tasks: int = MAX_TASKS) -> list[str]:
        """Make the cgroup folders of one box with its caps set; the folders to join."""
        memory = str(memory_mb * 1024 * 1024)
        made: list[str] = []
        try:
            for parent in self.parents:
                folder = Path(parent, name)
                folder.mkdir()
                made.append(str(folder))
            if self.version == "v2":
                _write(Path(made[0], "memory.max"), memory)
                _write(Path(made[0], "memory.swap.max"), "0", optional=True)
                _write(Path(made[0], "pids.max"), str(tasks))
            else:
                _write(Path(made[0], "memory.limit_in_bytes"), memory)
                # Swap counts too where the kernel accounts for it; not under a cap of its own.
                _write(Path(made[0], "memory.memsw.limit_in_bytes"), memory, optional=True)
                _write(Path(made[1], "pids.max"), str(tasks))
        except OSError as exc:
            self.remove(made)
            raise GradingError(
                f"Could not cap a kernel's memory and processes with cgroup {self.version} "
                f"({exc}). Check that {', '.join(self.parents)} can be written by root, or "
                "grade on a machine with working cgroups."
            ) from exc
        return made

    def remove(self, folders: Iterable[str], wait: float = 10.0) -> bool:
        """Kill every process in the box's cgroups and delete them; False if one lingers."""
        done = True
        for folder in folders:
            path = Path(folder)
            if not path.exists():
                continue
            kill_switch = path / "cgroup.kill"  # v2 from Linux 5.14: all at once, no races
            with contextlib.suppress(OSError):
                if kill_switch.exists():
                    kill_switch.write_text("1")
            deadline = time.monotonic() + wait
            while True:
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    if not pids:
                        path.rmdir()
                        break
                if time.monotonic() > deadline:
                    done = False
                    break
                time.sleep(0.005)
        return done

    def sweep(self, prefixes: Iterable[str]) -> None:
        """Remove boxes left by a grading run that was killed (names starting ``prefixes``)."""
        starts = tuple(prefixes)
        for parent in self.parents:
            with contextlib.suppress(OSError):
                for entry in os.scandir(parent):
                    if entry.is_dir() and entry.name.startswith(starts):
                        self.remove([entry.path], wait=2.0)


def _write(path: Path, value: str, optional: bool = False) -> None:
    if optional and not path.exists():
        return
    path.write_text(value)


@functools.cache
def cgroups() -> Cgroups:
    """The cgroups this machine offers for boxes: v2 if it has memory and pids, else v1."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return Cgroups("", why="cgroups need root on Linux")
    try:
        mounts = _cgroup_mounts()
    except OSError as exc:
        return Cgroups("", why=f"cannot read the mounts ({exc})")
    reasons = []
    for point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        root = Path(point)
        try:
            have = set((root / "cgroup.controllers").read_text().split())
            if not {"memory", "pids"} <= have:
                reasons.append(f"cgroup v2 at {point} has no memory and pids controllers")
                continue
            parent = root / CGROUP_PARENT
            _enable(root)
            parent.mkdir(exist_ok=True)
            _enable(parent)
        except OSError as exc:
            reasons.append(f"cgroup v2 at {point}: {exc}")
            continue
        return Cgroups("v2", (str(parent),))
    v1 = {}
    for point, fstype, options in mounts:
        for controller in ("memory", "pids"):
            if fstype == "cgroup" and controller in options and controller not in v1:
                v1[controller] = Path(point)
    if len(v1) == 2:
        try:
            parents = [v1["memory"] / CGROUP_PARENT, v1["pids"] / CGROUP_PARENT]
            for parent in parents:
                parent.mkdir(exist_ok=True)
        except OSError as exc:
            reasons.append(f"cgroup v1: {exc}")
        else:
            return Cgroups("v1", tuple(str(p) for p in parents))
    else:
        reasons.append("no cgroup v1 memory and pids hierarchies")
    return Cgroups("", why="; ".join(reasons))


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, type, options) of every cgroup file system this process sees."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        ours, _, theirs = line.partition(" - ")
        fields, more = ours.split(), theirs.split()
        if len(fields) > 4 and len(more) > 2 and more[0] in ("cgroup", "cgroup2"):
            options = set(more[2].split(",")) | set(fields[5].split(","))
            found.append((fields[4], more[0], options))
    return found


def _enable(folder: Path) -> None:
    """Let the children of a cgroup v2 folder cap memory and tasks."""
    control = folder / "cgroup.subtree_control"
    if not {"memory", "pids"} <= set(control.read_text().split()):
        control.write_text("+memory +pids")


def box_gaps(sandbox: bool = True) -> list[str]:
    """What the box cannot guarantee on this machine, one sentence each (none: all of it)."""
    if not sandbox:
        return [
            "--no-sandbox: kernels run as you, with your files and network, and with no "
            "memory, process or disk caps; nothing listed as enforced in ISOLATION is."
        ]
    gaps = []
    found = cgroups()
    if not found.version:
        gaps.append(
            f"No cgroups ({found.why}): --memory-mb caps each process of a kernel on its "
            "own (RLIMIT_AS), not the kernel and its children together, and their number "
            "is capped per grading user (RLIMIT_NPROC), not per kernel."
        )
    return gaps


def kernel_env(settings: Settings, scratch: Path, user: str) -> dict[str, str]:
    """A small, explicit environment: nothing of the grader's own leaks into the kernel."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        "TMPDIR": str(scratch),
        "LABKIT_BASE_URL": settings.runtime_url,
        "LABKIT_HOME": str(scratch / ".labkit"),
        "LABKIT_GRADING": "1",
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Two workers share the machine's cores: one math thread per kernel is plenty.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in ("LABKIT_CHAT_MODEL", "LABKIT_EMBED_MODEL_NAME", "LABKIT_EMBED_URL"):
        if value := os.environ.get(name):
            env[name] = value
    return env


def preflight(settings: Settings, user: tuple[int, int, str]) -> None:
    """Check once that a sandboxed Python starts and can read labkit; explain if not."""
    run_dir = Path(settings.run_dir)
    scratch = Path(tempfile.mkdtemp(prefix="preflight-", dir=run_dir))
    uid, gid, name = user
    os.chown(scratch, uid, gid)
    caps = cgroups()
    # A box like a kernel's, with its own cgroups: a machine where they fail fails here.
    groups = (
        caps.create(f"{name}.preflight.{os.getpid()}", settings.options.memory_mb)
        if caps.version
        else []
    )
    spec = {
        "uid": uid,
        "gid": gid,
        "cwd": str(scratch),
        "covers": box_covers(settings, scratch),
        "chown": [],
        "limits": box_limits(settings, bool(groups)),
        "cgroups": groups,
        "network": settings.options.kernel_network,
    }
    # Reading the files is enough to know the kernel will import them (and much faster).
    import importlib.util

    needed = [str(Path(__file__).resolve().parents[1] / "course" / "checks.py")]
    for module in ("ipykernel", "IPython", "nbformat"):
        found = importlib.util.find_spec(module)
        if found and found.origin:
            needed.append(found.origin)
    probe = (
        "import os, sys\n"
        "bad = [p for p in sys.argv[1:] if not os.access(p, os.R_OK)]\n"
        "print('cannot read: ' + ', '.join(bad) if bad else os.getuid())"
    )
    cmd = [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec)]
    cmd += [sys.executable, "-I", "-c", probe, *needed]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=scratch,
            env=kernel_env(settings, scratch, name),
        )
    finally:
        caps.remove(groups)
        kill_user_processes([uid])
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0 or done.stdout.strip() != str(uid):
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GradingError(
            "The grading sandbox does not work on this machine: "
            + " / ".join(detail)
            + ". It needs Linux, root and mount, PID, IPC and network namespaces "
            "(CAP_SYS_ADMIN). To grade trusted notebooks without isolation, pass --no-sandbox."
        )
