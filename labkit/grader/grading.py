"""Grade a class's notebooks: each runs in a fresh, locked-down kernel, then the tests run.

``labkit grade SUBMISSIONS/ --exercise 01`` does, for every notebook in SUBMISSIONS/:

1. start a fresh IPython kernel as an unprivileged user, in an empty scratch folder, with
   the runtime's address in ``LABKIT_BASE_URL``. Kernels are forked from a "zygote", a
   process that imported ipykernel and labkit once: a new Python would spend seconds on
   those imports for every notebook, a fork takes milliseconds. nbclient drives the kernel;
2. run the learner's code cells in order, each with a time limit (a cell that errors does
   not stop the others; a cell that hangs is interrupted, and if that fails the kernel is
   replaced and the notebook re-run without that cell);
3. send every test — public and hidden — over the kernel's channel and run it in the same
   kernel, after the learner's code (hidden test code is never written to a file the
   learner's code can read);
4. score each test (partial credit), write ``gradebook.csv``, one Markdown feedback file
   per learner, per-test pass rates (CSV and a bar plot) and the executed notebooks.

What the sandbox enforces (Linux, run as root): the kernel runs as a grading user of its
own, inside a private mount namespace where the submissions, the grading output, the
grading keys, the masters and the solutions are covered by empty folders, and /tmp,
/var/tmp, /dev/shm and /run/lock are private, throw-away folders; only its scratch folder
is writable and kept. Limits: address space, file size, process count and CPU time. All
processes of the grading user are killed after each notebook. Each worker has two grading
users and alternates them, so the kernel started in advance for the next notebook never
shares a user with the notebook running now. What it does not enforce is listed in
``ISOLATION`` below.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import csv
import fcntl
import hashlib
import inspect
import io
import itertools
import json
import multiprocessing
import os
import pwd
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.grader import assign
from labkit.grader.assign import Exercise, write_atomic

ISOLATION = """\
Enforced: learner code runs as an unprivileged grading user in a private mount namespace;
submissions, grading output, keys, masters and solutions are hidden from it; it can write
only to its scratch folder (temp folders are private and discarded); hidden tests reach it
only over the kernel channel after its own cells ran; memory, file size, process count and
CPU time are limited; every process it started is killed afterwards; the runtime stays
reachable on loopback.
Not enforced: network access beyond loopback is not blocked; code that runs during the tests
(a background thread, a patched built-in, an audit hook) can observe or tamper with the
tests running in its own kernel, so a submission written to cheat can fake its own results
(the tests run on a copy of its namespace, which stops accidents, not intent); the kernel
can read anything on the machine that every user may read (except the hidden folders);
a notebook can keep the shared model runtime busy (each cell and test still has its limit).
"""

SCRATCH_BASE = Path(tempfile.gettempdir()) / "labkit-grading"
USER_PREFIX = "labkit-grader-"
MAX_SLOTS = 32  # parallel grading workers per machine, across all grading runs
RESTARTS = 2  # fresh kernels per notebook after one hung or died
GRACE = 2.0  # seconds a kernel gets to stop after an interrupt before it is killed
FLOOD_BYTES = 1_000_000  # output of one cell that counts as a flood (not kept, not re-run)
KEEP_BYTES = 2_000_000  # output kept per notebook in executed/
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
START_ERROR = "kernel-start-error.txt"  # written in the scratch folder if a kernel cannot start
PROJECT = Path(__file__).resolve().parents[2]


class GradingError(LabkitError):
    """Grading could not start (bad arguments, no sandbox, nothing to grade)."""


@dataclass
class Settings:
    """Everything a worker needs to grade notebooks of one exercise (picklable)."""

    exercise: Exercise
    runtime_url: str
    timeout: float = 60.0
    sandbox: bool = True
    memory_mb: int = 4096
    hide: list[str] = field(default_factory=list)  # paths covered in the kernel's view
    reach: list[list[Any]] = field(default_factory=list)  # covers that make Python reachable
    public_tests: bytes = b""
    extra_files: list[tuple[str, str]] = field(default_factory=list)  # (source, scratch path)
    run_dir: str = ""


@dataclass
class Submission:
    """One learner's notebook."""

    learner: str
    path: Path
    sha256: str = ""


@dataclass
class GradeReport:
    """What ``grade()`` did: every learner's result and where the files went."""

    exercise: Exercise
    results: list[dict[str, Any]]
    graded: list[str]  # learners graded in this run (the rest came from the last run)
    out: Path
    uids: list[int] = field(default_factory=list)
    grading_seconds: float = 0.0  # from the first notebook handed out to the last result

    def result(self, learner: str) -> dict[str, Any]:
        """The result of one learner."""
        return next(r for r in self.results if r["learner"] == learner)


# ----------------------------------------------------------------- the sandbox launcher


