"""The fault proxy, against the live runtime: every fault as plain HTTP sees it, then as
labkit's client (default retry policy, sleeps recorded instead of slept) copes with it."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from labkit import runtime
from labkit.errors import LabkitError
from labkit.faults import Fault, FaultProxy

CHAT = "/v1/chat/completions"
MODEL = runtime.CHAT_MODEL
# Each dialect's chat path: Ollama streams JSON lines, OpenAI's dialect server-sent events.
PATHS = {"ollama": "/api/chat", "openai": CHAT}
DIALECTS = list(PATHS)


def chat_body(stream: bool, max_tokens: int = 8, dialect: str = "openai") -> dict[str, Any]:
    """A short, repeatable chat request in the dialect's shape."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": stream,
    }
    settings = {"temperature": 0, "seed": 1}
    if dialect == "ollama":
        return {**body, "options": {**settings, "num_predict": max_tokens}}
    return {**body, **settings, "max_tokens": max_tokens}


def stream_lines(response: requests.Response) -> list[bytes]:
    """The non-blank lines of a streamed answer."""
    return [line for line in response.iter_lines() if line]


def parsed(line: bytes) -> Any:
    """One stream line as JSON (an SSE line loses its ``data:`` first); None if it is broken."""
    try:
        return json.loads(line.removeprefix(b"data: "))
    except ValueError:
        return None


def is_final(line: bytes) -> bool:
    """True for a stream's closing line: ``[DONE]`` (OpenAI) or ``"done": true`` (Ollama)."""
    data = parsed(line)
    return line == b"data: [DONE]" or (isinstance(data, dict) and data.get("done") is True)


def post_stream(proxy: FaultProxy, dialect: str, **kwargs: Any) -> requests.Response:
    """Start a streamed chat through the proxy."""
    kwargs.setdefault("timeout", 60)
    body = chat_body(stream=True, dialect=dialect)
    return requests.post(proxy.url + PATHS[dialect], json=body, stream=True, **kwargs)


def socket_fds() -> set[str]:
    """The sockets this process holds open (their inode names)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "labkit-fault-proxy"]


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a proxy thread or a socket behind."""
    before = socket_fds()
    yield
    deadline = time.monotonic() + 2.0
    while (proxy_threads() or socket_fds() - before) and time.monotonic() < deadline:
        gc.collect()  # a caught error's traceback may still hold a closed client's response
        time.sleep(0.02)
    assert proxy_threads() == []
    assert socket_fds() - before == set()


@pytest.fixture
def proxy(embedded: runtime.RuntimeRecord, no_leaks: None) -> Iterator[FaultProxy]:
    """A fault proxy in front of the live runtime, stopped after the test."""
    with FaultProxy(embedded.url, seed=7) as p:
        yield p


# --- the proxy itself ---------------------------------------------------------------------------


def test_starts_fast_and_stops_leaving_nothing(
    embedded: runtime.RuntimeRecord, no_leaks: None
) -> None:
    began = time.perf_counter()
    proxy = FaultProxy(embedded.url).start()
    started = time.perf_counter() - began
    assert started < 1.0, f"the proxy took {started:.2f} s to start"
    assert requests.get(proxy.url + "/", timeout=5).text == "Ollama is running"
    port = proxy.port
    proxy.stop()
    proxy.stop()  # stopping twice is harmless
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_forwards_untouched_and_records_each_exchange(
    proxy: FaultProxy, embedded: runtime.RuntimeRecord, dialect: str
) -> None:
    direct = requests.get(embedded.url + "/api/tags", timeout=5).json()
    assert requests.get(proxy.url + "/api/tags", timeout=5).json() == direct
    with post_stream(proxy, dialect) as r:
        kind = "text/event-stream" if dialect == "openai" else "application/x-ndjson"
        assert r.headers["Content-Type"].startswith(kind)
        lines = stream_lines(r)
    assert is_final(lines[-1])
    assert not any(is_final(line) for line in lines[:-1])
    assert all(parsed(line) for line in lines[:-1])  # each line arrives whole

    assert proxy.wait_idle()
    tags, chat = proxy.requests
    assert (tags.method, tags.path, tags.status, tags.fault, tags.body) == (
        "GET",
        "/api/tags",
        200,
        None,
        None,
    )
    assert chat.body == chat_body(stream=True, dialect=dialect)  # what the client sent, parsed
    assert chat.status == 200 and chat.error is None
    assert chat.chunks == len(lines)
    assert chat.first_byte is not None and chat.total is not None
    assert 0 < chat.first_byte <= chat.total
    assert abs(chat.started - time.time()) < 60
    assert f"POST {PATHS[dialect]} -> 200" in str(chat)


