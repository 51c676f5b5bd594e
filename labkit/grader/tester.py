"""The tester: a process of its own that runs an exercise's tests against a notebook's kernel.

The grader starts one per notebook, beside (never inside) the learner's kernel: it sees the
same files and the same 127.0.0.1 as the kernel, runs as another user, and the learner's
code cannot reach it. Tests come in on standard input, one JSON line each; every name a test
reads from the notebook is looked up across the boundary (``labkit.grader.remote``), so the
test code itself never enters the kernel. Messages, one JSON line each way:

- grader → tester: ``{"op": "test", "spec": …}`` or ``{"op": "exit"}``;
- tester → grader: ``{"op": "ready"}`` once, when it has started; then per test
  ``{"op": "kernel", "request": …}`` (answered by ``{"op": "reply",
  "answer": "…"}`` or ``{"op": "reply", "timeout": true}``), then ``{"op": "result", …}``.

Run as ``python -I -m labkit.grader.tester``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import asdict
from typing import IO, Any

__all__ = ["main", "names_read"]


class _StopTest(KeyboardInterrupt):
    """The grader stopped a call that took too long (reported as the test's timeout)."""


def names_read(code: str) -> set[str]:
    """The names a test reads that the notebook may define (and no name the test binds).

    Only these go to the kernel: a hidden test's own variable names stay here, like its
    code. A function test's parameters are filled from the notebook by name, so they go too.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    loaded: set[str] = set()
    bound: set[str] = set()
    parameters: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            parameters |= {a.arg for a in node.args.args + node.args.kwonlyargs}
    return {n for n in (loaded - bound) | parameters if not hasattr(builtins, n)}


def _open_mkdtemp(
    suffix: str | None = None, prefix: str | None = None, dir: str | None = None
) -> str:
    """``tempfile.mkdtemp`` whose folder the learner's code (another user) may write in.

    A test makes a folder, then asks the learner's function to write a log file in it.
    """
    path = _MKDTEMP(suffix, prefix, dir)
    os.chmod(path, 0o777)
    return path


_MKDTEMP = tempfile.mkdtemp


class _Channel:
    """The grader at the other end of standard input and output."""

    def __init__(self, incoming: IO[str], outgoing: IO[str]) -> None:
        self.incoming = incoming
        self.outgoing = outgoing

    def send(self, message: dict[str, Any]) -> None:
        self.outgoing.write(json.dumps(message) + "\n")
        self.outgoing.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.incoming.readline()
        return json.loads(line) if line else None

    def ask_kernel(self, request: dict[str, Any]) -> str:
        """Send one request to the kernel through the grader; its answer."""
        self.send({"op": "kernel", "request": request})
        reply = self.receive()
        if reply is None:
            raise SystemExit(0)  # the grader went away: nothing more to do
        if reply.get("timeout"):
            raise _StopTest
        if "error" in reply:
            from labkit.grader.remote import RemoteError

            raise RemoteError(str(reply["error"]))
        return str(reply.get("answer", ""))


def _run(spec: dict[str, Any], channel: _Channel) -> dict[str, Any]:
    """Run one test against the notebook across the boundary; its result as a dict."""
    from labkit.course.checks import run_test
    from labkit.grader.remote import Boundary

    boundary = Boundary(channel.ask_kernel)
    test = spec["test"]
    placeholders = list(spec.get("placeholders") or [])
    names = sorted(names_read(str(test["code"])) | set(placeholders))
    boundary.adopt_environment()
    scope = boundary.lookup(names) if names else {}
    result = run_test(
        test, scope, question=spec["question"], placeholders=placeholders, grading=True
    )
    return asdict(result)


def main() -> None:
    """Serve tests until the grader says exit or closes the pipe."""
    # Our protocol gets its own copy of standard output; what tests print goes nowhere.
    outgoing = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    os.umask(0)  # files a test makes are the learner's to write (another user)
    tempfile.mkdtemp = _open_mkdtemp  # type: ignore[assignment]
    channel = _Channel(sys.stdin, outgoing)
    # Loaded now, while the notebook's cells run, rather than during the first test.
    import labkit.course.checks
    import labkit.grader.remote

    with contextlib.suppress(ImportError):
        import labkit.faults  # noqa: F401 - most tests of the course use it
    channel.send({"op": "ready"})  # a test's time starts now, not while Python starts
    while (message := channel.receive()) is not None:
        if message.get("op") != "test":
            break
        try:
            result = _run(message["spec"], channel)
        except _StopTest:
            result = {"status": "timeout"}
        except Exception as exc:  # the tester's own failure: the grader reports an error
            result = {"status": "error", "message": f"{type(exc).__name__}: {exc}"[:300]}
        channel.send({"op": "result", "result": result})


if __name__ == "__main__":
    main()