def enter_sandbox(spec: dict[str, Any]) -> None:
    """Hide private folders, then drop from root to the grading user (raises OSError).

    It unshares the mount namespace, mounts empty tmpfs folders over what learner code
    must not see (keeping chosen sub-folders, re-attached from file descriptors opened
    before the cover went on), sets resource limits, and only then gives up root. It uses
    the standard library only, so a bare ``python -I -S`` can run it too.
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

    call(libc.unshare(0x00020000), "unshare (needs root with CAP_SYS_ADMIN)")  # CLONE_NEWNS
    mount(None, "/", None, ms_rec | ms_private, "")  # our mounts stay in this namespace
    for target, keeps, mode in spec["covers"]:
        if not os.path.lexists(target):  # under an earlier cover: hidden already
            continue
        if os.path.isfile(target):  # a single file: show /dev/null in its place
            mount("/dev/null", target, None, ms_bind, "")
            continue
        kept = [(k, os.open(k, os.O_RDONLY | os.O_DIRECTORY)) for k in keeps]
        mount("tmpfs", target, "tmpfs", ms_nosuid | ms_nodev, f"mode={mode},size=256m")
        for keep, fd in kept:
            os.makedirs(keep, exist_ok=True)
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

# Modules every kernel needs, loaded once by the zygote instead of once per notebook.
PRELOAD = (
    "IPython",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "labkit",
    "labkit.course.checks",
    "requests",
    "numpy",
)


def _zygote_loop(requests: int, answers: int) -> None:
    """Fork one kernel per request, forever (the zygote's whole life; runs as root).

    Starting a kernel from scratch re-imports IPython, ipykernel and labkit, which takes
    seconds; a fork of a process that already imported them starts one in milliseconds.
    Requests arrive as JSON lines; the answer to each is the new kernel's pid.
    """
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped at once: no zombies
    with os.fdopen(requests, "r") as incoming, os.fdopen(answers, "w") as outgoing:
        while line := incoming.readline():
            pid = os.fork()
            if pid == 0:
                _become_kernel(json.loads(line))
            outgoing.write(json.dumps({"pid": pid}) + "\n")
            outgoing.flush()


def _become_kernel(request: dict[str, Any]) -> None:
    """In the forked child: enter the sandbox, take the notebook's environment, run ipykernel."""
    import signal

    code = 0
    try:
        os.setsid()  # its own process group, so an interrupt reaches it and its children
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 1024)  # nothing of the grader's stays open in the kernel
        if request["sandbox"]:
            enter_sandbox(request["sandbox"])
        else:
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"], JPY_PARENT_PID=str(os.getppid()))
        tempfile.tempdir = None  # recompute from TMPDIR, now the scratch folder
        if "numpy" in sys.modules:  # forked kernels must not share random numbers
            sys.modules["numpy"].random.seed()
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        argv = ["-f", request["connection_file"], "--HistoryManager.enabled=False"]
        app.initialize(argv)  # type: ignore[no-untyped-call]
        app.start()  # type: ignore[no-untyped-call]
    except BaseException:
        code = 70
        with contextlib.suppress(BaseException):  # leave the reason where the grader looks
            import traceback

            Path(request["cwd"], START_ERROR).write_text(traceback.format_exc())
    finally:
        os._exit(code)


class _Zygote:
    """A copy of the worker, made before it starts any thread, that forks the kernels."""

    def __init__(self) -> None:
        import importlib
        import threading

        for name in PRELOAD:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        if threading.active_count() != 1:  # forking a process with threads can deadlock
            raise GradingError("The grading worker started threads before its kernel starter.")
        requests, to_zygote = os.pipe()  # (read end, write end)
        answers, from_zygote = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                for fd in range(3, 1024):  # keep only the two pipe ends this side uses
                    if fd not in (requests, from_zygote):
                        with contextlib.suppress(OSError):
                            os.close(fd)
                # Forget any event loop inherited from this process: its files are closed.
                asyncio.set_event_loop_policy(None)
                _zygote_loop(requests, from_zygote)
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(requests)
        os.close(from_zygote)
        self.requests = os.fdopen(to_zygote, "w")
        self.answers = os.fdopen(answers, "r")

    def fork(self, request: dict[str, Any]) -> int:
        """Fork a kernel; its pid."""
        self.requests.write(json.dumps(request) + "\n")
        self.requests.flush()
        answer = self.answers.readline()
        if not answer:
            raise GradingError("The kernel starter of this grading worker stopped.")
        return int(json.loads(answer)["pid"])

    def close(self) -> None:
        """Stop the zygote (its kernels are stopped by the worker)."""
        with contextlib.suppress(OSError):
            self.requests.close()
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, 0)