@pytest.mark.parametrize("code", [500, 503, 429])
def test_status_faults_speak_the_dialect_of_the_path(proxy: FaultProxy, code: int) -> None:
    proxy.add(Fault.status(code, retry_after=2 if code == 429 else None))
    ollama = requests.post(proxy.url + "/api/chat", json={"model": MODEL}, timeout=5)
    openai = requests.post(proxy.url + CHAT, json=chat_body(stream=False), timeout=5)
    assert ollama.status_code == openai.status_code == code
    assert isinstance(ollama.json()["error"], str)
    assert set(openai.json()["error"]) >= {"message", "type", "code"}
    assert ollama.headers.get("Retry-After") == ("2" if code == 429 else None)
    assert [r.status for r in proxy.requests] == [code, code]
    assert proxy.requests[0].fault == (f"{code} retry-after 2" if code == 429 else str(code))


def test_model_not_found_in_each_dialect(proxy: FaultProxy) -> None:
    proxy.add(Fault.model_not_found(), path="/api/chat")
    proxy.add(Fault.model_not_found(), path="/v1/*")
    ollama = requests.post(proxy.url + "/api/chat", json={"model": "llama9"}, timeout=5)
    assert ollama.status_code == 404
    assert ollama.json() == {"error": 'model "llama9" not found, try pulling it first'}
    openai = requests.post(proxy.url + CHAT, json={"model": "llama9"}, timeout=5)
    assert openai.status_code == 404
    assert openai.json()["error"]["code"] == "model_not_found"
    assert "llama9" in openai.json()["error"]["message"]


def test_times_then_pass_only_on_the_chosen_path(proxy: FaultProxy) -> None:
    rule = proxy.add(Fault.status(503), path="/api/tags", times=2)
    statuses = [requests.get(proxy.url + "/api/tags", timeout=5).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert requests.get(proxy.url + "/", timeout=5).status_code == 200  # another path
    assert (rule.hits, rule.applied) == (4, 2)


def test_every_after_duration_and_chance(proxy: FaultProxy) -> None:
    def statuses(n: int) -> list[int]:
        return [requests.get(proxy.url + "/api/version", timeout=5).status_code for _ in range(n)]

    proxy.add(Fault.status(500), path="/api/version", every=3)
    assert statuses(6) == [200, 200, 500, 200, 200, 500]
    proxy.clear()
    proxy.add(Fault.status(500), path="/api/version", after=2, times=1)
    assert statuses(4) == [200, 200, 500, 200]
    proxy.clear()
    proxy.add(Fault.status(500), path="/api/version", duration=0.6)
    first = statuses(1)
    time.sleep(0.65)
    assert first + statuses(1) == [500, 200]
    proxy.clear()
    proxy.add(Fault.status(500), path="/api/version", chance=0.5)
    mixed = statuses(20)
    assert 500 in mixed and 200 in mixed
    assert proxy.requests[0].path == "/api/version"


def test_first_due_rule_decides_and_globs_match(proxy: FaultProxy) -> None:
    proxy.add(Fault.status(503), path="/api/tags", times=1)
    proxy.add(Fault.status(429), path="/api/*")
    assert [requests.get(proxy.url + "/api/tags", timeout=5).status_code for _ in range(2)] == [
        503,
        429,
    ]
    assert requests.get(proxy.url + "/", timeout=5).status_code == 200  # "/api/*" misses "/"


def test_latency_and_slow_first_byte(proxy: FaultProxy) -> None:
    proxy.add(Fault.latency(0.2, jitter=0.1), path="/api/version")
    proxy.add(Fault.slow_first_byte(0.4), path="/api/tags")
    requests.get(proxy.url + "/api/version", timeout=5).raise_for_status()
    began = time.perf_counter()
    with requests.get(proxy.url + "/api/tags", stream=True, timeout=5) as r:
        headers_after = time.perf_counter() - began
        r.json()
        body_after = time.perf_counter() - began
    version, tags = proxy.requests
    assert version.first_byte is not None and version.first_byte >= 0.2
    assert version.fault == "latency 0.2s±0.1"
    # Headers come at once, the body only after the pause.
    assert body_after - headers_after >= 0.2
    assert body_after >= 0.4
    assert tags.first_byte is not None and tags.first_byte >= 0.4


@pytest.mark.parametrize("dialect", DIALECTS)
def test_slow_stream_spaces_the_chunks(proxy: FaultProxy, dialect: str) -> None:
    proxy.add(Fault.slow_stream(0.05), path=PATHS[dialect])
    with post_stream(proxy, dialect) as r:
        lines = stream_lines(r)
    assert proxy.wait_idle()
    exchange = proxy.requests[0]
    assert is_final(lines[-1])
    assert exchange.total is not None and exchange.total >= 0.05 * (len(lines) - 1)


def test_hang_until_the_client_gives_up(proxy: FaultProxy) -> None:
    proxy.add(Fault.hang(), path=CHAT)
    with pytest.raises(requests.ReadTimeout):
        requests.post(proxy.url + CHAT, json=chat_body(stream=False), timeout=(2, 0.3))
    assert proxy.wait_idle()
    exchange = proxy.requests[0]
    assert exchange.status is None
    assert exchange.error == "hung, then the client went away"


def test_a_hang_is_released_when_the_proxy_stops(
    embedded: runtime.RuntimeRecord, no_leaks: None
) -> None:
    outcome: list[BaseException] = []

    def wait_forever(url: str) -> None:
        try:
            requests.get(url + "/api/tags", timeout=(2, 30))
        except requests.RequestException as exc:
            outcome.append(exc)

    proxy = FaultProxy(embedded.url).start()
    proxy.add(Fault.hang())
    waiter = threading.Thread(target=wait_forever, args=(proxy.url,))
    waiter.start()
    while not proxy.requests:
        time.sleep(0.01)
    began = time.perf_counter()
    proxy.stop()
    waiter.join(timeout=5)
    assert time.perf_counter() - began < 2.0
    assert not waiter.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)
    assert proxy.requests[0].error == "hung, then the proxy stopped"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hang_in_the_middle_of_a_stream(proxy: FaultProxy, dialect: str) -> None:
    proxy.add(Fault.hang(after_chunks=2), path=PATHS[dialect])
    got: list[bytes] = []
    # The read timeout must outlast a first token on a busy machine (the suite runs in parallel),
    # yet still end the hang: the proxy never sends the third piece.
    with pytest.raises(requests.ConnectionError, match="Read timed out"):  # noqa: SIM117
        with post_stream(proxy, dialect, timeout=(2, 5)) as r:
            got.extend(line for line in r.iter_lines() if line)
    assert len(got) == 2


