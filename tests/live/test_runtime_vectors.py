"""The runtime's embedding cache on the real runtime: a repeat is exact and costs no model work."""

from __future__ import annotations

import uuid

import requests

from labkit import runtime

EMBED = runtime.EMBED_MODEL


def _embed(url: str, texts: list[str]) -> dict[str, object]:
    answer = requests.post(url + "/api/embed", json={"model": EMBED, "input": texts}, timeout=120)
    answer.raise_for_status()
    data: dict[str, object] = answer.json()
    return data


def test_a_repeated_text_gets_the_same_vector_without_being_read_again(
    embedded: runtime.RuntimeRecord,
) -> None:
    tag = uuid.uuid4().hex  # texts no earlier run has sent
    texts = [f"{tag}: paragraph {n} of the leave policy." for n in range(20)]
    first = _embed(embedded.url, texts)
    assert isinstance(first["prompt_eval_count"], int) and first["prompt_eval_count"] > 0
    # The same texts in another order and batching, plus one new: only the new one is read.
    again = _embed(embedded.url, [f"{tag}: one more.", *texts[::-1]])
    vectors = again["embeddings"]
    assert isinstance(vectors, list) and len(vectors) == 21
    assert vectors[1:][::-1] == first["embeddings"], "a cached vector is the computed one exactly"
    assert isinstance(again["prompt_eval_count"], int)
    assert 0 < again["prompt_eval_count"] < first["prompt_eval_count"] / 5
    # A new text is not answered from someone else's vector.
    assert vectors[0] not in vectors[1:]