class _ForkedProcess:
    """Just enough of ``Popen`` for jupyter_client to manage a kernel the zygote forked."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """None while the kernel runs."""
        if self.returncode is None and not _alive(self.pid):
            self.returncode = 1  # its parent is the zygote: the real status is not ours
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the kernel has exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kernel", timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, signum: int) -> None:
        """Signal the kernel."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """Kill the kernel."""
        self.send_signal(9)

    def terminate(self) -> None:
        """Ask the kernel to stop."""
        self.send_signal(15)


def _alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _covers(settings: Settings, scratch: Path) -> list[list[Any]]:
    """The mounts for one kernel: make Python reachable, hide private paths, private temp."""
    covers = [list(c) for c in settings.reach]
    covers += [[path, [], "000"] for path in settings.hide if os.path.exists(path)]
    # A course checked out under /tmp (as CI machines often do) must stay reachable when
    # /tmp itself is replaced: keep the scratch folder, Python and the course's folder.
    # Not the whole scratch base: it holds other learners' scratch folders.
    needed = [p for p in _needed_paths() if p != SCRATCH_BASE]
    wanted = [scratch, *needed, PROJECT]
    for folder in WORLD_WRITABLE:
        if os.path.isdir(folder) and os.stat(folder).st_mode & stat.S_IWOTH:
            keep = sorted({str(p.resolve()) for p in wanted if _is_within(p, Path(folder))})
            covers.append([folder, keep, "1777"])
    return covers


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


# ------------------------------------------------------------------- users and slots


def _grading_user(number: int) -> tuple[int, int, str]:
    """The (uid, gid, name) of grading user ``number``, created if missing."""
    name = f"{USER_PREFIX}{number}"
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid, name
        except KeyError:
            if attempt:
                break
        cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", "/usr/sbin/nologin", "--user-group", name]
        try:
            subprocess.run(cmd, check=False, capture_output=True, timeout=30)
        except OSError as exc:
            raise GradingError(
                f"Cannot create the grading user {name} ({exc}). Create it yourself "
                f"(`useradd --system --user-group {name}`) or grade with --no-sandbox."
            ) from exc
    raise GradingError(f"Could not create the grading user {name}; is `useradd` available?")


class Slots:
    """Machine-wide locks so two grading runs never share a grading user."""

    def __init__(self, count: int) -> None:
        SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
        os.chmod(SCRATCH_BASE, 0o711)  # others may enter (their scratch), not list
        self.held: list[tuple[int, Any]] = []
        for number in range(MAX_SLOTS):
            if len(self.held) == count:
                break
            handle = open(SCRATCH_BASE / f"slot-{number}.lock", "a")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.held.append((number, handle))
        if len(self.held) < count:
            self.release()
            raise GradingError(f"All {MAX_SLOTS} grading slots are busy; try again later.")

    @property
    def numbers(self) -> list[int]:
        """The slot numbers held."""
        return [n for n, _ in self.held]

    def release(self) -> None:
        """Let other grading runs use these slots."""
        for _, handle in self.held:
            handle.close()
        self.held = []


def kill_user_processes(uids: Iterable[int]) -> int:
    """Kill every process whose real or effective user is in ``uids``; how many were found."""
    wanted = {str(u) for u in uids if u != 0}  # never root's processes, whatever the caller says
    found = 0
    for _ in range(50):
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            ids = fields.get("Uid", "").split()[:2]
            if wanted & set(ids) and not fields.get("State", "").strip().startswith("Z"):
                pids.append(int(entry.name))
        if not pids:
            break
        found += len(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        time.sleep(0.02)
    return found


# ------------------------------------------------------------------------- kernels


def _kernel_classes() -> tuple[type[Any], type[Any]]:
    """Provisioner and notebook client classes (imported late: they are heavy)."""
    import nbformat
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner
    from nbclient import NotebookClient

    class ForkedProvisioner(LocalProvisioner):
        """Gets its kernel from the worker's zygote instead of starting a new Python."""

        zygote: _Zygote | None = None
        sandbox: dict[str, Any] | None = None

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            assert self.zygote is not None
            km: Any = self.parent
            pid = self.zygote.fork(
                {
                    "sandbox": self.sandbox,
                    "env": kwargs["env"],
                    "cwd": kwargs["cwd"],
                    "connection_file": km.connection_file,
                }
            )
            self.process = _ForkedProcess(pid)  # type: ignore[assignment]
            self.pid = self.pgid = pid  # the kernel leads its own process group
            self.cwd = kwargs["cwd"]
            return self.connection_info

    class GradingClient(NotebookClient):
        """nbclient's runner that keeps a bounded amount of output.

        A flooding cell is not interrupted here: an interrupt sent now could land in the
        next cell. The cell's time limit stops an endless flood.
        """

        def __init__(self, nb: Any, km: Any, **kw: Any) -> None:
            super().__init__(nb, km=km, **kw)
            self.kept = 0
            self.cell_bytes: dict[int, int] = {}
            self.flooded: set[int] = set()
            self.truncated = False

        def output(self, outs: Any, msg: Any, display_id: Any, cell_index: int) -> Any:
            size = _message_size(msg)
            self.cell_bytes[cell_index] = self.cell_bytes.get(cell_index, 0) + size
            if self.cell_bytes[cell_index] > FLOOD_BYTES:
                self.flooded.add(cell_index)
            if self.kept + size > KEEP_BYTES:
                if not self.truncated:
                    self.truncated = True
                    text = "[labkit: further output was not kept]\n"
                    note = nbformat.v4.new_output("stream", name="stderr", text=text)  # type: ignore[no-untyped-call]
                    outs.append(note)
                return None
            self.kept += size
            return super().output(outs, msg, display_id, cell_index)

    return ForkedProvisioner, GradingClient


def _message_size(msg: dict[str, Any]) -> int:
    content = msg.get("content", {})
    size = len(str(content.get("text", "")))
    for value in (content.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else len(json.dumps(value))
    size += sum(len(line) for line in content.get("traceback") or [])
    return size


@dataclass
class _Kernel:
    """A started kernel and the scratch folder it lives in."""

    km: Any
    scratch: Path
    uid: int
    gid: int


class _Worker:
    """One grading process: its users, its event loop and the kernel it started in advance."""

    def __init__(self, settings: Settings, users: list[tuple[int, int, str]]) -> None:
        import zmq.asyncio

        self.settings = settings
        self.users = users
        self.turn = 0
        self.zygote = _Zygote()  # first: before the event loop and zmq start threads
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.context = zmq.asyncio.Context()
        self.next: asyncio.Task[_Kernel] | None = None

    def user(self) -> tuple[int, int, str]:
        """The next grading user in turn."""
        self.turn += 1
        return self.users[self.turn % len(self.users)]

    async def start_kernel(self, user: tuple[int, int, str]) -> _Kernel:
        """Fork a kernel for ``user`` in a new, empty scratch folder (does not wait for it)."""
        from jupyter_client.manager import AsyncKernelManager

        provisioner_class, _ = _kernel_classes()
        uid, gid, name = user
        scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.settings.run_dir))
        km = AsyncKernelManager(
            transport="ipc",  # sockets are files in the scratch folder: no one else connects
            connection_file=str(scratch / "kernel.json"),
            context=self.context,
            kernel_name="python3",
        )
        km.kernel_id = scratch.name
        provisioner = provisioner_class(
            kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km
        )
        provisioner.zygote = self.zygote
        km.provisioner = provisioner
        if self.settings.sandbox:
            os.chown(scratch, uid, gid)
            os.chmod(scratch, 0o700)
            provisioner.sandbox = {
                "uid": uid,
                "gid": gid,
                "cwd": str(scratch),
                "covers": _covers(self.settings, scratch),
                "chown": [str(scratch / "kernel.json")],
                "limits": _limits(self.settings),
            }
        await km.start_kernel(cwd=str(scratch), env=_kernel_env(self.settings, scratch, name))
        return _Kernel(km=km, scratch=scratch, uid=uid, gid=gid)

    async def take_kernel(self) -> _Kernel:
        """The kernel started in advance (or a new one), and start the next in advance."""
        kernel = await self.next if self.next else await self.start_kernel(self.user())
        self.next = self.loop.create_task(self.start_kernel(self.user()))
        return kernel

    async def stop_kernel(self, kernel: _Kernel) -> None:
        """Stop a kernel, kill whatever its user left running, delete its scratch folder.

        No polite shutdown: the notebook is done, and asking a kernel to exit (then polling
        until it has) costs more than the rest of a small notebook's grading.
        """
        _kill_group(kernel.km)
        if self.settings.sandbox:
            kill_user_processes([kernel.uid])
        with contextlib.suppress(Exception):
            await kernel.km.cleanup_resources()
        shutil.rmtree(kernel.scratch, ignore_errors=True)

    def close(self) -> None:
        """Stop the kernel started in advance."""
        if self.next is not None:
            with contextlib.suppress(Exception):
                kernel = self.loop.run_until_complete(self.next)
                self.loop.run_until_complete(self.stop_kernel(kernel))
        if self.settings.sandbox:
            kill_user_processes(u for u, _, _ in self.users)
        self.zygote.close()


