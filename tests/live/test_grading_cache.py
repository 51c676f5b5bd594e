"""The grader's reply cache: repeats come from memory, with the answer the runtime gives.

Checked against the real runtime: embeddings text by text (whatever the batching), seeded
temperature-0 requests byte for byte, everything else passed through, no kernel's headers
or junk options turned against the others, and a class graded with and without the cache
gets the same gradebook.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from labkit import discovery
from labkit.grader import assign, grading
from labkit.grader.cache import ReplyCache

PROJECT = Path(__file__).resolve().parents[2]
TEXTS = ["Holidays: 25 days a year.", "Send receipts within 30 days.", "Wear your badge."]


@pytest.fixture
def cache(rt: discovery.Runtime) -> Iterator[tuple[ReplyCache, str]]:
    replies = ReplyCache(rt.url)
    host, port = replies.start()
    yield replies, f"http://{host}:{port}"
    replies.stop()


def _close(a: list[float], b: list[float]) -> bool:
    """The same text's vector: llama.cpp batches requests from concurrent tests together,
    which moves components in their 4th digit, never the direction (other texts: < 0.95)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return len(a) == len(b) and dot / norms > 0.9999


def test_embeddings_are_cached_text_by_text(
    rt: discovery.Runtime, cache: tuple[ReplyCache, str]
) -> None:
    replies, url = cache
    body = {"model": rt.embed_model, "input": TEXTS}
    direct = requests.post(rt.url + "/api/embed", json=body, timeout=60).json()["embeddings"]
    first = requests.post(url + "/api/embed", json=body, timeout=60).json()["embeddings"]
    assert (replies.misses, replies.hits) == (3, 0)
    assert all(_close(a, b) for a, b in zip(first, direct, strict=True))
    # Other batches of the same texts: all from memory, each text its own vector.
    again = {**body, "input": TEXTS[::-1]}
    reversed_ = requests.post(url + "/api/embed", json=again, timeout=60).json()["embeddings"]
    assert reversed_ == first[::-1]
    one = requests.post(url + "/api/embed", json={**body, "input": TEXTS[1]}, timeout=60).json()
    assert one["embeddings"] == [first[1]]
    assert (replies.misses, replies.hits) == (3, 4)
    # The OpenAI route has its own shape (and its own entries).
    data = requests.post(url + "/v1/embeddings", json=body, timeout=60).json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(_close(d["embedding"], v) for d, v in zip(data, first, strict=True))


def test_two_kernels_embedding_the_same_texts_at_once_embed_them_once(
    rt: discovery.Runtime, cache: tuple[ReplyCache, str]
) -> None:
    replies, url = cache
    texts = [f"Policy {n}: leave is booked in the HR portal, {n} days ahead." for n in range(24)]
    body = {"model": rt.embed_model, "input": texts}

    def embed(_: int) -> list[list[float]]:
        return list(requests.post(url + "/api/embed", json=body, timeout=120).json()["embeddings"])

    with ThreadPoolExecutor(max_workers=3) as pool:
        first, second, third = pool.map(embed, range(3))
    assert first == second == third and len(first) == len(texts)
    assert (replies.misses, replies.hits) == (len(texts), 2 * len(texts))


def test_only_seeded_temperature_zero_replies_are_cached(
    rt: discovery.Runtime, cache: tuple[ReplyCache, str]
) -> None:
    replies, url = cache
    messages = [{"role": "user", "content": "Name one colour."}]
    fixed = {"temperature": 0, "seed": 42, "num_predict": 8}
    body = {"model": rt.chat_model, "messages": messages, "stream": False, "options": fixed}
    first = requests.post(url + "/api/chat", json=body, timeout=120)
    second = requests.post(url + "/api/chat", json=body, timeout=120)
    assert first.status_code == 200 and first.content == second.content
    assert (replies.misses, replies.hits) == (1, 1)
    streamed = {**body, "stream": True}
    one = requests.post(url + "/api/chat", json=streamed, timeout=120).content
    assert requests.post(url + "/api/chat", json=streamed, timeout=120).content == one
    assert (replies.misses, replies.hits) == (2, 2)
    # No seed, or a temperature above 0: every request reaches the runtime.
    for options in ({"temperature": 0, "num_predict": 4}, {**fixed, "temperature": 0.7}):
        for _ in range(2):
            reply = requests.post(url + "/api/chat", json={**body, "options": options}, timeout=120)
            assert reply.status_code == 200
    assert (replies.misses, replies.hits) == (2, 2)
    # Errors pass through and are not kept.
    missing = {**body, "model": "no-such-model"}
    assert requests.post(url + "/api/chat", json=missing, timeout=60).status_code == 404
    assert requests.post(url + "/api/tags", timeout=60).status_code in (200, 405)


