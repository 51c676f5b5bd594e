"""Plots refuse empty input with a clear message (no runtime needed)."""

from __future__ import annotations

import pytest

from labkit import plots
from labkit.errors import InvalidInput

PROMPT = "Name three colours."
SETTINGS = {"temperature": 0.0, "seed": 42, "max_tokens": 16}


def test_nothing_to_plot_is_explained() -> None:
    with pytest.raises(InvalidInput, match="No measured calls"):
        plots.percentile_bars({"empty": []})
    with pytest.raises(InvalidInput, match="at least one trace"):
        plots.timeline([])