def _kill_group(km: Any) -> None:
    """Kill the kernel's process group (children that left the group are not in it)."""
    pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
    if pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, 9)


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


# --------------------------------------------------------------- grading one notebook


_WORKER: _Worker | None = None


def _init_worker(settings: Settings, slots: Any) -> None:
    """Pool initializer: claim a slot, its two users, and start a kernel in advance."""
    global _WORKER
    number = slots.get()
    users = [_grading_user(2 * number), _grading_user(2 * number + 1)]
    if not settings.sandbox:
        me = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
        users = [me, me]
    _WORKER = _Worker(settings, users)
    _WORKER.next = _WORKER.loop.create_task(_WORKER.start_kernel(_WORKER.user()))
    _WORKER.loop.run_until_complete(asyncio.sleep(0.05))  # let the kernel process start
    multiprocessing.util.Finalize(None, _WORKER.close, exitpriority=10)


def _grade_in_worker(submission: Submission) -> dict[str, Any]:
    """Pool task: grade one notebook (never raises: problems become its status)."""
    assert _WORKER is not None
    started = time.perf_counter()
    budget = _budget(_WORKER.settings)
    try:
        result = _WORKER.loop.run_until_complete(
            asyncio.wait_for(_grade(_WORKER, submission), budget)
        )
    except asyncio.TimeoutError:  # a last resort: every step has its own limit already
        result = _empty_result(_WORKER.settings.exercise, submission, ["gave-up"])
        result["notes"].append(f"Grading this notebook took over {budget:.0f} s and was stopped.")
    except Exception as exc:  # one broken notebook must not stop the class
        result = _empty_result(_WORKER.settings.exercise, submission, ["grader-error"])
        result["notes"].append(f"The grader failed on this notebook: {type(exc).__name__}: {exc}")
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["uids"] = sorted({u for u, _, _ in _WORKER.users})
    return result


def _budget(settings: Settings) -> float:
    """The most time one notebook may take, all cells, tests and restarts included."""
    steps = 2 * len(_test_specs(settings.exercise)) + 100
    return (RESTARTS + 1) * steps * (settings.timeout + GRACE)


def _empty_result(exercise: Exercise, sub: Submission, status: list[str]) -> dict[str, Any]:
    tests = [
        {
            "name": t.name,
            "question": q.name,
            "status": "not-run",
            "points": t.points,
            "earned": 0.0,
            "hidden": t.hidden,
            "description": t.description,
            "message": "This test could not run.",
            "hint": "",
        }
        for q in exercise.graded_questions
        for t in q.tests
    ]
    return {
        "learner": sub.learner,
        "file": sub.path.name,
        "sha256": sub.sha256,
        "status": status,
        "notes": [],
        "tests": tests,
        "executed": None,
    }


async def _grade(worker: _Worker, sub: Submission) -> dict[str, Any]:
    import nbformat

    settings = worker.settings
    raw = sub.path.read_bytes()
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(nb)
    except Exception as exc:  # not JSON, not a notebook, not valid: all the same to a learner
        result = _empty_result(settings.exercise, sub, ["invalid-notebook"])
        result["notes"].append(
            f"This file is not a valid notebook ({type(exc).__name__}), so nothing could run. "
            "Open it in Jupyter, check it shows your work, save it and submit it again."
        )
        return result
    result = _empty_result(settings.exercise, sub, [])
    run = _Run(nb=nb, tests=_test_specs(settings.exercise))
    kernel = await worker.take_kernel()
    for attempt in range(RESTARTS + 1):
        if attempt:  # the last kernel hung or died: same user, new kernel, new scratch
            kernel = await _fresh(worker, kernel)
        try:
            done = await _run_once(worker, kernel, run, raw)
        except GradingError as exc:  # the kernel itself failed (rare): try a fresh one
            done = False
            run.flags.add("grader-error")
            run.note(-1, str(exc), f"The grader had a problem: {exc}.")
        finally:
            await worker.stop_kernel(kernel)
        if done:
            break
    else:
        run.flags.add("gave-up")
        run.notes.append("The notebook kept hanging or crashing, so some tests did not run.")
    result["tests"] = [run.results.get(t["name"], t) for t in result["tests"]]
    result["status"] = sorted(run.flags)
    result["notes"] = run.notes
    result["executed"] = nbformat.writes(run.nb)  # type: ignore[no-untyped-call]
    return result


