"""The sandbox: what a grading kernel may see, reach and use.

A kernel starts as root in a fork, enters private namespaces, covers what it must not see
with empty folders, sets its limits and only then becomes its grading user.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings
from labkit.grader.users import kill_user_processes

__all__ = ["ISOLATION", "PROJECT", "WORLD_WRITABLE", "enter_sandbox"]


ISOLATION = """\
Enforced: learner code runs as an unprivileged grading user in private mount and network
namespaces. It sees the operating system's folders, Python, the labkit package, the course's
public data/ folder and its own scratch folder (its notebook, the exercise's data files, its
public tests) — nothing else of the course checkout (no .git, grading keys, masters,
solutions), no other submission or
scratch folder, no folder outside the system ones (/home, /root, /opt, /srv, /mnt and the
like are empty), and no process but its own (/proc is mounted with hidepid). Its network is
its own loopback only: the runtime's port on 127.0.0.1 is forwarded to the runtime by the
grader, and nothing else is reachable (no public address, no other local service); pass
--network host to give kernels the machine's network instead. It can write only to its
scratch folder (temp folders are private and discarded); hidden tests reach it only over
the kernel channel after its own cells ran, are compiled from a private copy and leave no
source in reach; feedback for a hidden test carries only a short, sanitised message;
memory, file size, process count and CPU time are limited; every process it started is
killed afterwards.
Not enforced: code that runs during the tests (a background thread, a patched built-in, an
audit hook) can observe or tamper with the tests running in its own kernel, so a submission
written to cheat can fake its own results (the tests run on a copy of its namespace, which
stops accidents, not intent); the operating system's world-readable files stay readable;
a notebook can keep the shared model runtime busy (each cell and test still has its limit).
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
    """Hide private folders, then drop from root to the grading user (raises OSError).

    It unshares the mount namespace, mounts empty tmpfs folders over what learner code
    must not see (keeping chosen sub-folders, re-attached from file descriptors opened
    before the cover went on), sets resource limits, and only then gives up root. It uses
    the standard library only, so a bare ``python -I -S`` can run it too.

    With ``spec["join"]`` set to the pid of a process in a kernel's box, it enters that
    box's mount and network namespaces instead (same files, same 127.0.0.1, not the same
    processes), then sets limits and drops to ``spec``'s user the same way.
    """
    import ctypes
    import os
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    ms_nosuid, ms_nodev, ms_bind, ms_rec, ms_private = 2, 4, 4096, 16384, 1 << 18

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

    if spec.get("join"):
        # Step into an existing box's files and network (both opened before either is
        # entered: once in its mounts, /proc is the box's own). Its covers are there already.
        box = spec["join"]
        handles = [os.open(f"/proc/{box}/ns/{name}", os.O_RDONLY) for name in ("mnt", "net")]
        try:
            for fd, kind in zip(handles, (0x00020000, 0x40000000), strict=True):
                call(libc.setns(fd, kind), f"setns into process {box}'s namespaces")
        finally:
            for fd in handles:
                os.close(fd)
        covers = []
    else:
        # New mount namespace, and a network of its own (just loopback) unless asked otherwise.
        flags = 0x00020000 | (0x40000000 if spec.get("network") == "runtime" else 0)
        call(libc.unshare(flags), "unshare (needs root with CAP_SYS_ADMIN)")
        mount(None, "/", None, ms_rec | ms_private, "")  # our mounts stay in this namespace
        # A /proc of its own that lists only the grading user's processes (hidepid): the
        # grader's command line and other kernels stay out of sight.
        mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | 8, "hidepid=2")  # 8: MS_NOEXEC
        covers = spec["covers"]
    for target, keeps, mode in covers:
        if not os.path.lexists(target):  # under an earlier cover: hidden already
            continue
        if os.path.isfile(target):  # a single file: show /dev/null in its place
            mount("/dev/null", target, None, ms_bind, "")
            continue
        kept = [(k, os.path.isdir(k), os.open(k, os.O_RDONLY)) for k in keeps]
        mount("tmpfs", target, "tmpfs", ms_nosuid | ms_nodev, f"mode={mode},size=256m")
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
    os.chdir(spec["cwd"])


# A stand-alone launcher: ``python -I -S -c _LAUNCHER SPEC COMMAND...`` runs COMMAND sandboxed.
_LAUNCHER = (
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


def _covers(settings: Settings, scratch: Path) -> list[list[Any]]:
    """The mounts for one kernel: empty what is not the system's, hide, private temp.

    Every top-level folder that is not the operating system's (/home, /root, /opt, /work…)
    is replaced by an empty one that holds only what the kernel needs (Python, the labkit
    package); so is the course checkout itself, wherever it is: its .git, keys and other
    learners' work are simply not there.
    """
    needed = [p for p in _needed_paths() if p != SCRATCH_BASE]
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
            covers.append([folder, keep, "1777"])
    return covers


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


def _reachability_covers(needed: Iterable[Path]) -> list[list[Any]]:
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


def _needed_paths() -> list[Path]:
    """What every kernel must be able to read: the interpreter, its packages, labkit."""
    return [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(sys.executable),
        Path(__file__).resolve().parents[1],  # the labkit package
        SCRATCH_BASE,
    ]


def _private_paths(
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
    return any(_is_within(p, folder) for p in _needed_paths() if p.exists())


def _limits(settings: Settings) -> dict[str, int]:
    cells_and_tests = 200  # a generous ceiling on how many timed steps one notebook takes
    return {
        "AS": settings.memory_mb * 1024 * 1024,
        "FSIZE": 256 * 1024 * 1024,
        "NPROC": 512,
        "CORE": 0,
        "CPU": int(settings.timeout * cells_and_tests),
    }


def _kernel_env(settings: Settings, scratch: Path, user: str) -> dict[str, str]:
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


def _preflight(settings: Settings, user: tuple[int, int, str]) -> None:
    """Check once that a sandboxed Python starts and can read labkit; explain if not."""
    run_dir = Path(settings.run_dir)
    scratch = Path(tempfile.mkdtemp(prefix="preflight-", dir=run_dir))
    uid, gid, name = user
    os.chown(scratch, uid, gid)
    spec = {
        "uid": uid,
        "gid": gid,
        "cwd": str(scratch),
        "covers": _covers(settings, scratch),
        "chown": [],
        "limits": _limits(settings),
    }
    # Reading the files is enough to know the kernel will import them (and much faster).
    import importlib.util

    needed = [str(Path(__file__).resolve().parents[1] / "course" / "checks.py")]
    for name in ("ipykernel", "IPython", "nbformat"):
        found = importlib.util.find_spec(name)
        if found and found.origin:
            needed.append(found.origin)
    probe = (
        "import os, sys\n"
        "bad = [p for p in sys.argv[1:] if not os.access(p, os.R_OK)]\n"
        "print('cannot read: ' + ', '.join(bad) if bad else os.getuid())"
    )
    cmd = [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)]
    cmd += [sys.executable, "-I", "-c", probe, *needed]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=scratch,
            env=_kernel_env(settings, scratch, name),
        )
    finally:
        kill_user_processes([uid])
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0 or done.stdout.strip() != str(uid):
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GradingError(
            "The grading sandbox does not work on this machine: "
            + " / ".join(detail)
            + ". It needs Linux, root and mount namespaces (CAP_SYS_ADMIN). "
            "To grade trusted notebooks without isolation, pass --no-sandbox."
        )
