"""The runtime's cache of computed embeddings: exact replays, bounded memory, no mix-ups."""

from __future__ import annotations

from labkit.runtime.vectors import VectorCache


def test_a_vector_comes_back_exactly_and_counts_as_a_hit() -> None:
    cache = VectorCache()
    vector = [0.1, -0.2000000000000001, 1e-30, 0.3333333333333333]
    cache.put("minilm", "hello", vector, 3)
    assert cache.get("minilm", "hello") == (vector, 3)
    assert (cache.hits, cache.misses) == (1, 0)


def test_model_text_and_token_lists_are_separate_keys() -> None:
    cache = VectorCache()
    cache.put("minilm", "12", [1.0], 3)
    assert cache.get("other-model", "12") is None
    assert cache.get("minilm", [1, 2]) is None
    assert cache.get("minilm", "12 ") is None
    cache.put("minilm", [12], [2.0], 1)
    assert cache.get("minilm", [12]) == ([2.0], 1)
    assert cache.get("minilm", "12") == ([1.0], 3)
    assert cache.misses == 3


def test_the_least_recently_used_vector_goes_first_when_full() -> None:
    cache = VectorCache(max_bytes=3 * 4 * 8)  # three vectors of four doubles
    for name in "abc":
        cache.put("m", name, [1.0, 2.0, 3.0, 4.0], 1)
    assert cache.get("m", "a") is not None  # "a" is now the most recently used
    cache.put("m", "d", [5.0, 6.0, 7.0, 8.0], 1)
    assert cache.get("m", "b") is None
    assert all(cache.get("m", name) is not None for name in "acd")
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes


def test_a_vector_larger_than_the_whole_cache_is_not_kept() -> None:
    cache = VectorCache(max_bytes=16)
    cache.put("m", "big", [0.0] * 10, 1)
    assert len(cache) == 0 and cache.bytes == 0