async def _fresh(worker: _Worker, old: _Kernel) -> _Kernel:
    """A new kernel for the same notebook (same user; the old one's processes are gone)."""
    user = next(u for u in worker.users if u[0] == old.uid)
    return await worker.start_kernel(user)


@dataclass
class _Run:
    """Progress through one notebook, kept across kernel restarts."""

    nb: Any
    tests: list[dict[str, Any]]
    skip: set[int] = field(default_factory=set)  # cells that hung, flooded or killed the kernel
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    noted: set[tuple[int, str]] = field(default_factory=set)

    def note(self, index: int, kind: str, text: str) -> None:
        """Record what happened in a cell once, even if the notebook is re-run."""
        if (index, kind) not in self.noted:
            self.noted.add((index, kind))
            self.notes.append(text)


def _test_specs(exercise: Exercise) -> list[dict[str, Any]]:
    return [
        {"question": q.name, "placeholders": q.placeholders, "test": asdict(t)}
        for q in exercise.graded_questions
        for t in q.tests
    ]


def _prepare_scratch(settings: Settings, kernel: _Kernel, raw: bytes) -> None:
    """Copy in what the notebook may read: itself, its public tests, the exercise's files."""
    files = {"submission.ipynb": raw, f"tests/{settings.exercise.name}.json": settings.public_tests}
    for source, target in settings.extra_files:
        with contextlib.suppress(OSError):
            files[target] = Path(source).read_bytes()
    for rel, content in files.items():
        path = kernel.scratch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if settings.sandbox:  # the learner's files belong to the grading user
            for part in [Path(rel), *Path(rel).parents]:
                if part != Path("."):
                    os.chown(kernel.scratch / part, kernel.uid, kernel.gid)


async def _run_once(worker: _Worker, kernel: _Kernel, run: _Run, raw: bytes) -> bool:
    """Run the notebook's cells, then the tests not run yet; False if the kernel got stuck."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    settings = worker.settings
    _prepare_scratch(settings, kernel, raw)
    _, client_class = _kernel_classes()
    client = client_class(
        run.nb,
        kernel.km,
        timeout=max(1, round(settings.timeout)),
        interrupt_on_timeout=False,
        allow_errors=True,
        record_timing=False,
        startup_timeout=60,
        iopub_timeout=4,
        raise_on_iopub_timeout=False,
        kernel_name="python3",
    )
    kc = client.kc = kernel.km.client()
    kc.allow_stdin = False
    kc.start_channels()
    try:
        await _ready(kernel.km, kc, 60.0)
    except DeadKernelError as exc:
        why = kernel.scratch / START_ERROR
        detail = why.read_text().strip().splitlines()[-1] if why.exists() else "no reason left"
        raise GradingError(f"the kernel stopped while starting ({detail})") from exc
    before = asyncio.all_tasks()  # tasks started from here on are this run's to clean up
    try:
        for index, cell in enumerate(run.nb.cells):
            if cell.cell_type != "code" or index in run.skip:
                continue
            label = _cell_label(index, cell.source)
            outcome = "ok"
            try:
                await client.async_execute_cell(cell, index)
            except CellTimeoutError:
                outcome = "timeout"
            except DeadKernelError:
                outcome = "died"
            if index in client.flooded:  # checked first: a flood often ends in a timeout
                run.skip.add(index)
                run.flags.add("output-limit")
                kept = f"{label} printed more than {FLOOD_BYTES // 1000} kB; the rest was not kept."
                run.note(index, "flood", kept)
            if outcome == "died":
                run.skip.add(index)
                run.flags.add("kernel-died")
                died = f"{label} made the kernel stop (crash or exit); the notebook was re-run without it."
                run.note(index, "died", died)
                return False
            if outcome == "timeout":
                run.skip.add(index)
                run.flags.add("timeout")
                slow = f"{label} ran longer than {settings.timeout:g} s and was stopped."
                run.note(index, "timeout", slow)
                if not await _recover(kernel.km, kc):
                    return False
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error" and out.get("ename") != "KeyboardInterrupt":
                    run.flags.add("cell-errors")
                    message = ": ".join(filter(None, [out.get("ename"), out.get("evalue")]))[:300]
                    run.note(index, "error", f"{label} raised {message}")
        for spec in run.tests:
            name = spec["test"]["name"]
            if name in run.results:
                continue
            outcome, value = await _run_test(kernel.km, kc, spec, settings.timeout)
            run.results[name] = value
            if outcome != "ok":
                return False
        return True
    finally:
        await _settle(before | {worker.next})
        with contextlib.suppress(Exception):
            kc.stop_channels()


async def _settle(keep: set[Any]) -> None:
    """Cancel what nbclient left waiting (e.g. on a cell that timed out)."""
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and t not in keep]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


def _cell_label(index: int, source: str) -> str:
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:49] + "…"
    return f"Cell {index + 1} (`{first}`)"


async def _wait_reply(km: Any, kc: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    """The shell reply to ``msg_id``, or None after ``timeout`` seconds."""
    from nbclient.exceptions import DeadKernelError

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            # wait_for as well: a receive must never outlive its deadline, whatever happens
            wait = min(remaining, 1.0)
            msg: dict[str, Any] = await asyncio.wait_for(kc.get_shell_msg(timeout=wait), wait + 1)
        except (queue.Empty, asyncio.TimeoutError):
            if not await km.is_alive():
                raise DeadKernelError("Kernel died") from None
            continue
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg


async def _ready(km: Any, kc: Any, timeout: float) -> None:
    """Wait until the kernel answers on its shell and its output reaches us.

    Output is published to whoever listens at that moment, so a cell run before our output
    channel is connected would lose its output. The kernel announces "idle" after every
    request; once we see that for our own request, nothing will be lost.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        if await _wait_reply(km, kc, msg_id, min(5.0, deadline - time.monotonic())) is None:
            continue
        seen_by = time.monotonic() + 0.5
        while time.monotonic() < seen_by:
            try:
                msg = await asyncio.wait_for(kc.get_iopub_msg(timeout=0.1), 1.0)
            except (queue.Empty, asyncio.TimeoutError):
                continue
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            if idle and msg.get("parent_header", {}).get("msg_id") == msg_id:
                return
    raise GradingError(f"the kernel did not become ready in {timeout:g} s")


