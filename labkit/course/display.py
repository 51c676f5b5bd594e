"""What every course widget shares: the feedback block, safe HTML for plain text, display."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Displayed", "Feedback", "notice", "text_html"]


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer: right or wrong, and why."""

    correct: bool
    message: str  # "Correct!", "Not quite.", or what to do first
    explanation: str = ""

    def __str__(self) -> str:
        return f"{self.message} {self.explanation}".strip()

    def html(self) -> str:
        """The feedback as a small coloured HTML block."""
        colour = "#1a7f37" if self.correct else "#b35900"
        explanation = f"<div>{text_html(self.explanation)}</div>" if self.explanation else ""
        return (
            f'<div style="border-left:4px solid {colour};padding:4px 8px;margin-top:4px;'
            'line-height:1.4">'
            f'<b style="color:{colour}">{html.escape(self.message)}</b>{explanation}</div>'
        )


def text_html(text: str) -> str:
    """Plain text as HTML: escaped, line breaks and spacing kept, `code` shown as code."""
    escaped = html.escape(text)
    return re.sub(r"`([^`\n]+)`", r"<code>\1</code>", escaped).replace("\n", "<br>")


def notice(text: str) -> str:
    """A warning line; its own line height, as widgets set a tall one meant for controls."""
    return f'<div style="color:#b35900;line-height:1.4">{text_html(text)}</div>'


class Displayed:
    """Shows ``self.widget`` when the object is the last thing in a notebook cell."""

    widget: Any

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
