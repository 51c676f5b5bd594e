"""The call log: one JSON line per call, read back, summarized."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from labkit.calllog import CallLog, percentile, prompt_hash, read_log, summarize
from labkit.errors import LabkitError, LabkitTimeout


def test_a_record_has_every_field(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "sub" / "calls.jsonl")  # the folder is created
    log.record(
        endpoint="/api/chat",
        dialect="ollama",
        model="smollm2:135m",
        prompt="Hello",
        latency=0.25,
        first_token=0.05,
        reply_chars=12,
        prompt_tokens=7,
        completion_tokens=4,
        validation="ok",
        attempts=2,
    )
    (record,) = read_log(log.path)
    assert record["endpoint"] == "/api/chat" and record["dialect"] == "ollama"
    assert record["model"] == "smollm2:135m"
    assert record["prompt"] == "Hello" and record["prompt_chars"] == 5
    assert record["prompt_sha256"] == prompt_hash("Hello")
    assert record["prompt_sha256"] == hashlib.sha256(b"Hello").hexdigest()
    assert record["latency_s"] == 0.25 and record["first_token_s"] == 0.05
    assert (record["reply_chars"], record["prompt_tokens"], record["completion_tokens"]) == (
        12,
        7,
        4,
    )
    assert record["validation"] == "ok" and record["attempts"] == 2
    assert record["error"] is None and record["error_message"] is None
    assert record["timestamp"][:2] == "20"


def test_long_prompts_are_kept_as_a_hash_only(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    long = "x" * 501
    log.record(endpoint="/e", dialect="openai", model="m", prompt=long, latency=1.0)
    log.record(endpoint="/e", dialect="openai", model="m", prompt="x" * 500, latency=1.0)
    first, second = read_log(log.path)
    assert first["prompt"] is None and first["prompt_sha256"] == prompt_hash(long)
    assert second["prompt"] == "x" * 500


def test_errors_are_logged_by_type(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    log.record(
        endpoint="/e",
        dialect="ollama",
        model="m",
        prompt="p",
        latency=30.0,
        error=LabkitTimeout("read timeout"),
        attempts=3,
    )
    (record,) = read_log(log.path)
    assert record["error"] == "LabkitTimeout" and record["error_message"] == "read timeout"


def test_threads_do_not_interleave_lines(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")

    def write(n: int) -> None:
        for i in range(50):
            log.record(endpoint="/e", dialect="o", model="m", prompt=f"{n}-{i}" * 40, latency=0.1)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_log(log.path)) == 200


def test_read_log_skips_a_torn_last_line_but_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text('{"latency_s": 1.0}\n{"latency_s": 2.0}\n{"late')
    assert [r["latency_s"] for r in read_log(path)] == [1.0, 2.0]
    path.write_text('{"latency_s": 1.0}\nnot json\n{"latency_s": 2.0}\n')
    with pytest.raises(LabkitError, match="Line 2"):
        read_log(path)
    with pytest.raises(LabkitError, match="No call log"):
        read_log(tmp_path / "missing.jsonl")


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_summarize(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    for i in range(1, 11):
        log.record(endpoint="/e", dialect="o", model="m", prompt="p", latency=float(i))
    log.record(endpoint="/e", dialect="o", model="m", prompt="p", latency=0.1, validation="ok")
    log.record(
        endpoint="/e", dialect="o", model="m", prompt="p", latency=0.1, validation="bad field"
    )
    log.record(
        endpoint="/e",
        dialect="o",
        model="m",
        prompt="p",
        latency=99.0,
        attempts=3,
        error=LabkitTimeout("t"),
    )
    summary = summarize(read_log(log.path))
    assert summary["calls"] == 13 and summary["errors"] == 1
    assert summary["error_rate"] == pytest.approx(1 / 13)
    assert summary["error_types"] == {"LabkitTimeout": 1}
    assert summary["retries"] == 2
    assert summary["validated"] == 2 and summary["validation_failures"] == 1
    latencies = [float(i) for i in range(1, 11)] + [0.1, 0.1]  # failed calls are left out
    assert summary["latency_p50"] == pytest.approx(percentile(latencies, 50))
    assert summary["latency_p99"] == pytest.approx(percentile(latencies, 99))
    assert summary["latency_p90"] <= summary["latency_p99"] < 99.0


def test_summarize_nothing() -> None:
    summary = summarize([])
    assert summary["calls"] == 0 and summary["error_rate"] == 0.0
    assert summary["latency_p50"] is None