async def _recover(km: Any, kc: Any) -> bool:
    """Interrupt a busy kernel; True if it is responsive again within the grace period."""
    from nbclient.exceptions import DeadKernelError

    with contextlib.suppress(Exception):
        await km.interrupt_kernel()
    try:
        return await _wait_reply(km, kc, kc.kernel_info(), GRACE) is not None
    except DeadKernelError:
        return False


async def _run_test(
    km: Any, kc: Any, spec: dict[str, Any], timeout: float
) -> tuple[str, dict[str, Any]]:
    """Run one test in the kernel: ("ok" | "stuck", result). The code travels in the request."""
    from nbclient.exceptions import DeadKernelError

    test = spec["test"]
    result = {
        "name": test["name"],
        "question": spec["question"],
        "points": test["points"],
        "earned": 0.0,
        "hidden": test["hidden"],
        "description": test["description"],
        "hint": "",
    }
    expression = (
        "__import__('labkit.course.checks', fromlist=['grade_test'])"
        f".grade_test({json.dumps(spec)!r}, globals())"
    )
    msg_id = kc.execute(
        "", silent=True, store_history=False, user_expressions={"r": expression}, allow_stdin=False
    )
    try:
        reply = await _wait_reply(km, kc, msg_id, timeout)
        recovered = True
        if reply is None:
            recovered = await _recover(km, kc)
    except DeadKernelError:
        return "stuck", {
            **result,
            "status": "error",
            "message": "The kernel stopped during this test.",
        }
    await _drain(kc)
    if reply is None:
        message = f"The test took longer than {timeout:g} s and was stopped."
        return ("ok" if recovered else "stuck"), {**result, "status": "timeout", "message": message}
    value = reply["content"].get("user_expressions", {}).get("r", {})
    if value.get("status") == "ok":
        try:
            data: dict[str, Any] = json.loads(ast.literal_eval(value["data"]["text/plain"]))
            return "ok", data
        except (ValueError, SyntaxError, KeyError):
            pass
    problem = value.get("ename", "an unreadable answer")
    return "ok", {
        **result,
        "status": "error",
        "message": f"The grader could not run this test ({problem}).",
    }


