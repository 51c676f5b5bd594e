"""The runtime's embedding cache on the real runtime: a repeat is exact and costs no model work.

The model's work is read from llama.cpp's own counter of the tokens it read, on a runtime of
the test's own (the shared one embeds for other tests at the same time).
"""

from __future__ import annotations

from pathlib import Path

import requests

from labkit import runtime

EMBED = runtime.EMBED_MODEL


def _embed(url: str, texts: list[str]) -> dict[str, object]:
    answer = requests.post(url + "/api/embed", json={"model": EMBED, "input": texts}, timeout=120)
    answer.raise_for_status()
    data: dict[str, object] = answer.json()
    return data


def _tokens_read(record: runtime.RuntimeRecord) -> float:
    """Tokens the embedding model has read so far (llama.cpp's /metrics)."""
    headers = {"Authorization": f"Bearer {record.api_key}"}
    text = requests.get(record.embed_url + "/metrics", headers=headers, timeout=10).text
    for line in text.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return float(line.split()[-1])
    raise AssertionError(f"no prompt_tokens_total in llama.cpp's metrics:\n{text[:500]}")


def test_a_repeated_text_gets_the_same_vector_without_being_read_again(
    isolated_home: Path,
) -> None:
    record = runtime.up(runtime.free_port(), state_dir=isolated_home, say=False)
    texts = [f"Paragraph {n} of the leave policy: {n + 2} days' notice." for n in range(20)]
    read = _tokens_read(record)
    first = _embed(record.url, texts)
    read_first, read = _tokens_read(record) - read, _tokens_read(record)
    count = first["prompt_eval_count"]
    assert isinstance(count, int) and count == read_first > 0, "the count is what the model read"
    # The same texts in another order and batching, plus one new: only the new one is read,
    # and the answer still counts every input's tokens, as Ollama's does.
    again = _embed(record.url, ["One more paragraph.", *texts[::-1]])
    read_again = _tokens_read(record) - read
    vectors = again["embeddings"]
    assert isinstance(vectors, list) and len(vectors) == 21
    assert vectors[1:][::-1] == first["embeddings"], "a cached vector is the computed one exactly"
    assert 0 < read_again < read_first / 5, "only the new text was read"
    assert again["prompt_eval_count"] == count + read_again, "every input's tokens are counted"
    # A new text is not answered from someone else's vector.
    assert vectors[0] not in vectors[1:]