def test_no_kernel_can_spoil_a_reply_for_the_others(
    rt: discovery.Runtime, cache: tuple[ReplyCache, str]
) -> None:
    replies, url = cache
    fixed = {"temperature": 0, "seed": 7, "num_predict": 6}
    messages = [{"role": "user", "content": "Name one planet."}]
    body = {"model": rt.chat_model, "messages": messages, "stream": False, "options": fixed}
    evil = {"Origin": "http://evil.example"}
    # The runtime refuses a foreign page; the cache answers such a request the same way.
    assert (
        requests.post(rt.url + "/api/chat", json=body, headers=evil, timeout=60).status_code == 403
    )
    assert requests.post(url + "/api/chat", json=body, headers=evil, timeout=60).status_code == 403
    stop = threading.Event()

    def spoil() -> int:
        sent = 0
        with requests.Session() as session:
            while not stop.is_set():
                session.post(url + "/api/chat", json=body, headers=evil, timeout=60)
                sent += 1
        return sent

    with ThreadPoolExecutor(max_workers=4) as pool:
        spoilers = [pool.submit(spoil) for _ in range(4)]
        try:
            honest = [requests.post(url + "/api/chat", json=body, timeout=120) for _ in range(5)]
        finally:
            stop.set()
        assert all(s.result() > 0 for s in spoilers)
    assert [r.status_code for r in honest] == [200] * 5
    assert len({r.content for r in honest}) == 1 and replies.misses == 1
    # Headers the runtime would accept are not passed on either: same request, same reply.
    other = {"Authorization": "Bearer junk", "Cookie": "a=b", "Origin": "http://localhost:1"}
    again = requests.post(url + "/api/chat", json=body, headers=other, timeout=120)
    assert again.content == honest[0].content and replies.misses == 1


def test_junk_options_on_embed_are_passed_on_but_never_stored(
    rt: discovery.Runtime, cache: tuple[ReplyCache, str]
) -> None:
    replies, url = cache
    texts = [f"Rule {n}: expenses are filed within {n + 2} days." for n in range(64)]
    plain = {"model": rt.embed_model, "input": texts}
    first = requests.post(url + "/api/embed", json=plain, timeout=120).json()["embeddings"]
    stored = replies.stored_bytes
    for n in range(3):
        junk = {**plain, "junk": f"{n}" * 2**20, "options": {"junk": f"{n}" * 2**20}}
        reply = requests.post(url + "/api/embed", json=junk, timeout=120)
        assert reply.status_code == 200
        assert all(_close(a, b) for a, b in zip(reply.json()["embeddings"], first, strict=True))
    assert replies.stored_bytes == stored and len(replies.store) == len(texts)
    # Small options are kept, and cost what the plain request's vectors cost.
    small = {**plain, "options": {"junk": "x" * 1000}}
    assert requests.post(url + "/api/embed", json=small, timeout=120).status_code == 200
    assert replies.stored_bytes == 2 * stored


def test_a_class_gets_the_same_grades_with_and_without_the_cache(
    tmp_path: Path, rt: discovery.Runtime
) -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the grading sandbox needs root on Linux")
    subs = tmp_path / "class"
    subs.mkdir()
    shutil.copy(PROJECT / "solutions/01-api-script.ipynb", subs / "solved.ipynb")
    shutil.copy(PROJECT / "solutions/01-api-script.ipynb", subs / "solved-again.ipynb")
    shutil.copy(PROJECT / "exercises/01-api-script.ipynb", subs / "untouched.ipynb")
    exercise = assign.load_key(PROJECT / "grading/hidden/01-api-script.json")
    books: dict[bool, dict[str, Any]] = {}
    for cached in (False, True):
        out = tmp_path / f"out-{cached}"
        grading.grade(
            subs,
            exercise,
            out,
            grading.GradeOptions(timeout=120.0, cache=cached, progress=False),
            runtime_url=rt.url,
            root=PROJECT,
            say=lambda _: None,
        )
        rows = csv.DictReader((out / "gradebook.csv").open())
        books[cached] = {r["learner"]: {k: v for k, v in r.items() if k != "notes"} for r in rows}
    assert books[True] == books[False]
    assert books[True]["solved"]["total"] == f"{exercise.possible:g}"