async def _drain(kc: Any) -> None:
    """Throw away output the tests printed (the grader keeps only results)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(kc.get_iopub_msg(timeout=0), 1.0)
        except (queue.Empty, asyncio.TimeoutError):
            return


# -------------------------------------------------------------------- orchestration


def find_key(root: Path, exercise: str) -> Path:
    """The grading key for ``exercise``: its name, or its number (``1`` finds ``01-...``)."""
    folder = root / assign.KEY_DIR
    keys = sorted(folder.glob("*.json"))
    exact = [k for k in keys if k.stem == exercise]
    if exact:
        return exact[0]
    prefixes = {exercise, exercise.zfill(2)}
    matches = [k for k in keys if any(k.stem.startswith(p + s) for p in prefixes for s in "-_")]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(k.stem for k in keys) or f"none (no keys in {folder})"
    if matches:
        raise GradingError(f"--exercise {exercise} matches several: {known}. Use the full name.")
    raise GradingError(
        f"No grading key for exercise {exercise!r}; available: {known}. "
        "Run `labkit assign masters/` first, or pass --master PATH."
    )


def find_submissions(folder: Path) -> list[Submission]:
    """Notebooks in ``folder`` (``NAME.ipynb``) or one per sub-folder (``NAME/any.ipynb``)."""
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder of submissions.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix == ".ipynb":
            found[path.stem] = path
        elif path.is_dir():
            notebooks = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
            if len(notebooks) == 1:
                found[path.name] = notebooks[0]
    return [Submission(learner, path) for learner, path in sorted(found.items())]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def grade(
    submissions: Path,
    exercise: Exercise,
    out: Path,
    *,
    runtime_url: str,
    workers: int = 2,
    timeout: float = 60.0,
    regrade: bool = False,
    sandbox: bool = True,
    memory_mb: int = 4096,
    key_path: Path | None = None,
    master_path: Path | None = None,
    root: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> GradeReport:
    """Grade every notebook in ``submissions`` and write the results into ``out``."""
    if workers < 1:
        raise GradingError("--workers must be at least 1.")
    if sandbox and (sys.platform != "linux" or os.geteuid() != 0):
        raise GradingError(
            "Grading isolates each notebook as an unprivileged user, which needs root on "
            "Linux: run it with sudo, or pass --no-sandbox to grade trusted notebooks."
        )
    found = find_submissions(submissions)
    if not found:
        raise GradingError(f"No notebooks (*.ipynb) in {submissions}.")
    for sub in found:
        sub.sha256 = _sha256(sub.path)
    out.mkdir(parents=True, exist_ok=True)
    if sandbox:
        os.chmod(out, 0o700)  # the gradebook is for the instructor only
    key_bytes = assign._json_bytes(exercise.to_key())
    key_hash = hashlib.sha256(key_bytes).hexdigest()
    state = _load_state(out / "state.json")
    previous = state.get("results", {}) if state.get("key") == key_hash else {}
    todo = to_grade(found, previous, regrade=regrade)
    results = {s.learner: previous[s.learner] for s in found if s not in todo}
    uids: list[int] = []
    seconds = 0.0
    if todo:
        graded, uids, seconds = _grade_all(
            todo,
            exercise,
            submissions,
            out,
            runtime_url=runtime_url,
            workers=workers,
            timeout=timeout,
            sandbox=sandbox,
            memory_mb=memory_mb,
            key_path=key_path,
            master_path=master_path,
            root=root or Path.cwd(),
            progress=progress,
        )
        results.update(graded)
    for sub in found:  # learner code never sees the submissions; make sure of it
        if _sha256(sub.path) != sub.sha256:
            results[sub.learner]["status"] = sorted({*results[sub.learner]["status"], "changed"})
            results[sub.learner]["notes"].append("The file changed while it was being graded.")
    ordered = [results[s.learner] for s in found]
    _write_outputs(out, exercise, ordered, key_hash)
    say(
        f"Graded {len(todo)} notebook(s), reused {len(found) - len(todo)} unchanged; "
        f"results in {out}"
    )
    return GradeReport(exercise, ordered, [s.learner for s in todo], out, uids, seconds)


def to_grade(
    found: list[Submission], previous: dict[str, Any], *, regrade: bool = False
) -> list[Submission]:
    """New or changed notebooks (by content hash), or all of them with ``regrade``."""
    return [s for s in found if regrade or previous.get(s.learner, {}).get("sha256") != s.sha256]


def _remove_abandoned_runs() -> None:
    """Delete scratch folders left by grading runs that were killed (their owner is gone)."""
    for run_dir in SCRATCH_BASE.glob("run-*"):
        try:
            owner = int((run_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _alive(owner):
            continue
        if not owner and time.time() - run_dir.stat().st_mtime < 3600:
            continue  # no owner written yet: maybe a run that is just starting
        shutil.rmtree(run_dir, ignore_errors=True)


def _grade_all(
    todo: list[Submission],
    exercise: Exercise,
    submissions: Path,
    out: Path,
    *,
    runtime_url: str,
    workers: int,
    timeout: float,
    sandbox: bool,
    memory_mb: int,
    key_path: Path | None,
    master_path: Path | None,
    root: Path,
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], list[int], float]:
    workers = min(workers, len(todo))
    SCRATCH_BASE.mkdir(mode=0o711, exist_ok=True)
    _remove_abandoned_runs()
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_BASE))
    os.chmod(run_dir, 0o711)
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    public = assign._json_bytes(exercise.to_public())
    extra = []
    # Files the notebook reads sit next to the master, and next to the generated exercise.
    base = master_path.resolve().parent if master_path else root / assign.LEARNER_DIR
    for rel in exercise.files:
        extra.append((str(base / rel), rel))
    settings = Settings(
        exercise=exercise,
        runtime_url=runtime_url,
        timeout=timeout,
        sandbox=sandbox,
        memory_mb=memory_mb,
        public_tests=public,
        extra_files=extra,
        run_dir=str(run_dir),
    )
    slots = Slots(workers) if sandbox else None
    uids: list[int] = []
    try:
        if sandbox and slots is not None:
            settings.hide = _private_paths(submissions, out, key_path, master_path, root)
            settings.reach = _reachability_covers(_needed_paths())
            users = [_grading_user(2 * n + k) for n in slots.numbers for k in (0, 1)]
            uids = [u for u, _, _ in users]
            _preflight(settings, users[0])
        # Workers fork from a server process that has imported the grader and the kernel's
        # modules once: no worker pays for those imports, and none inherits our threads.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["labkit.grader.grading", *PRELOAD])
        handout: Any = context.Queue()
        for number in slots.numbers if slots else range(workers):
            handout.put(number)
        results: dict[str, dict[str, Any]] = {}
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(settings, handout),
        ) as pool:
            started = time.perf_counter()
            futures = [pool.submit(_grade_in_worker, sub) for sub in todo]
            bar = _progress(len(todo), exercise.name, progress)
            for future in as_completed(futures):
                result = future.result()
                results[result["learner"]] = result
                bar.update(1)
            bar.close()
            seconds = time.perf_counter() - started
        return results, uids, seconds
    finally:
        if uids:
            kill_user_processes(uids)
        if slots is not None:
            slots.release()
        shutil.rmtree(run_dir, ignore_errors=True)


class _NoBar:
    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def _progress(total: int, name: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"grading {name}", unit="notebook")


def _load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------- the outputs


def _scores(exercise: Exercise, result: dict[str, Any]) -> dict[str, float]:
    scores = {q.name: 0.0 for q in exercise.graded_questions}
    for test in result["tests"]:
        if test["question"] in scores:
            scores[test["question"]] += float(test.get("earned", 0.0))
    return {q: round(v, 4) for q, v in scores.items()}


def _write_outputs(
    out: Path, exercise: Exercise, results: list[dict[str, Any]], key_hash: str
) -> None:
    questions = [q.name for q in exercise.graded_questions]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["learner", *questions, "total", "possible", "status", "notes"])
    for result in results:
        scores = _scores(exercise, result)
        result["scores"], result["total"] = scores, round(sum(scores.values()), 4)
        status = ", ".join(result["status"]) or "ok"
        writer.writerow(
            [
                result["learner"],
                *(f"{scores[q]:g}" for q in questions),
                f"{result['total']:g}",
                f"{exercise.possible:g}",
                status,
                " | ".join(result["notes"]),
            ]
        )
    write_atomic(out / "gradebook.csv", table.getvalue().encode("utf-8"))
    for result in results:
        write_atomic(
            out / "feedback" / f"{result['learner']}.md", feedback(exercise, result).encode("utf-8")
        )
        if result.get("executed"):
            write_atomic(
                out / "executed" / f"{result['learner']}.ipynb", result["executed"].encode("utf-8")
            )
    rates = pass_rates(exercise, results)
    rate_table = io.StringIO()
    writer = csv.writer(rate_table, lineterminator="\n")
    writer.writerow(["test", "question", "hidden", "description", "passed", "graded", "rate"])
    for row in rates:
        writer.writerow(
            [
                row["test"],
                row["question"],
                row["hidden"],
                row["description"],
                row["passed"],
                row["graded"],
                f"{row['rate']:.3f}",
            ]
        )
    write_atomic(out / "pass_rates.csv", rate_table.getvalue().encode("utf-8"))
    write_atomic(out / "pass_rates.png", _plot(exercise, rates))
    kept = {r["learner"]: {k: v for k, v in r.items() if k != "executed"} for r in results}
    write_atomic(out / "state.json", assign._json_bytes({"key": key_hash, "results": kept}))


def pass_rates(exercise: Exercise, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each test: how many learners passed it, out of everyone graded."""
    rows = []
    for q in exercise.graded_questions:
        for t in q.tests:
            passed = sum(
                1
                for r in results
                for x in r["tests"]
                if x["name"] == t.name and x["status"] == "passed"
            )
            graded = len(results)
            rows.append(
                {
                    "test": t.name,
                    "question": q.name,
                    "hidden": t.hidden,
                    "description": t.description,
                    "passed": passed,
                    "graded": graded,
                    "rate": passed / graded if graded else 0.0,
                }
            )
    return rows


