"""Failures a real runtime will not produce on demand, forced with a scripted fake server.

Every test ends in the documented error or retry within a bounded time; retries use an
injected ``sleep`` that records the delays instead of waiting.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from fake_server import (
    Answer,
    FakeClock,
    FakeServer,
    Flood,
    Hang,
    Lines,
    Reset,
    Sleeps,
    openai_lines,
    refused_url,
    stream_lines,
)

from labkit import Client, Timeout
from labkit.calllog import CallLog, read_log
from labkit.degrade import with_fallback
from labkit.errors import (
    BrokenStream,
    LabkitTimeout,
    ModelNotFound,
    ResponseTooLarge,
    RuntimeUnavailable,
    ServerBusy,
    ServerError,
)
from labkit.retry import RetryPolicy, exponential

DIALECTS = ["ollama", "openai"]
CHAT_PATH = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
SSE = "text/event-stream"


def ok_body(dialect: str, text: str = "fine") -> dict[str, object]:
    """A successful non-streamed chat answer in the dialect's shape."""
    if dialect == "ollama":
        return {"model": "m", "message": {"role": "assistant", "content": text}, "done": True}
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    return {
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }


def lines(dialect: str, pieces: list[str], *, end: str = "done", done: bool = True) -> Lines:
    kind = "application/x-ndjson" if dialect == "ollama" else SSE
    return Lines(stream_lines(dialect, pieces, done=done), end=end, content_type=kind)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client(url: str, dialect: str, sleeps: Sleeps, **kwargs: object) -> Client:
    """A client with no-jitter backoff (0.5, 1.0 s) and a sleep that does not wait."""
    policy = RetryPolicy(attempts=3, wait=exponential(first=0.5), sleep=sleeps)
    kwargs.setdefault("retry", policy)
    return Client(url, dialect=dialect, model="m", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_connection_refused_is_retried_then_says_how_to_start(dialect: str, sleeps: Sleeps) -> None:
    url = refused_url()
    with pytest.raises(RuntimeUnavailable) as err:
        client(url, dialect, sleeps).chat("hi")
    assert f"No runtime at {url}" in str(err.value)
    assert "labkit up" in str(err.value)
    assert isinstance(err.value.__cause__, Exception)  # raised from the requests error
    assert sleeps == [0.5, 1.0]  # three attempts, exponential backoff between them


def test_preset_names_the_runtime_to_start(sleeps: Sleeps) -> None:
    policy = RetryPolicy(attempts=1, sleep=sleeps)
    lmstudio = Client.preset("lmstudio", model="m", retry=policy)
    lmstudio.url = refused_url()  # the preset's port may be taken on this machine
    with pytest.raises(RuntimeUnavailable, match="LM Studio"):
        lmstudio.chat("hi")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_500_is_not_retried_and_keeps_the_runtime_message(dialect: str, sleeps: Sleeps) -> None:
    with (
        FakeServer(Answer(500, {"error": "failed to load model: out of memory"})) as fake,
        pytest.raises(ServerError) as err,
    ):
        client(fake.url, dialect, sleeps).chat("hi")
    assert err.value.status == 500
    assert err.value.detail == "failed to load model: out of memory"
    assert "out of memory" in str(err.value)
    assert len(fake.seen) == 1 and sleeps == []


def test_400_is_not_retried(sleeps: Sleeps) -> None:
    body = {"error": {"message": "'messages' must be an array", "type": "invalid_request_error"}}
    with (
        FakeServer(Answer(400, body)) as fake,
        pytest.raises(ServerError, match="must be an array") as err,
    ):
        client(fake.url, "openai", sleeps).chat("hi")
    assert err.value.status == 400 and len(fake.seen) == 1 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_503_then_success_is_retried(dialect: str, sleeps: Sleeps, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    with FakeServer(Answer(503, {"error": "loading model"}), Answer(200, ok_body(dialect))) as fake:
        reply = client(fake.url, dialect, sleeps, log=log).chat("hi")
    assert reply.text == "fine" and reply.attempts == 2
    assert sleeps == [0.5]
    # The log looks up the model's version once (GET /api/tags); the chat was sent twice.
    assert [p for p in fake.paths if p != "/api/tags"] == [CHAT_PATH[dialect]] * 2
    (record,) = read_log(log.path)
    assert record["attempts"] == 2 and record["error"] is None


@pytest.mark.parametrize("dialect", DIALECTS)
def test_429_honours_retry_after(dialect: str, sleeps: Sleeps) -> None:
    busy = Answer(429, {"error": "too many requests"}, headers={"Retry-After": "2"})
    with FakeServer(busy, Answer(200, ok_body(dialect))) as fake:
        reply = client(fake.url, dialect, sleeps).chat("hi")
    assert reply.text == "fine"
    assert sleeps == [2.0]  # the server's hint, not the 0.5 s backoff


def test_429_asking_for_too_long_a_pause_gives_up_at_once(sleeps: Sleeps) -> None:
    busy = Answer(429, {"error": "quota"}, headers={"Retry-After": "3600"})
    with FakeServer(busy) as fake, pytest.raises(ServerBusy) as err:
        client(fake.url, "ollama", sleeps).chat("hi")
    assert err.value.retry_after == 3600.0 and "3600" in str(err.value)
    assert sleeps == [] and len(fake.seen) == 1


def test_503_every_time_ends_in_server_busy_after_three_attempts(sleeps: Sleeps) -> None:
    with (
        FakeServer(Answer(503, "Service Unavailable")) as fake,
        pytest.raises(ServerBusy, match="busy"),
    ):
        client(fake.url, "openai", sleeps).chat("hi")
    assert len(fake.seen) == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_reset_mid_stream_is_not_retried(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(lines(dialect, ["Hel", "lo"], end="reset", done=False)) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        got = []
        with pytest.raises(ServerError, match="broke off after 2 pieces"):
            got.extend(stream)
    assert got == ["Hel", "lo"] and stream.text == "Hello"
    assert len(fake.seen) == 1 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_reset_before_the_first_piece_is_retried(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(Reset(), lines(dialect, ["ok"])) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        assert list(stream) == ["ok"]
    assert stream.reply.attempts == 2 and len(fake.seen) == 2 and sleeps == [0.5]


def test_reset_before_a_plain_answer_is_retried(sleeps: Sleeps) -> None:
    with FakeServer(Reset(), Answer(200, ok_body("ollama"))) as fake:
        reply = client(fake.url, "ollama", sleeps).chat("hi")
    assert reply.text == "fine" and reply.attempts == 2 and len(fake.seen) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_closed_without_its_end_is_an_error(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(lines(dialect, ["a", "b"], done=False)) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        with pytest.raises(ServerError, match="cut short"):
            list(stream)
        assert len(fake.seen) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_malformed_stream_line_names_the_line(dialect: str, sleeps: Sleeps) -> None:
    good = stream_lines(dialect, ["a"], done=False)
    bad = '{"model": "m", "message": {"content": "tru' if dialect == "ollama" else 'data: {"cho'
    kind = "application/x-ndjson" if dialect == "ollama" else SSE
    with FakeServer(Lines([*good, bad], content_type=kind)) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        assert next(stream) == "a"
        with pytest.raises(ServerError, match="not a JSON object") as err:
            next(stream)
    assert bad.removeprefix("data: ") in err.value.detail
    assert len(fake.seen) == 1


def test_error_inside_an_ollama_stream(sleeps: Sleeps) -> None:
    broken = [*stream_lines("ollama", ["a"], done=False), json.dumps({"error": "CUDA error"})]
    with FakeServer(Lines(broken)) as fake, pytest.raises(ServerError, match="CUDA error") as err:
        list(client(fake.url, "ollama", sleeps).stream("hi"))
    assert err.value.detail == "CUDA error"


def test_error_inside_an_openai_stream(sleeps: Sleeps) -> None:
    error = {"error": {"code": 500, "message": "context size exceeded", "type": "server_error"}}
    broken = [*stream_lines("openai", ["a"], done=False), "data: " + json.dumps(error) + "\n"]
    with (
        FakeServer(Lines(broken, content_type=SSE)) as fake,
        pytest.raises(ServerError, match="context size exceeded") as err,
    ):
        list(client(fake.url, "openai", sleeps).stream("hi"))
    assert err.value.detail == "context size exceeded" and len(fake.seen) == 1


def test_closing_a_stream_before_iterating_sends_nothing(sleeps: Sleeps) -> None:
    with FakeServer(lines("ollama", ["a"])) as fake:
        stream = client(fake.url, "ollama", sleeps).stream("hi")
        stream.close()
        assert list(stream) == [] and fake.seen == []


def test_non_json_answer_is_a_clear_server_error(sleeps: Sleeps) -> None:
    with (
        FakeServer(Answer(200, "<html>hello</html>")) as fake,
        pytest.raises(ServerError, match="not JSON"),
    ):
        client(fake.url, "openai", sleeps).chat("hi")
    assert len(fake.seen) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hang_past_read_timeout(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(Hang(30)) as fake:
        began = time.monotonic()
        with pytest.raises(LabkitTimeout) as err:
            client(fake.url, dialect, sleeps, timeout=Timeout(connect=1, read=0.3)).chat("hi")
        elapsed = time.monotonic() - began
    assert "0.3 s (the read timeout)" in str(err.value)
    assert "Timeout(read=" in str(err.value)  # says how to raise it
    assert len(fake.seen) == 3 and sleeps == [0.5, 1.0]  # nothing came: retried
    assert elapsed < 5


def test_per_call_timeout_overrides_the_clients(sleeps: Sleeps) -> None:
    with FakeServer(Hang(30)) as fake:
        slow = client(fake.url, "ollama", sleeps, retry=RetryPolicy(attempts=1))
        with pytest.raises(LabkitTimeout, match=r"0\.2 s"):
            slow.chat("hi", timeout=0.2)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hang_after_the_first_piece_times_out_without_retry(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(lines(dialect, ["a"], end="hang", done=False)) as fake:
        stream = client(fake.url, dialect, sleeps, timeout=Timeout(connect=1, read=0.3)).stream("x")
        assert next(stream) == "a"
        began = time.monotonic()
        with pytest.raises(LabkitTimeout, match="middle of the stream"):
            next(stream)
        assert time.monotonic() - began < 5
    assert len(fake.seen) == 1 and sleeps == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_is_lazy_and_incremental(dialect: str, sleeps: Sleeps) -> None:
    """Nothing is sent before iterating; the first piece arrives while the rest is pending."""
    first_lines = stream_lines(dialect, ["first"], done=False)
    rest_lines = stream_lines(dialect, [" second"])[1 if dialect == "openai" else 0 :]
    kind = "application/x-ndjson" if dialect == "ollama" else SSE
    script = Lines([*first_lines, 0.5, *rest_lines], content_type=kind)  # 0.5: a pause
    with FakeServer(script) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        assert fake.seen == []
        began = time.monotonic()
        first = next(stream)
        first_at = time.monotonic() - began
        rest = list(stream)
        total = time.monotonic() - began
    assert first == "first" and rest == [" second"]
    assert total - first_at > 0.4  # the first piece did not wait for the rest of the stream


@pytest.mark.parametrize("dialect", DIALECTS)
def test_lines_split_across_chunks_are_joined(dialect: str, sleeps: Sleeps) -> None:
    whole = b"".join(
        (x.encode() if isinstance(x, str) else x) + b"\n" for x in stream_lines(dialect, ["ab"])
    )
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]  # cut mid-line on purpose
    kind = "application/x-ndjson" if dialect == "ollama" else SSE
    with FakeServer(Lines(list(pieces), raw=True, content_type=kind)) as fake:
        stream = client(fake.url, dialect, sleeps).stream("hi")
        assert list(stream) == ["ab"]
    assert stream.reply.completion_tokens == 1


def test_ollama_unknown_model_names_the_available_ones(sleeps: Sleeps) -> None:
    missing = Answer(404, {"error": 'model "llama9" not found, try pulling it first'})
    tags = Answer(200, {"models": [{"name": "smollm2:135m"}, {"name": "all-minilm:l6-v2"}]})
    with FakeServer(missing, tags) as fake, pytest.raises(ModelNotFound) as err:
        client(fake.url, "ollama", sleeps).chat("hi", model="llama9")
    assert "smollm2:135m" in str(err.value) and "ollama pull llama9" in str(err.value)
    assert err.value.status == 404 and "llama9" in err.value.detail
    assert fake.paths == ["/api/chat", "/api/tags"]


def test_wrong_dialect_404_suggests_the_other_one(sleeps: Sleeps) -> None:
    with (
        FakeServer(Answer(404, "404 page not found")) as fake,
        pytest.raises(ServerError, match="dialect='openai'"),
    ):
        client(fake.url, "ollama", sleeps).chat("hi")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_with_fallback_when_every_attempt_fails(
    dialect: str, sleeps: Sleeps, tmp_path: Path
) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    sorry = "The assistant is unavailable right now."
    with FakeServer(Answer(503, {"error": "overloaded"})) as fake:
        ask = with_fallback(client(fake.url, dialect, sleeps, log=log).chat, fallback=sorry)
        answer = ask("hi")
    assert (answer.text, answer.source) == (sorry, "fallback")
    assert isinstance(answer.error, ServerBusy) and "after 3 attempts" in str(answer.error)
    records = read_log(log.path)
    assert [(r["error"], r["attempts"]) for r in records] == [("ServerBusy", 3)]


def test_fallback_is_not_used_for_an_unknown_model(sleeps: Sleeps) -> None:
    missing = Answer(404, {"error": 'model "x" not found, try pulling it first'})
    with FakeServer(missing, Answer(200, {"models": []})) as fake, pytest.raises(ModelNotFound):
        with_fallback(client(fake.url, "ollama", sleeps).chat, fallback="sorry")("hi", model="x")


def test_health_reports_down_without_raising() -> None:
    health = Client(refused_url(), dialect="ollama", model="m").health("m")
    assert not health.up and health.model_available is False and not health
    assert "No runtime" in health.detail and "cannot connect" in health.detail


# --- bounds: size, deadline, and what the message says --------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_server_sending_bytes_forever_is_cut_off(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(Flood()) as fake:
        endless = client(fake.url, dialect, sleeps, max_response_bytes=1_000_000)
        began = time.monotonic()
        with pytest.raises(ResponseTooLarge, match="larger than 1,000,000 bytes"):
            endless.chat("hi")
        with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
            list(endless.stream("hi"))
        with pytest.raises(ResponseTooLarge):
            endless.embed(["a text"])
    assert time.monotonic() - began < 10
    assert len(fake.seen) == 3 and sleeps == []  # a flood is not retried


def test_a_declared_length_over_the_limit_is_refused_before_reading(sleeps: Sleeps) -> None:
    with FakeServer(Answer(200, {"pad": "x" * 5000})) as fake, pytest.raises(ResponseTooLarge):
        client(fake.url, "ollama", sleeps, max_response_bytes=1000).chat("hi")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_drip_fed_stream_ends_at_the_deadline(dialect: str, sleeps: Sleeps) -> None:
    first = stream_lines(dialect, ["a"], done=False)
    drip = Lines([*first, *(first[-1:] * 1000)], delay=0.05, end="hang")
    with FakeServer(drip) as fake:
        limits = Timeout(connect=1, read=0.5, total=1.0)
        stream = client(fake.url, dialect, sleeps, timeout=limits).stream("x")
        began = time.monotonic()
        with pytest.raises(LabkitTimeout, match=r"deadline of 1 s \(Timeout.total\)"):
            for _ in stream:
                pass
        elapsed = time.monotonic() - began
    assert 0.9 < elapsed < 3 and stream.pieces  # pieces arrived, then the deadline ended it


def test_a_drip_fed_answer_ends_at_the_deadline(sleeps: Sleeps) -> None:
    with FakeServer(Flood(piece=b" ", delay=0.05)) as fake:
        limits = Timeout(connect=1, read=0.5, total=1.0)
        began = time.monotonic()
        with pytest.raises(LabkitTimeout, match="after 1 attempt"):
            client(fake.url, "openai", sleeps, timeout=limits).chat("hi")
    assert 0.9 < time.monotonic() - began < 3


def test_retries_stop_at_the_deadline_and_the_message_counts_them() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=10, wait=lambda attempt: 10.0, sleep=clock.sleep)
    c = Client(
        refused_url(),
        dialect="ollama",
        model="m",
        retry=policy,
        clock=clock,
        timeout=Timeout(connect=1, read=1, total=25),
    )
    with pytest.raises(RuntimeUnavailable) as err:
        c.chat("hi")
    # Tries at 0 s, 10 s and 20 s; a third pause would end past the 25 s deadline.
    assert clock.sleeps == [10.0, 10.0]
    assert "Gave up after 3 attempts in 20 s" in str(err.value)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_stalled_server_message_states_the_real_attempts(dialect: str, sleeps: Sleeps) -> None:
    with FakeServer(Hang(30)) as fake, pytest.raises(LabkitTimeout) as err:
        client(fake.url, dialect, sleeps, timeout=Timeout(connect=1, read=0.2)).chat("hi")
    assert "nothing for 0.2 s" in str(err.value) and "Gave up after 3 attempts" in str(err.value)


def test_the_defaults_the_readme_promises() -> None:
    limits = Timeout()
    assert (limits.connect, limits.read, limits.total) == (30.0, 120.0, 600.0)
    assert Timeout.of(5, limits) == Timeout(5.0, 5.0, 600.0)  # a number keeps the deadline
    default = Client("http://127.0.0.1:1", dialect="ollama")
    assert default.timeout == limits and default.max_response_bytes == 32 * 1024 * 1024


def test_a_damaged_stream_line_is_a_broken_stream(sleeps: Sleeps) -> None:
    damaged = Lines(["not json"], content_type="application/x-ndjson")
    with FakeServer(damaged) as fake, pytest.raises(BrokenStream, match="not a JSON object"):
        list(client(fake.url, "ollama", sleeps).stream("hi"))


def test_a_hang_longer_than_the_deadline_is_reported_as_the_deadline(sleeps: Sleeps) -> None:
    with FakeServer(Hang(30)) as fake:
        began = time.monotonic()
        with pytest.raises(LabkitTimeout) as err:
            limits = Timeout(connect=1, read=60, total=0.5)
            client(fake.url, "ollama", sleeps, timeout=limits).chat("hi")
    assert time.monotonic() - began < 3  # not the 60 s read timeout
    assert "deadline of 0.5 s" in str(err.value) and "nothing for 60 s" not in str(err.value)
    assert len(fake.seen) == 1 and sleeps == []  # no time left for another attempt


def test_a_compressed_bomb_is_cut_off_by_its_unpacked_size(sleeps: Sleeps) -> None:
    # 64 MB of spaces packs into ~64 KB: the limit must count what it unpacks to.
    bomb = gzip.compress(b" " * 64_000_000, compresslevel=9)
    answer = Answer(200, bomb, headers={"Content-Encoding": "gzip"})
    with FakeServer(answer) as fake, pytest.raises(ResponseTooLarge):
        client(fake.url, "ollama", sleeps, max_response_bytes=1_000_000).chat("hi")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_gzipped_answer_is_read(dialect: str, sleeps: Sleeps) -> None:
    packed = gzip.compress(json.dumps(ok_body(dialect, "packed")).encode())
    with FakeServer(Answer(200, packed, headers={"Content-Encoding": "gzip"})) as fake:
        assert client(fake.url, dialect, sleeps).chat("hi").text == "packed"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_every_line_ending_an_event_stream_may_use(ending: str, sleeps: Sleeps) -> None:
    lines = [str(line).rstrip("\n") for line in openai_lines(["a", "b"])]
    sse = "".join(line + ending + ending for line in lines)
    # Split into one-byte pieces, so every line ending is also cut in two somewhere.
    pieces: list[bytes | str | float] = [bytes([c]) for c in sse.encode()]
    with FakeServer(Lines(pieces, raw=True, content_type=SSE)) as fake:
        stream = client(fake.url, "openai", sleeps).stream("hi")
        assert list(stream) == ["a", "b"] and stream.reply.completion_tokens == 2
