"""The runtime as a hostile user meets it: costly schemas, web pages, bad numbers, big bodies,
half-sent requests, clients that leave, damaged records, and launchers that die.

Every test drives the real runtime on loopback with bounded loops and bounded waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from labkit import runtime
from labkit.runtime import guard, server

CHAT = runtime.CHAT_MODEL
EMBED = runtime.EMBED_MODEL
HELLO = [{"role": "user", "content": "Say hello to Ada."}]
ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def _wait(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _enum_schema(count: int, width: int = 8) -> dict[str, Any]:
    """An object with one string from ``count`` random-looking values (no shared prefixes)."""
    values = [hashlib.sha1(str(n).encode()).hexdigest()[:width] for n in range(count)]
    return {"type": "object", "properties": {"v": {"type": "string", "enum": values}}}


def _ollama_error(answer: requests.Response, status: int) -> str:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def _openai_error(answer: requests.Response, status: int) -> str:
    assert answer.status_code == status, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" if status == 400 else error["type"]
    return str(error["message"])


# --- 1. A costly schema is refused; the worst allowed one does not stall others ------------


@pytest.mark.parametrize("count", [5000, 20000])
def test_a_huge_enum_schema_is_refused_at_once_in_both_dialects(
    embedded: runtime.RuntimeRecord, count: int
) -> None:
    schema = _enum_schema(count)
    started = time.monotonic()
    chat = {"model": CHAT, "messages": HELLO, "format": schema, "stream": False}
    message = _ollama_error(requests.post(embedded.url + "/api/chat", json=chat, timeout=30), 400)
    assert "too large" in message and "limit" in message
    generate = {"model": CHAT, "prompt": "Pick one.", "format": schema, "stream": False}
    _ollama_error(requests.post(embedded.url + "/api/generate", json=generate, timeout=30), 400)
    openai = {
        "model": CHAT,
        "messages": HELLO,
        "response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}},
    }
    answer = requests.post(embedded.url + "/v1/chat/completions", json=openai, timeout=30)
    assert "too large" in _openai_error(answer, 400)
    grammar = {"model": CHAT, "prompt": "x", "grammar": "root ::= " + " | ".join(['"a"'] * count)}
    answer = requests.post(embedded.url + "/v1/completions", json=grammar, timeout=30)
    assert "grammar is too large" in _openai_error(answer, 400)
    assert time.monotonic() - started < 10, "refusing must not compile the schema first"


def test_many_small_choices_and_deep_schemas_are_refused(embedded: runtime.RuntimeRecord) -> None:
    many = _enum_schema(guard.MAX_SCHEMA_CHOICES + 1, width=2)  # small in bytes, many choices
    assert len(json.dumps(many)) < guard.MAX_SCHEMA_BYTES
    body = {"model": CHAT, "messages": HELLO, "format": many, "stream": False}
    answer = requests.post(embedded.url + "/api/chat", json=body, timeout=30)
    assert "choices" in _ollama_error(answer, 400)
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(guard.MAX_SCHEMA_DEPTH):
        deep = {"type": "array", "items": deep}
    body["format"] = deep
    answer = requests.post(embedded.url + "/api/chat", json=body, timeout=30)
    assert "nested" in _ollama_error(answer, 400)


def test_the_worst_allowed_schema_does_not_hold_a_plain_chat_back(
    embedded: runtime.RuntimeRecord,
) -> None:
    worst = _enum_schema(guard.MAX_SCHEMA_CHOICES)
    assert len(json.dumps(worst)) <= guard.MAX_SCHEMA_BYTES
    heavy = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Pick a value."}],
        "format": worst,
        "stream": False,
        "options": {"temperature": 0, "seed": 1, "num_predict": 40},
    }
    plain = {
        "model": CHAT,
        "messages": HELLO,
        "stream": False,
        "options": {"temperature": 0, "seed": 1, "num_predict": 16},
    }
    results: list[requests.Response] = []
    heavy_runs = [
        threading.Thread(
            target=lambda: results.append(
                requests.post(embedded.url + "/api/chat", json=heavy, timeout=120)
            )
        )
        for _ in range(2)
    ]
    for thread in heavy_runs:
        thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    answer = requests.post(embedded.url + "/api/chat", json=plain, timeout=120)
    beside = time.monotonic() - started
    for thread in heavy_runs:
        thread.join(timeout=120)
    assert answer.status_code == 200
    assert [r.status_code for r in results] == [200, 200]
    value = json.loads(results[0].json()["message"]["content"]).get("v")
    assert value is None or value in worst["properties"]["v"]["enum"]
    # Before the limit, a 5,000-value enum held a plain chat back for 25 s.
    assert beside < 10, f"a plain chat took {beside:.1f} s beside the worst allowed schema"


# --- 2. Web pages stay out; llama.cpp answers only the front --------------------------------


def test_a_foreign_page_cannot_drive_the_runtime(embedded: runtime.RuntimeRecord) -> None:
    body = json.dumps({"model": CHAT, "messages": HELLO, "stream": False})
    # A "simple" cross-origin request: a browser sends it without asking first.
    headers = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    answer = requests.post(embedded.url + "/api/chat", data=body, headers=headers, timeout=30)
    assert "LABKIT_ORIGINS" in _ollama_error(answer, 403)
    assert "Access-Control-Allow-Origin" not in answer.headers
    preflight = requests.options(
        embedded.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11434", "localhost.evil.example"])
def test_a_foreign_host_name_is_refused_against_dns_rebinding(
    embedded: runtime.RuntimeRecord, host: str
) -> None:
    answer = requests.get(embedded.url + "/api/tags", headers={"Host": host}, timeout=30)
    assert "localhost" in _ollama_error(answer, 403)


@pytest.mark.parametrize(
    "origin", ["http://localhost:8888", "http://127.0.0.1:8888", "http://[::1]", "app://x"]
)
def test_local_pages_are_served_with_cors(embedded: runtime.RuntimeRecord, origin: str) -> None:
    preflight = requests.options(
        embedded.url + "/api/chat",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    answer = requests.get(embedded.url + "/api/version", headers={"Origin": origin}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("which", ["llama_url", "embed_url"])
def test_llama_cpp_answers_only_the_front(embedded: runtime.RuntimeRecord, which: str) -> None:
    url = getattr(embedded, which)
    for path, body in (("/tokenize", {"content": "hi"}), ("/completion", {"prompt": "hi"})):
        answer = requests.post(url + path, json=body, timeout=30)
        assert answer.status_code == 401, (path, answer.text[:200])
        assert "Invalid API Key" in answer.text
    slots = requests.get(url + "/slots", timeout=30)
    assert slots.status_code == 401
    page = requests.get(url + "/health", headers={"Origin": "http://evil.example"}, timeout=30)
    assert page.headers.get("Access-Control-Allow-Origin", "") in ("",)
    assert page.headers.get("Access-Control-Allow-Credentials") != "true"
    keyed = requests.post(
        url + "/tokenize", json={"content": "hi"}, headers=embedded.llama_headers, timeout=30
    )
    assert keyed.status_code == 200
    assert oct(runtime.record_path().stat().st_mode & 0o777) == "0o600"


# --- 6. A client that leaves stops its work --------------------------------------------------


def _slots(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = requests.get(url + "/slots", headers=headers, timeout=10)
    answer.raise_for_status()
    slots: list[dict[str, Any]] = answer.json()
    return slots


def _send_and_leave(port: int, path: str, body: dict[str, Any], wait: Callable[[], bool]) -> None:
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n" + data)
        assert _wait(wait, timeout=30), "the work never started"


def test_non_streamed_openai_chat_stops_when_the_client_leaves(
    embedded: runtime.RuntimeRecord,
) -> None:
    n_predict = 1781  # an unusual number marks our request among others

    def ours() -> dict[str, Any] | None:
        for slot in _slots(embedded.llama_url, embedded.llama_headers):
            progress = (slot.get("next_token") or [{}])[0]
            total = progress.get("n_remain", 0) + progress.get("n_decoded", 0)
            if slot.get("is_processing") and total == n_predict:
                return slot
        return None

    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Count from 1 to 5000, comma separated."}],
        "max_tokens": n_predict,
        "stream": False,
        "ignore_eos": True,
        "temperature": 0,
    }
    _send_and_leave(embedded.port or 0, "/v1/chat/completions", body, lambda: ours() is not None)
    # Before, llama.cpp decoded all 1,781 tokens (about a minute) for nobody.
    assert _wait(lambda: ours() is None, timeout=5)


def test_an_abandoned_embed_of_many_inputs_stops(embedded: runtime.RuntimeRecord) -> None:
    def busy() -> bool:
        return any(
            s.get("is_processing") for s in _slots(embedded.embed_url, embedded.llama_headers)
        )

    texts = [f"Input number {n} talks about leave policy and pay. " * 20 for n in range(1000)]
    _send_and_leave(embedded.port or 0, "/api/embed", {"model": EMBED, "input": texts}, busy)
    idle_since: list[float] = []

    def idle_for_a_while() -> bool:
        if busy():
            idle_since.clear()
            return False
        idle_since.append(time.monotonic())
        return idle_since[-1] - idle_since[0] > 1.0

    # Before, the whole thousand (minutes of work) went on after the client left. Another
    # test's embeddings (two run at once) can keep the server busy for a few seconds too.
    assert _wait(idle_for_a_while, timeout=30)


# --- 8. Bad input: a 4xx in the dialect's shape, never a traceback ---------------------------

OLLAMA_BAD = [
    ("/api/chat", '{"model": "smollm2:135m", "messages": [], "options": {"num_predict": 1e400}}'),
    ("/api/generate", '{"model": "smollm2:135m", "prompt": "x", "options": {"top_k": 1e400}}'),
    ("/api/generate", '{"model": "smollm2:135m", "prompt": "x", "options": {"seed": -1e400}}'),
    ("/api/chat", '{"model": "smollm2:135m", "options": {"num_predict": 1' + "0" * 30 + "}}"),
    ("/api/chat", '{"model": "smollm2:135m", "messages": NaN}'),
    ("/api/chat", '{"model": "smollm2:135m", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("/api/embed", '{"model": "all-minilm", "input": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("/api/show", '{"model": "smollm2:135m", "x": ' + '{"a":' * 70 + "1" + "}" * 70 + "}"),
]


@pytest.mark.parametrize(("path", "raw"), OLLAMA_BAD, ids=lambda v: str(v)[:40])
def test_bad_numbers_and_nesting_get_400_in_ollamas_shape(
    embedded: runtime.RuntimeRecord, path: str, raw: str
) -> None:
    answer = requests.post(embedded.url + path, data=raw, timeout=30)
    message = _ollama_error(answer, 400)
    assert "Traceback" not in message and "internal error" not in message


OPENAI_BAD = [
    {"model": CHAT, "messages": HELLO, "tools": [{"x": 1}]},
    {"model": CHAT, "messages": HELLO, "tools": "get_weather"},
    {"model": CHAT, "messages": HELLO, "tools": [{"type": "function", "function": {}}]},
]


@pytest.mark.parametrize("body", OPENAI_BAD, ids=lambda b: json.dumps(b["tools"])[:30])
def test_malformed_openai_tools_get_400_in_openais_shape(
    embedded: runtime.RuntimeRecord, body: dict[str, Any]
) -> None:
    answer = requests.post(embedded.url + "/v1/chat/completions", json=body, timeout=30)
    assert "tools" in _openai_error(answer, 400)


def test_openai_infinity_is_a_400(embedded: runtime.RuntimeRecord) -> None:
    raw = '{"model": "smollm2:135m", "messages": [], "max_tokens": 1e400}'
    answer = requests.post(embedded.url + "/v1/chat/completions", data=raw, timeout=30)
    assert "out of range" in _openai_error(answer, 400)


LONG = "The leave policy says many things about many days. " * 300  # ~3,000 tokens


def test_embeddings_over_512_tokens_are_cut_as_ollama_does(embedded: runtime.RuntimeRecord) -> None:
    old = requests.post(
        embedded.url + "/api/embeddings", json={"model": EMBED, "prompt": LONG}, timeout=60
    )
    assert old.status_code == 200 and len(old.json()["embedding"]) == 384
    openai = requests.post(
        embedded.url + "/v1/embeddings", json={"model": EMBED, "input": [LONG, "hi"]}, timeout=60
    )
    assert openai.status_code == 200, openai.text[:300]
    assert [len(d["embedding"]) for d in openai.json()["data"]] == [384, 384]
    new = requests.post(
        embedded.url + "/api/embed", json={"model": EMBED, "input": LONG}, timeout=60
    ).json()["embeddings"][0]
    cut = openai.json()["data"][0]["embedding"]
    assert sum(a * b for a, b in zip(new, cut, strict=True)) > 0.999  # the same first 512
    refused = requests.post(
        embedded.url + "/api/embed",
        json={"model": EMBED, "input": LONG, "truncate": False},
        timeout=60,
    )
    assert "context length" in _ollama_error(refused, 400)


# --- 9. Big bodies are refused before any work; memory stays put ----------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_oversized_and_overlong_prompts_leave_memory_where_it_was(
    embedded: runtime.RuntimeRecord,
) -> None:
    before = _rss_mb(embedded.pid)
    huge = json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "x " * 10**7}]})
    long = json.dumps({"model": CHAT, "prompt": "word " * (1500 * 1024)})  # ~7.5 MB
    for _ in range(8):
        answer = requests.post(embedded.url + "/api/chat", data=huge, timeout=60)
        assert "too large" in _ollama_error(answer, 413)
        answer = requests.post(embedded.url + "/api/generate", data=long, timeout=60)
        assert "tokens this model reads" in _ollama_error(answer, 400)
        answer = requests.post(
            embedded.url + "/api/embed",
            json={"model": EMBED, "input": ["word " * 400_000] * 3},
            timeout=60,
        )
        assert answer.status_code == 200
    after = _rss_mb(embedded.pid)
    # Before, eight 20 MB prompts took the runtime from 441 MB to 1.8 GB for good.
    assert after - before < 150, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    assert after < 800, f"{after:.0f} MB: the README promises at most about 700 MB when busy"


# --- 10. Half-sent requests do not hold connections ------------------------------------------


def test_half_sent_request_heads_are_cut_off(embedded: runtime.RuntimeRecord) -> None:
    socks = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", embedded.port or 0), timeout=5)
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            socks.append(sock)
        # Meanwhile the runtime serves others.
        assert requests.get(embedded.url + "/api/version", timeout=10).ok
        deadline = time.monotonic() + server.HEADER_TIMEOUT + 15
        closed = 0
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += sock.recv(1024) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
        assert closed == len(socks), f"only {closed} of {len(socks)} half-sent requests were cut"
    finally:
        for sock in socks:
            sock.close()


# --- 3 and 4. Stop only what is ours; one runtime per folder, found even with a bad record --


def test_down_leaves_another_folders_runtime_and_look_alikes_alone(
    embedded: runtime.RuntimeRecord, isolated_home: Path
) -> None:
    # The session's runtime is real and alive, but it is not this folder's.
    runtime.write_record(embedded, isolated_home)
    assert runtime.down(state_dir=isolated_home, say=False) is False
    assert requests.get(embedded.url + "/", timeout=10).ok
    # A process whose command line merely mentions the runtime's module and this folder.
    argv = ["labkit.runtime.server", "--state-dir", str(isolated_home), "--port", "9"]
    look_alike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    try:
        fake = runtime.RuntimeRecord(
            pid=look_alike.pid, url="http://127.0.0.1:9", llama_url="", embed_url=""
        )
        runtime.write_record(fake, isolated_home)
        assert runtime.down(state_dir=isolated_home, say=False) is False
        assert look_alike.poll() is None
    finally:
        look_alike.kill()
        look_alike.wait()


def _servers_for(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"labkit.runtime.server" in argv and str(folder).encode() in argv:
                found.append(int(entry.name))
    return found


def test_a_damaged_record_hides_nothing(isolated_home: Path) -> None:
    record = runtime.up(runtime.free_port(), state_dir=isolated_home, say=False)
    runtime.record_path(isolated_home).write_text('{"pid": 1, "url": ')  # cut mid-write
    found = runtime.read_record(isolated_home)
    assert found is not None and found.pid == record.pid
    assert runtime.up(state_dir=isolated_home, say=False).pid == record.pid
    assert _servers_for(isolated_home) == [record.pid]
    runtime.record_path(isolated_home).unlink()
    assert runtime.down(state_dir=isolated_home, say=False) is True
    assert _wait(lambda: not Path(f"/proc/{record.pid}").exists(), timeout=10)


def test_two_ups_at_once_start_one_runtime(isolated_home: Path) -> None:
    env = {**os.environ, "LABKIT_HOME": str(isolated_home)}
    command = [sys.executable, "-m", "labkit", "up"]
    ups = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [up.communicate(timeout=180)[0].decode() for up in ups]
    assert [up.returncode for up in ups] == [0, 0], outputs
    assert sum("already running" in out for out in outputs) == 1, outputs
    servers = _servers_for(isolated_home)
    assert len(servers) == 1, f"two runtimes for one folder: {servers}"
    assert runtime.down(state_dir=isolated_home, say=False) is True


# --- 5. JupyterLab ends however its launcher ends --------------------------------------------


def _lab_pid(launcher: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and b"jupyter" in argv:
                return int(entry.name)
    return None


@pytest.fixture
def lab_launcher(embedded: runtime.RuntimeRecord, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    started: list[subprocess.Popen[bytes]] = []
    port = runtime.free_port()

    def start() -> tuple[subprocess.Popen[bytes], int, int]:
        env = {**os.environ, "LABKIT_BASE_URL": embedded.url, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
        command = [sys.executable, "-m", "labkit", "lab", "--headless", "--port", str(port)]
        launcher = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started.append(launcher)
        assert _wait(lambda: not runtime.port_free(port), timeout=90), "JupyterLab never listened"
        lab = _lab_pid(launcher.pid)
        assert lab is not None
        return launcher, lab, port

    yield start
    for launcher in started:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_jupyterlab_ends_with_its_launcher(lab_launcher: Callable[[], Any], how: int) -> None:
    launcher, lab, port = lab_launcher()
    os.kill(launcher.pid, how)
    launcher.wait(timeout=30)

    def gone() -> bool:
        try:
            state = Path(f"/proc/{lab}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"

    # Before, JupyterLab was handed to PID 1 and went on listening.
    assert _wait(gone, timeout=30), f"JupyterLab (pid {lab}) outlived its launcher"
    assert _wait(lambda: runtime.port_free(port), timeout=10)
