"""The RAG pipeline as a picture: what runs once, and what runs for every question."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib loads when the diagram is drawn: it takes a second
    from matplotlib.axes import Axes

__all__ = ["pipeline_diagram"]

_BOX = {"boxstyle": "round,pad=0.4", "fc": "#e8f0fb", "ec": "#4a78b5"}
_ANSWER = {**_BOX, "fc": "#e6f4e6", "ec": "#3d8b3d"}
_ARROW = {"arrowstyle": "->", "color": "#333"}
ONCE = [(0.07, "documents"), (0.27, "chunk"), (0.47, "embed"), (0.69, "FAISS index")]
PER_QUESTION = [
    (0.07, "question"),
    (0.27, "embed\n(same model)"),
    (0.47, "retrieve\ntop N"),
    (0.69, "prompt with\nthe passages"),
    (0.91, "answer +\n[1] sources"),
]


def _row(ax: Axes, boxes: list[tuple[float, str]], y: float, label: str) -> None:
    ax.text(0.0, y + 0.2, label, fontsize=8, color="#555")
    for i, (x, text) in enumerate(boxes):
        style = _ANSWER if text.startswith("answer") else _BOX
        ax.text(x, y, text, ha="center", va="center", fontsize=9, bbox=style)
        if i:  # an arrow from the previous box to this one
            ax.annotate(
                "", xy=(x - 0.075, y), xytext=(boxes[i - 1][0] + 0.075, y), arrowprops=_ARROW
            )


def pipeline_diagram(ax: Axes | None = None) -> Axes:
    """Draw the two halves of RAG as rows of boxes; returns the Axes (no show())."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(10, 2.7))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    _row(ax, ONCE, 0.78, "once, when the documents change")
    _row(ax, PER_QUESTION, 0.22, "for every question")
    # The question's vector meets the index: the one link between the two rows.
    ax.annotate("", xy=(0.5, 0.36), xytext=(0.66, 0.66), arrowprops={**_ARROW, "linestyle": "--"})
    ax.text(0.60, 0.5, "nearest vectors", fontsize=8, color="#555")
    return ax