def test_reset_before_the_answer(proxy: FaultProxy) -> None:
    proxy.add(Fault.reset(), path=CHAT)
    with pytest.raises(requests.ConnectionError) as caught:
        requests.post(proxy.url + CHAT, json=chat_body(stream=False), timeout=5)
    assert "reset" in str(caught.value).lower()
    assert proxy.wait_idle()
    assert proxy.requests[0].error == "connection reset by the proxy"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("after", [0, 3])
def test_reset_in_the_middle_of_a_stream(proxy: FaultProxy, after: int, dialect: str) -> None:
    proxy.add(Fault.reset(after_chunks=after), path=PATHS[dialect])
    got: list[bytes] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # noqa: SIM117
        with post_stream(proxy, dialect) as r:
            assert r.status_code == 200  # the headers got through
            got.extend(line for line in r.iter_lines() if line)
    assert len(got) == after
    assert proxy.wait_idle()
    assert proxy.requests[0].chunks == after


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("after", [3, 100])
def test_truncated_stream_ends_cleanly_without_its_final_line(
    proxy: FaultProxy, after: int, dialect: str
) -> None:
    proxy.add(Fault.truncate(after_chunks=after), path=PATHS[dialect])
    with post_stream(proxy, dialect) as r:
        lines = stream_lines(r)  # no exception: the stream ends properly, just too early
    assert not any(is_final(line) for line in lines)
    assert proxy.wait_idle()
    if after == 3:
        assert len(lines) == 3
    else:  # a stream shorter than `after` still loses its last line
        assert len(lines) == proxy.requests[0].chunks > 3
    assert proxy.requests[0].error == f"stream truncated after {len(lines)} chunks"


