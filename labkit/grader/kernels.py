"""Kernels: a zygote forks each one in milliseconds; a worker keeps the next one ready."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labkit.grader.network import forward_into
from labkit.grader.sandbox import (
    Cgroups,
    box_covers,
    box_limits,
    cgroups,
    enter_sandbox,
    kernel_env,
    temp_folders,
)
from labkit.grader.settings import GradingError, Settings
from labkit.grader.users import kill_user_processes

__all__ = [
    "FLOOD_BYTES",
    "KEEP_BYTES",
    "PRELOAD",
    "START_ERROR",
    "Kernel",
    "Worker",
    "kernel_classes",
    "pid_alive",
]


FLOOD_BYTES = 1_000_000  # output of one cell that counts as a flood (not kept, not re-run)


KEEP_BYTES = 2_000_000  # output kept per notebook in executed/


START_ERROR = "kernel-start-error.txt"  # written in the scratch folder if a kernel cannot start


_CLONE_NEWNS, _MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE, _MNT_DETACH = (
    0x00020000,
    2,
    4,
    16384,
    1 << 18,
    2,
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

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped at once: no zombies
    # A box's init whose keeper was killed first comes back here to be reaped, not to a
    # pid 1 of the machine that might never reap it.
    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    with os.fdopen(requests, "r") as incoming, os.fdopen(answers, "w") as outgoing:
        while line := incoming.readline():
            request = json.loads(line)
            # A sandboxed kernel's first process stays outside its box and tells the pid
            # of the box's init (whose process group the kernel is in) through this pipe.
            report = os.pipe() if request["sandbox"] else None
            pid = os.fork()
            if pid == 0:
                if report is not None:
                    os.close(report[0])
                    request["sandbox"]["report_fd"] = report[1]
                _become_kernel(request)
            if report is not None:
                os.close(report[1])
                with os.fdopen(report[0]) as told:
                    box = told.readline().strip()
                pid = int(box) if box.isdigit() else pid  # nothing told: it failed, pid dies
            outgoing.write(json.dumps({"pid": pid}) + "\n")
            outgoing.flush()


def _become_kernel(request: dict[str, Any]) -> None:
    """In the forked child: enter the sandbox, take the notebook's environment, run ipykernel."""

    code = 0
    try:
        _die_with_parent()
        os.setsid()  # its own process group, so an interrupt reaches it and its children
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = (request["sandbox"] or {}).get("report_fd")
        for low, high in ((3, keep), (keep + 1, 1024)) if keep else ((3, 1024),):
            os.closerange(low, high)  # nothing of the grader's stays open in the kernel
        if request["sandbox"]:
            enter_sandbox(request["sandbox"])  # returns in the box; the rest stay outside
        else:
            os.chdir(request["cwd"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
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


def _die_with_parent() -> None:
    """Be killed when the parent goes: a killed worker takes its starter, keepers and boxes."""
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it went before the line above: nothing would tell us
        os._exit(70)


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
                _die_with_parent()
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
        if self.returncode is None and not pid_alive(self.pid):
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


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
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


def kernel_classes() -> tuple[type[Any], type[Any]]:
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
class Kernel:
    """A started kernel and the scratch folder it lives in."""

    km: Any
    scratch: Path
    uid: int
    gid: int
    box_pid: int = 0  # host pid of a process in its box (namespaces to join), while it runs
    box: Path | None = None  # the folder of its scratch disk (a tmpfs when sandboxed)
    cgroups: list[str] = field(default_factory=list)  # its memory and task caps, if any
    forwarder: Any = None  # the server that pipes its runtime port out of its network
    embed_forwarder: Any = None  # the same for $LABKIT_EMBED_URL's server, when one is set


class Worker:
    """One grading process: its users, its event loop and the kernel it started in advance."""

    def __init__(self, settings: Settings, users: list[tuple[int, int, str]]) -> None:
        import zmq.asyncio

        self.settings = settings
        self.users = users
        self.turn = 0
        self.boxes = 0
        self.cgroups = cgroups() if settings.options.sandbox else Cgroups("")
        if self.cgroups.version:  # boxes a killed run of these users left behind
            self.cgroups.sweep(f"{name}." for _, _, name in users)
        # Scratch disks are mounted in a mount namespace of this worker's (made while it
        # has one thread, as unshare requires), so they vanish with it however it ends.
        self.own_mounts = settings.options.sandbox and _own_mount_namespace()
        self.zygote = _Zygote()  # first: before the event loop and zmq start threads
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.context = zmq.asyncio.Context()
        self.next: asyncio.Task[Kernel] | None = None

    def user(self) -> tuple[int, int, str]:
        """The next grading user in turn."""
        self.turn += 1
        return self.users[self.turn % len(self.users)]

    async def start_kernel(self, user: tuple[int, int, str]) -> Kernel:
        """Fork a kernel for ``user`` in a new box with an empty scratch disk (no waiting)."""
        from jupyter_client.manager import AsyncKernelManager

        provisioner_class, _ = kernel_classes()
        settings = self.settings
        uid, gid, name = user
        box = Path(tempfile.mkdtemp(prefix="box-", dir=settings.run_dir))
        scratch = box / "scratch"
        groups: list[str] = []
        try:
            if settings.options.sandbox:
                _mount_scratch_disk(box, settings.options.disk_mb)
                self.boxes += 1
                if self.cgroups.version:
                    groups = self.cgroups.create(
                        f"{name}.{os.getpid()}.{self.boxes}", settings.options.memory_mb
                    )
            scratch.mkdir()
            km = AsyncKernelManager(
                transport="ipc",  # sockets are files in the scratch folder: no one else connects
                connection_file=str(scratch / "kernel.json"),
                context=self.context,
                kernel_name="python3",
            )
            km.kernel_id = box.name
            provisioner = provisioner_class(
                kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km
            )
            provisioner.zygote = self.zygote
            km.provisioner = provisioner
            if settings.options.sandbox:
                os.chown(scratch, uid, gid)
                os.chmod(scratch, 0o700)
                temp_folders(box / "temp")
                provisioner.sandbox = {
                    "uid": uid,
                    "gid": gid,
                    "cwd": str(scratch),
                    "covers": box_covers(settings, scratch, box / "temp"),
                    "chown": [str(scratch / "kernel.json")],
                    "limits": box_limits(settings, bool(groups)),
                    "network": settings.options.kernel_network,
                    "cgroups": groups,
                }
            await km.start_kernel(cwd=str(scratch), env=kernel_env(settings, scratch, name))
        except BaseException:
            self.cgroups.remove(groups)
            _remove_box(box)
            raise
        # Sandboxed, the pid is the box's init: the kernel's parent and process group.
        kernel = Kernel(km, scratch, uid, gid, provisioner.pid, box, groups)
        if settings.options.sandbox and settings.options.kernel_network == "runtime":
            try:
                port = urlsplit(settings.runtime_url).port or 80
                pid = provisioner.pid
                kernel.forwarder = await forward_into(pid, port, settings.forward_to)
                if embed := _embed_target():
                    kernel.embed_forwarder = await forward_into(pid, embed[1], embed)
            except BaseException:
                await self.stop_kernel(kernel)
                raise
        return kernel

    async def take_kernel(self) -> Kernel:
        """The kernel started in advance (or a new one), and start the next in advance."""
        kernel = await self.next if self.next else await self.start_kernel(self.user())
        self.next = self.loop.create_task(self.start_kernel(self.user()))
        return kernel

    async def stop_kernel(self, kernel: Kernel) -> None:
        """Stop a kernel, kill whatever its user left running, delete its scratch folder.

        No polite shutdown: the notebook is done, and asking a kernel to exit (then polling
        until it has) costs more than the rest of a small notebook's grading.
        """
        _kill_group(kernel.km)  # sandboxed: the box's init, and with it the whole box
        if kernel.forwarder is not None:
            await kernel.forwarder.close()
        if kernel.embed_forwarder is not None:
            await kernel.embed_forwarder.close()
        if self.settings.options.sandbox:
            # Waits until no process of the box is left (its cgroup is empty), then the
            # user's processes anywhere: what the box holds can no longer outlive it.
            self.cgroups.remove(kernel.cgroups)
            kill_user_processes([kernel.uid])
        else:
            # Without the sandbox nothing holds a box's processes together: a notebook that
            # started the kit's runtime (exercise 1 does when no runtime answers in Ollama's
            # dialect) left a daemon in a session of its own, which would outlive the run.
            from labkit import runtime

            home = kernel.scratch / ".labkit"
            await asyncio.to_thread(runtime.down, state_dir=home, say=False)
        with contextlib.suppress(Exception):
            await kernel.km.cleanup_resources()
        _remove_box(kernel.box or kernel.scratch)

    def close(self) -> None:
        """Stop the kernel started in advance."""
        if self.next is not None:
            with contextlib.suppress(Exception):
                kernel = self.loop.run_until_complete(self.next)
                self.loop.run_until_complete(self.stop_kernel(kernel))
        if self.settings.options.sandbox:
            kill_user_processes(u for u, _, _ in self.users)
        self.zygote.close()


def _own_mount_namespace() -> bool:
    """Give this process a private mount namespace; False if it cannot (e.g. has threads)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    # Mounts made here from now on stay here (and are not shared with the machine's).
    return bool(libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) == 0)


def _mount_scratch_disk(box: Path, size_mb: int) -> None:
    """Mount a tmpfs of ``size_mb`` on ``box``: all a kernel can write, in one capped place."""
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={size_mb}m,mode=711".encode()
    flags = ctypes.c_ulong(_MS_NOSUID | _MS_NODEV)
    if libc.mount(b"tmpfs", str(box).encode(), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        raise GradingError(f"Could not mount a scratch disk on {box}: {os.strerror(err)}.")


def _remove_box(box: Path) -> None:
    """Delete a kernel's scratch disk: its files first (their memory), then the mount."""
    shutil.rmtree(box, ignore_errors=True)
    if box.is_mount():
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(str(box).encode(), _MNT_DETACH)
        shutil.rmtree(box, ignore_errors=True)


def _kill_group(km: Any) -> None:
    """Kill the kernel's process group (children that left the group are not in it)."""
    pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
    if pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, 9)


def _embed_target() -> tuple[str, int] | None:
    """``$LABKIT_EMBED_URL``'s host and port: a second server the kernel must reach, if any."""
    url = urlsplit(os.environ.get("LABKIT_EMBED_URL", ""))
    if not url.hostname:
        return None
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)
