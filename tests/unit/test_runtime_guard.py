"""The runtime's guards and launcher pieces that need no running runtime."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.runtime import guard, launcher
from labkit.runtime.common import ApiError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("http://localhost:8888", True),
        ("https://127.0.0.1:443", True),
        ("http://[::1]:8888", True),
        ("vscode-webview://abc", True),
        ("http://localhost.evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("http://evil.example", False),
        ("null", False),
        ("http://[::2]", False),  # "[::1]" is no character class
        ("http://:", False),
    ],
)
def test_default_origins_are_this_machines_pages(
    origin: str, allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in guard.ORIGINS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert guard.allowed_origin(origin) is allowed


@pytest.mark.parametrize("variable", guard.ORIGINS_VARIABLES)
def test_more_origins_come_from_the_environment(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in guard.ORIGINS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not guard.allowed_origin("https://notebooks.example.org")
    monkeypatch.setenv(variable, " https://notebooks.example.org , https://*.example.com")
    assert guard.allowed_origin("https://notebooks.example.org")
    assert guard.allowed_origin("https://a.example.com")
    assert not guard.allowed_origin("https://a.example.com.evil.example:1")
    assert not guard.allowed_origin("http://notebooks.example.org")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:11434", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("[::1]:11434", True),
        ("127.1.2.3", True),
        ("app.localhost", True),
        ("", True),  # HTTP/1.0 clients send none
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("10.0.0.1", True),  # this machine's address on its network: no name to rebind
        ("0.0.0.0:11434", True),
        ("8.8.8.8", False),
        ("[2001:4860::8888]:80", False),
    ],
)
def test_loopback_host_names_only(host: str, allowed: bool) -> None:
    assert guard.allowed_host(host) is allowed


def test_schema_cost_limits() -> None:
    guard.check_schema_cost({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}})
    with pytest.raises(ApiError, match="too large") as large:
        guard.check_schema_cost({"enum": ["v" * 100] * 200})
    assert large.value.status == 400
    with pytest.raises(ApiError, match="choices"):
        guard.check_schema_cost({"anyOf": [{"const": n} for n in range(300)]})
    deep: dict[str, object] = {"type": "string"}
    for _ in range(guard.MAX_SCHEMA_DEPTH):
        deep = {"items": deep}
    with pytest.raises(ApiError, match="nested"):
        guard.check_schema_cost(deep)
    with pytest.raises(ApiError, match="grammar is too large"):
        guard.check_schema_cost("root ::= " + '"a" | ' * 5000, "grammar")


def test_a_port_in_time_wait_is_free_again() -> None:
    """After a crash, the port's last connections wait in TIME_WAIT: ``up --port`` may reuse it."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the runtime's own
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: it is the one left in TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the condition is real: a plain bind fails
    assert launcher.port_free(port)


def test_a_port_with_a_listener_is_still_busy() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert not launcher.port_free(server.getsockname()[1])


def test_ci_script_stops_only_the_nginx_it_started() -> None:
    script = (ROOT / ".ci/system-deps.sh").read_text()
    assert "pkill" not in script and "killall" not in script


def test_the_command_line_loads_nothing_heavy() -> None:
    code = (
        "import sys, labkit.cli; labkit.cli.build_parser('up'); "
        "print(sorted(m for m in ('aiohttp', 'labkit.grader', 'ipywidgets', 'xllamacpp') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_body_that_trickles_gets_408_and_a_huge_one_413(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends part of its body and waits holds a connection only so long."""
    import asyncio

    from aiohttp import web

    from labkit.runtime import common

    monkeypatch.setattr(common, "BODY_READ_SECONDS", 0.5)

    async def echo(request: web.Request) -> web.Response:
        try:
            await common.read_object(request)
        except ApiError as exc:
            return common.error(exc.status, exc.message)
        return web.Response(text="ok")

    async def scenario() -> tuple[bytes, bytes]:
        app = web.Application(client_max_size=1000)
        app.router.add_post("/", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            answers = []
            for head, body in (
                (b"Content-Length: 100", b'{"model": '),
                (b"Transfer-Encoding: chunked", b"7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n"),
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n\r\n" + body)
                await writer.drain()
                answers.append(await asyncio.wait_for(reader.read(4096), timeout=10))
                writer.close()
            return answers[0], answers[1]
        finally:
            await runner.cleanup()

    slow, huge = asyncio.run(scenario())
    assert slow.startswith(b"HTTP/1.1 408") and b'"error"' in slow
    assert huge.startswith(b"HTTP/1.1 413") and b"1000 bytes" in huge