def test_truncated_whole_body_is_cut_in_half(
    proxy: FaultProxy, embedded: runtime.RuntimeRecord
) -> None:
    proxy.add(Fault.truncate(), path="/api/tags")
    whole = requests.get(embedded.url + "/api/tags", timeout=5).content
    cut = requests.get(proxy.url + "/api/tags", timeout=5).content
    assert cut == whole[: len(whole) // 2]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_malformed_body_and_stream_line(proxy: FaultProxy, dialect: str) -> None:
    proxy.add(Fault.malformed(), path="/api/tags")
    proxy.add(Fault.malformed(after_chunks=2), path=PATHS[dialect])
    broken = requests.get(proxy.url + "/api/tags", timeout=5)
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    with post_stream(proxy, dialect) as r:
        lines = stream_lines(r)
    assert [parsed(line) is not None for line in lines[:4]] == [True, True, False, True]


def test_an_unreachable_target_gives_502(no_leaks: None) -> None:
    with FaultProxy(f"http://127.0.0.1:{runtime.free_port()}") as proxy:
        answer = requests.get(proxy.url + "/api/tags", timeout=5)
        assert answer.status_code == 502
        assert "cannot reach" in answer.json()["error"]  # Ollama's shape on /api/
        assert proxy.requests[0].error is not None


def test_a_busy_port_is_a_clear_error(embedded: runtime.RuntimeRecord) -> None:
    port = int(embedded.url.rsplit(":", 1)[1])
    with pytest.raises(LabkitError, match="cannot listen"):
        FaultProxy(embedded.url, port=port).start()
    assert proxy_threads() == []


# --- the command line ------------------------------------------------------------------------------


def test_cli_runs_until_interrupted(embedded: runtime.RuntimeRecord) -> None:
    port = runtime.free_port()
    cmd = [sys.executable, "-m", "labkit", "faults", "--target", embedded.url]
    cmd += ["--port", str(port), "--rule", "503 /api/tags times=1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner, banner
        statuses = [
            requests.get(f"http://127.0.0.1:{port}/api/tags", timeout=5).status_code
            for _ in range(2)
        ]
        assert statuses == [503, 200]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "GET /api/tags -> 503" in out and "[503]" in out
    assert "GET /api/tags -> 200" in out


# --- labkit's client under each fault (default retry policy; sleeps recorded, not slept) ----------

from fake_server import Sleeps  # noqa: E402

from labkit import Client, Timeout  # noqa: E402
from labkit.degrade import with_fallback  # noqa: E402
from labkit.errors import (  # noqa: E402
    InvalidModelOutput,
    LabkitTimeout,
    ModelNotFound,
    RuntimeUnavailable,
    ServerBusy,
    ServerError,
)
from labkit.retry import RetryPolicy  # noqa: E402


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client_for(proxy: FaultProxy, dialect: str, sleeps: Sleeps, read: float = 30.0) -> Client:
    """labkit's client through the proxy, with the default policy but a recording sleep."""
    return Client(
        proxy.url,
        dialect=dialect,
        model=MODEL,
        timeout=Timeout(connect=2.0, read=read),
        retry=RetryPolicy(sleep=sleeps),
    )


def ask(client: Client) -> Any:
    return client.chat("Say hello.", temperature=0, seed=1, max_tokens=5)


def chat_requests(proxy: FaultProxy, dialect: str) -> list[Any]:
    return [r for r in proxy.requests if r.path == PATHS[dialect]]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_retries_503_then_succeeds(proxy: FaultProxy, dialect: str, sleeps: Sleeps) -> None:
    proxy.add(Fault.status(503), path=PATHS[dialect], times=2)
    with client_for(proxy, dialect, sleeps) as client:
        reply = ask(client)
    assert reply.text and reply.attempts == 3
    sent = chat_requests(proxy, dialect)
    assert [r.status for r in sent] == [503, 503, 200]
    assert sent[0].body == sent[2].body  # every attempt sends the same request
    assert len(sleeps) == 2 and all(0 < s < 5 for s in sleeps)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_gives_up_after_three_503s(proxy: FaultProxy, dialect: str, sleeps: Sleeps) -> None:
    proxy.add(Fault.status(503), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client, pytest.raises(ServerBusy) as caught:
        ask(client)
    assert caught.value.status == 503
    assert len(chat_requests(proxy, dialect)) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_waits_as_long_as_retry_after_says(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.rate_limited(retry_after=0.25), path=PATHS[dialect], times=1)
    with client_for(proxy, dialect, sleeps) as client:
        assert ask(client).attempts == 2
    assert sleeps == [0.25]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_does_not_retry_500(proxy: FaultProxy, dialect: str, sleeps: Sleeps) -> None:
    proxy.add(Fault.status(500), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client, pytest.raises(ServerError) as caught:
        ask(client)
    assert caught.value.status == 500 and not isinstance(caught.value, ServerBusy)
    assert len(chat_requests(proxy, dialect)) == 1 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_reset_before_answer_is_retried(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.reset(), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client, pytest.raises(RuntimeUnavailable):
        ask(client)
    assert len(chat_requests(proxy, dialect)) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("fault", [Fault.hang(), Fault.slow_first_byte(2.0)], ids=str)
def test_client_times_out_on_silence(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps, fault: Fault
) -> None:
    proxy.add(fault, path=PATHS[dialect])
    began = time.perf_counter()
    with client_for(proxy, dialect, sleeps, read=0.3) as client, pytest.raises(LabkitTimeout):
        ask(client)
    assert time.perf_counter() - began < 4  # three attempts of 0.3 s, not 3 x 2 s or a hang
    assert len(chat_requests(proxy, dialect)) == 3


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_rejects_a_malformed_body_without_retrying(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.malformed(), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client, pytest.raises(ServerError) as caught:
        ask(client)
    assert not isinstance(caught.value, InvalidModelOutput)
    assert len(chat_requests(proxy, dialect)) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_reports_a_missing_model(proxy: FaultProxy, dialect: str, sleeps: Sleeps) -> None:
    proxy.add(Fault.model_not_found(), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client:
        try:
            ask(client)
        except LabkitError as exc:
            kind, message = type(exc), str(exc)
    # The error is dropped before asserting: a failure report keeping it alive would also keep
    # its HTTP connection open, which the leak check would then report as well.
    assert kind is ModelNotFound, message
    assert MODEL in message
    assert len(chat_requests(proxy, dialect)) == 1 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_fallback_after_the_retries(proxy: FaultProxy, dialect: str, sleeps: Sleeps) -> None:
    proxy.add(Fault.status(503), path=PATHS[dialect])
    client = Client(proxy.url, dialect=dialect, model=MODEL, retry=RetryPolicy(sleep=sleeps))
    with client:
        answer = with_fallback(ask, fallback="The assistant is resting.")(client)
    assert (answer.text, answer.source) == ("The assistant is resting.", "fallback")
    assert isinstance(answer.error, ServerBusy) and "after 3 attempts" in str(answer.error)


def stream_through(client: Client) -> tuple[Any, BaseException | None]:
    """Read a stream to its end; (the stream, the error it raised or None)."""
    stream = client.stream("Say hello.", temperature=0, seed=1, max_tokens=8)
    try:
        for _ in stream:
            pass
    except LabkitError as exc:
        return stream, exc
    return stream, None


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "fault",
    [Fault.reset(after_chunks=3), Fault.truncate(after_chunks=3), Fault.malformed(after_chunks=3)],
    ids=str,
)
def test_client_stream_broken_after_text_is_not_retried(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps, fault: Fault
) -> None:
    proxy.add(fault, path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client:
        stream, error = stream_through(client)
    assert isinstance(error, ServerError) and not isinstance(error, ServerBusy)
    assert stream.text  # the pieces before the break arrived
    assert len(chat_requests(proxy, dialect)) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_stream_hanging_after_text_times_out(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.hang(after_chunks=3), path=PATHS[dialect])
    # The read timeout must outlast the real model's first pieces on a busy machine.
    with client_for(proxy, dialect, sleeps, read=1.5) as client:
        stream, error = stream_through(client)
    assert isinstance(error, LabkitTimeout)
    assert stream.text and len(chat_requests(proxy, dialect)) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_stream_broken_before_text_is_retried(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.reset(after_chunks=0), path=PATHS[dialect], times=1)
    proxy.add(Fault.slow_stream(0.02), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client:
        stream, error = stream_through(client)
    assert error is None
    reply = stream.reply
    assert reply.attempts == 2 and reply.text
    assert reply.first_token is not None and reply.first_token < reply.latency
    assert [r.fault for r in chat_requests(proxy, dialect)] == [
        "reset after 0 chunks",
        "0.02s between chunks",
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_under_latency_makes_one_slower_attempt(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    proxy.add(Fault.latency(0.3), path=PATHS[dialect])
    with client_for(proxy, dialect, sleeps) as client:
        reply = ask(client)
    assert reply.attempts == 1 and reply.latency >= 0.3 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_record_shows_what_the_client_sent(
    proxy: FaultProxy, dialect: str, sleeps: Sleeps
) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}},
        "required": ["colour"],
    }
    with client_for(proxy, dialect, sleeps) as client:
        client.chat("Name a colour.", format=schema, temperature=0, seed=1, max_tokens=20)
    (sent,) = chat_requests(proxy, dialect)
    body = sent.body
    assert body["messages"] == [{"role": "user", "content": "Name a colour."}]
    if dialect == "ollama":
        assert body["format"] == schema and body["options"]["num_predict"] == 20
    else:
        assert body["response_format"]["json_schema"]["schema"] == schema
        assert body["max_tokens"] == 20
