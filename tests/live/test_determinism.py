"""A seeded temperature-0 request gets the same reply alone and amid other requests.

One request, on both dialects, streamed and not, is sent alone, then again while other chats
run (the four variants side by side, with four other chats of other lengths, one with a JSON
schema, one sharing its opening: the batch around it, its slot and what that slot held
differ). Its prompt is over 512 tokens, where llama.cpp's CPU flash attention added up
differently depending on the batch. The streamed OpenAI-dialect reply carries
log-probabilities, compared to the last bit, so even a difference that changes no word shows. bench/determinism.py measures the same more thoroughly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from labkit import runtime

# Over a minute of both cores on a busy machine: in the full run, not in `./lab test --fast`.
pytestmark = pytest.mark.slow

ROUNDS = 1  # times each variant is sent amid the others (the bench sends 20)
TOKENS = 24
LOG = "\n".join(
    f"09:{n:02d} worker-{n % 5} read {n * 13 % 97} rows, wrote report {n}" for n in range(27)
)
PROMPT = "Summarise this log in two sentences.\n" + LOG
VARIANTS = [(dialect, stream) for dialect in ("ollama", "openai") for stream in (False, True)]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pay", "leave"]}},
    "required": ["label"],
}
OTHERS: list[tuple[str, Any]] = [  # what runs beside: (prompt, schema)
    ("Write a haiku about rain.", None),
    ("Summarise this log in one word.\n" + LOG[:400], None),  # shares the opening
    ("Classify: 'Salary paid on the 25th.'", SCHEMA),
    ("Explain recursion. " * 20, None),
]


def _body(
    dialect: str, stream: bool, text: str, schema: Any = None, tokens: int = TOKENS
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": runtime.CHAT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }
    if dialect == "ollama":
        body["options"] = {"temperature": 0, "seed": 7, "num_predict": tokens}
        if schema is not None:
            body["format"] = schema
        return body
    body |= {"temperature": 0, "seed": 7, "max_tokens": tokens}
    if stream:  # the log-probabilities of every token, to compare them bit for bit
        body |= {"logprobs": True, "top_logprobs": 2}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    return body


def _reply(
    url: str,
    dialect: str,
    stream: bool,
    text: str = PROMPT,
    schema: Any = None,
    tokens: int = TOKENS,
) -> str:
    """The reply's text (with the log-probabilities of a streamed OpenAI reply)."""
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    body = _body(dialect, stream, text, schema, tokens)
    with requests.post(url + path, json=body, stream=stream, timeout=300) as answer:
        assert answer.status_code == 200, answer.text
        if not stream:
            whole = answer.json()
            message = whole["message"] if dialect == "ollama" else whole["choices"][0]["message"]
            return str(message["content"])
        parts = []
        for line in answer.iter_lines():
            if dialect == "openai":
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                line = line[6:]
            event = json.loads(line)
            assert "error" not in event, event
            if dialect == "ollama":
                parts.append(event["message"]["content"])
                continue
            for choice in event.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
                parts.append(json.dumps(choice.get("logprobs")))
        return "".join(parts)


@pytest.fixture
def busy(embedded: runtime.RuntimeRecord) -> Iterator[list[int]]:
    """Four other chats kept running, both dialects, for as long as the test runs."""
    stop = threading.Event()
    done = [0]

    def loop(number: int) -> None:
        text, schema = OTHERS[number]
        turn = number
        while not stop.is_set():
            dialect, stream = VARIANTS[turn % len(VARIANTS)]
            _reply(embedded.url, dialect, stream, text, schema, tokens=8 + 4 * number)
            done[0] += 1
            turn += 1

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(len(OTHERS))]
    for thread in threads:
        thread.start()
    yield done
    stop.set()
    for thread in threads:
        thread.join(timeout=300)


def test_seeded_reply_is_the_same_alone_and_amid_other_requests(
    embedded: runtime.RuntimeRecord, request: pytest.FixtureRequest
) -> None:
    alone = {variant: _reply(embedded.url, *variant) for variant in VARIANTS}
    assert all(alone.values()), alone  # replies to compare, not empty strings
    # Streamed or not, a dialect's text is one reply (the streamed OpenAI one adds logprobs).
    assert alone[("ollama", False)] == alone[("ollama", True)]

    done = request.getfixturevalue("busy")
    amid: dict[tuple[str, bool], list[str]] = {variant: [] for variant in VARIANTS}
    with ThreadPoolExecutor(len(VARIANTS)) as pool:
        for _ in range(ROUNDS):
            replies = pool.map(lambda variant: _reply(embedded.url, *variant), VARIANTS)
            for variant, reply in zip(VARIANTS, replies, strict=True):
                amid[variant].append(reply)
    assert done[0] > 0, "no other chat finished while the measured ones ran"
    for variant, replies in amid.items():
        for number, reply in enumerate(replies, 1):
            assert reply == alone[variant], (
                f"{variant[0]} dialect, {'streamed' if variant[1] else 'not streamed'}: "
                f"reply {number} amid other requests differs from the one alone:\n"
                f"alone: {alone[variant][:300]!r}\namid:  {reply[:300]!r}"
            )