def _plot(exercise: Exercise, rates: list[dict[str, Any]]) -> bytes:
    """A bar per test: the share of the class that passed it (hidden tests hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["test"] + (" (hidden)" if r["hidden"] else "") for r in rates]
    values = [100 * r["rate"] for r in rates]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rates) + 1.5))
    bars = ax.barh(labels, values, color=["#8da0cb" if r["hidden"] else "#66c2a5" for r in rates])
    for bar, r in zip(bars, rates, strict=True):
        if r["hidden"]:
            bar.set_hatch("//")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("learners who passed (%)")
    ax.set_title(
        f"{exercise.name}: pass rate per test ({rates[0]['graded'] if rates else 0} notebooks)"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


_ICONS = {"passed": "✅", "not-implemented": "🚧", "timeout": "⏱️"}


def feedback(exercise: Exercise, result: dict[str, Any]) -> str:
    """A learner's feedback in Markdown: score, each test's outcome, what happened."""
    scores = _scores(exercise, result)
    status = ", ".join(result["status"]) or "ok"
    lines = [
        f"# {exercise.name}: feedback for {result['learner']}",
        "",
        f"**Score: {sum(scores.values()):g} / {exercise.possible:g}** · status: {status}",
        "",
    ]
    for q in exercise.graded_questions:
        lines += [f"## {q.name}: {scores[q.name]:g} / {q.points:g} points", ""]
        for test in (t for t in result["tests"] if t["question"] == q.name):
            icon = _ICONS.get(test["status"], "❌")
            label = test["name"] + (" (hidden test)" if test["hidden"] else "")
            about = f": {test['description']}" if test.get("description") else ""
            worth = f" ({float(test.get('earned', 0)):g}/{float(test['points']):g})"
            lines.append(f"- {icon} {label}{about}{worth}")
            if test["status"] != "passed" and test.get("message"):
                lines.append(f"  - {test['message']}")
            if test["status"] != "passed" and test.get("hint"):
                lines.append(f"  - Hint: {test['hint']}")
        lines.append("")
    if result["notes"]:
        lines += ["## What happened when your notebook ran", ""]
        lines += [f"- {note}" for note in result["notes"]]
        lines.append("")
    manual = [q.name for q in exercise.questions if q.manual]
    if manual:
        lines += [f"Questions graded by a person ({', '.join(manual)}) are not in this score.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: Any) -> None:
    """The options of ``labkit grade``."""
    parser.add_argument("submissions", help="folder of submitted notebooks (NAME.ipynb or NAME/)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--exercise", help="exercise name or number (its key in grading/hidden/)")
    which.add_argument("--master", help="grade against this master notebook directly")
    parser.add_argument("--root", default=".", help="course folder with grading/ (default: .)")
    parser.add_argument("--out", help="results folder (default: SUBMISSIONS-grades next to it)")
    parser.add_argument("--workers", type=int, default=2, help="parallel kernels (default 2)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per cell and per test (default 60)"
    )
    parser.add_argument("--regrade", action="store_true", help="grade unchanged notebooks too")
    parser.add_argument(
        "--memory-mb", type=int, default=4096, help="memory limit per kernel (default 4096)"
    )
    parser.add_argument("--runtime", help="model runtime URL for the kernels (default: found)")
    parser.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run kernels as yourself, without isolation (trusted notebooks only)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli(args: Any) -> int:
    """Run ``labkit grade`` with parsed arguments."""
    from labkit import discovery

    root = Path(args.root)
    submissions = Path(args.submissions).resolve()
    key_path = master_path = None
    if args.master:
        master_path = Path(args.master)
        exercise = assign.parse_master(master_path).exercise
    else:
        key_path = find_key(root, args.exercise)
        exercise = assign.load_key(key_path)
    out = Path(args.out) if args.out else submissions.with_name(submissions.name + "-grades")
    url = args.runtime or discovery.find_runtime(start=True).url
    report = grade(
        submissions,
        exercise,
        out,
        runtime_url=url,
        workers=args.workers,
        timeout=args.timeout,
        regrade=args.regrade,
        sandbox=not args.no_sandbox,
        memory_mb=args.memory_mb,
        key_path=key_path,
        master_path=master_path,
        root=root,
        progress=not args.quiet,
    )
    totals = [r["total"] for r in report.results]
    print(
        f"{exercise.name}: {len(totals)} learners, mean {sum(totals) / len(totals):.2f} "
        f"of {exercise.possible:g}; see {out / 'gradebook.csv'} and {out / 'feedback'}/"
    )
    return 0
