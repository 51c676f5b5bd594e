"""labkit.tokens: the one token estimate and the one packer, used by conversations and RAG."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from labkit import conversation, rag, tokens
from labkit.errors import InvalidInput
from labkit.tokens import estimate_tokens, pack, pack_texts, split_text, truncate_tokens


def test_one_estimate_serves_the_whole_kit() -> None:
    assert conversation.estimate_tokens is tokens.estimate_tokens
    assert rag.count_tokens is tokens.estimate_tokens


def test_estimate_counts_words_marks_and_long_words() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("Hello") == 2  # max(1, 5 / 4) x 1.2, rounded up
    assert (
        estimate_tokens("Up to 5 days, by 31 March.") == 12
    )  # 8 pieces of 1, "March" 1.25: 9.25 x 1.2
    assert estimate_tokens(" ".join(["word"] * 1000)) == 1200
    # A long German compound costs more than a short English word.
    assert estimate_tokens("Arbeitnehmerüberlassungsgesetz") > estimate_tokens("law") * 5


def hex_blob(chars: int) -> str:
    """A long run of hex digits, like a hash or an ID pasted into a document."""
    return "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(chars // 64 + 1))[
        :chars
    ]


def test_long_runs_of_characters_count_a_token_per_character() -> None:
    blob = hex_blob(3000)
    assert estimate_tokens(blob) >= 3000
    cut = truncate_tokens("Key: " + blob, 250)
    assert blob.startswith(cut[5:]) and estimate_tokens(cut) <= 250 and len(cut) >= 150


def test_truncate_keeps_the_start_and_respects_the_limit() -> None:
    text = " ".join(f"w{i}" for i in range(1000))
    cut = truncate_tokens(text, 120)
    assert text.startswith(cut) and estimate_tokens(cut) <= 120
    assert cut.split()[-1] == "w99"  # each "w<n>" is one piece: 1.2 tokens
    assert truncate_tokens("short text", 110) == "short text"


@pytest.mark.parametrize("size", [2, 7, 50, 300])
def test_split_text_never_exceeds_the_size_and_loses_nothing(size: int) -> None:
    rng = random.Random(size)
    image = base64.b64encode(rng.randbytes(20_000)).decode()
    text = "Photo of the badge: ![badge](data:image/png;base64," + image + ") as issued. " * 3
    pieces = split_text(text, size)
    assert "".join(pieces) == text
    assert all(estimate_tokens(p) <= size for p in pieces)


def test_split_text_cuts_between_words_when_it_can() -> None:
    text = "alpha beta gamma delta " * 200
    pieces = split_text(text, 40)
    assert "".join(pieces) == text and len(pieces) > 1
    assert all(p.endswith(" ") for p in pieces[:-1])  # every cut is after a space
    with pytest.raises(InvalidInput, match="size"):
        split_text("x", 1)


def test_pack_groups_costs_and_carries_overlap() -> None:
    assert pack([120, 80, 90, 40], 200) == [(0, 2), (2, 4)]
    assert pack([300, 10], 200) == [(0, 1), (1, 2)]  # an oversized item stands alone
    assert pack([], 200) == []
    # The last item of a run is repeated at the start of the next when it fits the overlap.
    assert pack([50, 50, 50, 50, 50], 120, overlap=50) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    # A run ends at a paragraph start if it is at least half full.
    assert pack([40, 40, 40, 40], 150, breaks=[True, False, True, False]) == [(0, 2), (2, 4)]
    with pytest.raises(InvalidInput, match="overlap"):
        pack([1], 10, overlap=10)


def test_pack_texts_fits_every_chunk() -> None:
    pieces = [f"Paragraph {i}. " + "words " * (i % 37) for i in range(200)]
    chunks = pack_texts(pieces, 100)
    assert all(estimate_tokens(c) <= 100 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(pieces).split())
