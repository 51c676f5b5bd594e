"""A kernel's network: its own loopback, where only the runtime's port leads anywhere.

The kernel unshares its network namespace as it starts, so it has nothing but a loopback
interface (down). The worker then steps one short-lived thread into that namespace, brings
loopback up and opens a listening socket on the runtime's port; a socket stays in the
namespace it was made in, so the worker's event loop can accept the kernel's connections
there and pipe each one to the runtime (or the grader's reply cache) out here.

Out here, each kernel's connections to the reply cache come from a loopback address of its
own (``kernel_address``), which is how the cache tells kernels apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import threading
import time
from typing import Any

from labkit.grader.settings import GradingError

__all__ = ["Forwarder", "forward_into", "kernel_address", "pipe_to"]

_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_RUNNING = 0x1, 0x40


class Forwarder:
    """A kernel's listening socket and the connections it is piping; ``close()`` ends all."""

    def __init__(self, target: tuple[str, int], source: str | None = None) -> None:
        self.target = target
        self.source = source  # the address connections to the target come from, if set
        self.server: asyncio.AbstractServer | None = None
        self.pipes: set[asyncio.Task[Any]] = set()  # held here, so none is lost half-way

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe one connection of the kernel's to the target."""
        task = asyncio.current_task()
        if task is not None:
            self.pipes.add(task)
        try:
            await pipe_to(self.target, reader, writer, self.source)
        except asyncio.CancelledError:
            # The kernel's notebook is done and its connections with it: end quietly
            # (asyncio would log a cancelled connection handler as an error).
            writer.close()
        finally:
            self.pipes.discard(task)

    async def close(self) -> None:
        """Stop listening and end every connection still open (the kernel is gone)."""
        if self.server is not None:
            self.server.close()
        pipes = list(self.pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def forward_into(pid: int, port: int, target: tuple[str, int]) -> Forwarder:
    """Listen on 127.0.0.1:``port`` inside kernel ``pid``'s network; pipe to ``target``."""
    namespace = f"/proc/{pid}/ns/net"
    own = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 30
    while True:  # the kernel unshares its network within milliseconds of being forked
        try:
            if os.stat(namespace).st_ino != own:
                break
        except FileNotFoundError:
            raise GradingError("the kernel stopped before its network was set up") from None
        if time.monotonic() > deadline:
            raise GradingError("the kernel did not get a network of its own in 30 s")
        await asyncio.sleep(0.002)
    loop = asyncio.get_running_loop()
    made: asyncio.Future[socket.socket] = loop.create_future()

    def inside() -> None:
        try:
            sock = _listen_inside(namespace, port)
        except BaseException as exc:  # handed to the waiting coroutine
            loop.call_soon_threadsafe(made.set_exception, exc)
        else:
            loop.call_soon_threadsafe(made.set_result, sock)

    # A thread of its own, thrown away after: a thread that entered the kernel's
    # namespace must never be reused for anything else.
    threading.Thread(target=inside, name="labkit-netns", daemon=True).start()
    try:
        sock = await made
    except OSError as exc:
        raise GradingError(f"could not give the kernel its runtime port ({exc})") from exc
    forwarder = Forwarder(target, kernel_address(pid) if target[0].startswith("127.") else None)
    forwarder.server = await asyncio.start_server(forwarder.handle, sock=sock)
    return forwarder


def _listen_inside(namespace: str, port: int) -> socket.socket:
    """In this thread: enter ``namespace``, bring loopback up, listen on ``port``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(namespace, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_RUNNING)
        fcntl.ioctl(probe.fileno(), _SIOCSIFFLAGS, request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def kernel_address(pid: int) -> str:
    """A loopback address for kernel ``pid``'s connections, in 127.128.0.0/9 (never 127.0.0.1)."""
    number = 0x800000 + (pid & 0x7FFFFF)  # pids stay below 2**22
    return f"127.{number >> 16}.{(number >> 8) & 0xFF}.{number & 0xFF}"


async def pipe_to(
    target: tuple[str, int],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    source: str | None = None,
) -> None:
    """Copy one connection both ways to ``target`` (from ``source``) until both are done."""
    try:
        up_reader, up_writer = await asyncio.open_connection(
            *target, local_addr=(source, 0) if source else None
        )
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on: the other side may still answer
    except (OSError, asyncio.IncompleteReadError):
        with contextlib.suppress(Exception):
            writer.close()
