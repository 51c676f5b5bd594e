"""The stream reader splits lines in time linear in the body: no newline for megabytes costs little."""

from __future__ import annotations

import time

import pytest
import requests
from fake_server import FakeServer, Flood, Lines, Sleeps

from labkit import Client
from labkit.errors import ResponseTooLarge
from labkit.reply import Timeout
from labkit.retry import RetryPolicy
from labkit.transport import MAX_RESPONSE_BYTES, Deadline, read_lines

SPACES = b" " * 65536  # 40 MB of these, and never a newline


def _lines(url: str, limit: int) -> list[bytes]:
    response = requests.get(url, stream=True, timeout=30)
    with response:
        return list(read_lines(response, url, limit, Deadline(Timeout(total=60))))


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_megabytes_without_a_newline_fail_fast(dialect: str) -> None:
    """40 MB of spaces: ResponseTooLarge at the default limit, in well under 2 s of CPU."""
    with FakeServer(Flood(piece=SPACES)) as fake:
        client = Client(fake.url, dialect=dialect, model="m", retry=RetryPolicy(sleep=Sleeps()))
        cpu = time.process_time()  # the fake server's thread is counted too: a bound, not less
        with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
            list(client.stream("hi"))
        used = time.process_time() - cpu
    assert client.max_response_bytes == MAX_RESPONSE_BYTES  # the default limit was reached
    assert used < 2.0, f"{used:.1f} s of CPU to refuse a stream without newlines"


def test_lines_split_across_reads_come_out_whole() -> None:
    """Line ends in every form, split at every place between reads, give the same lines."""
    body = b"one\ntwo\r\nthree\rfour\n\nlast"
    pieces: list[bytes | str | float] = [body[i : i + 3] for i in range(0, len(body), 3)]
    with FakeServer(Lines(pieces, raw=True)) as fake:
        got = _lines(fake.url, 1000)
    # A \r\n split across two reads gives one extra empty line (both dialects skip those).
    assert [line for line in got if line] == [b"one", b"two", b"three", b"four", b"last"]
    with FakeServer(Lines([body], raw=True)) as fake:
        assert _lines(fake.url, 1000) == [b"one", b"two", b"three", b"four", b"", b"last"]


def test_the_limit_counts_every_line() -> None:
    with (
        FakeServer(Lines([b"x" * 100 + b"\n"] * 20, raw=True)) as fake,
        pytest.raises(ResponseTooLarge, match="larger than 1,000 bytes"),
    ):
        _lines(fake.url, 1000)
