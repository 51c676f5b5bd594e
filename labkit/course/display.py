"""What every course widget shares: the feedback block, safe HTML for text and Markdown, display."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Displayed", "Feedback", "markdown_html", "notice", "text_html"]


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


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+(.*)$")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?!\s)([^*\n]+?)\*(?![*\w])")
_SAFE_URL = re.compile(r"^(https?://|/|#|[\w.-]+(/|#|$))", re.IGNORECASE)
_LINK_STYLE = "color:#1a5fb4;text-decoration:underline"


def _spans(text: str) -> str:
    """Text with `code`, **bold** and *italic* as HTML; everything else escaped."""
    out = []
    for n, part in enumerate(re.split(r"(`[^`\n]+`)", text)):
        if n % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        piece = _BOLD.sub(r"<b>\1</b>", html.escape(part, quote=False))
        out.append(_ITALIC.sub(r"<i>\1</i>", piece))
    return "".join(out)


def _inline(text: str) -> str:
    """One line of Markdown as HTML: links (whose text may hold `code`), then the other marks."""
    out = []
    at = 0
    for match in _LINK.finditer(text):
        out.append(_spans(text[at : match.start()]))
        label, url = match.group(1), match.group(2)
        if _SAFE_URL.match(url) and not url.lower().startswith(("javascript", "data")):
            out.append(
                f'<a href="{html.escape(url)}" target="_blank" rel="noopener" '
                f'style="{_LINK_STYLE}">{_spans(label)}</a>'
            )
        else:
            out.append(html.escape(match.group(0)))  # shown as written, never made clickable
        at = match.end()
    out.append(_spans(text[at:]))
    return "".join(out)


def markdown_html(text: str) -> str:
    """Markdown as safe HTML: paragraphs, headings, lists, quotes, code blocks, inline marks.

    Raw HTML in the text is escaped, not rendered, and only web and relative links become
    clickable: a reply written by a model can show nothing but text.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(f'<p style="margin:4px 0">{"<br>".join(_inline(p) for p in para)}</p>')
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            flush()
            code: list[str] = []
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                code.append(lines[i])
                i += 1
            out.append(
                '<pre style="background:#f6f8fa;padding:6px;margin:4px 0;overflow:auto">'
                f"<code>{html.escape(chr(10).join(code))}</code></pre>"
            )
        elif line.lstrip().startswith(">"):
            flush()
            quoted = []
            while i < len(lines) and lines[i].lstrip().startswith(">"):
                quoted.append(re.sub(r"^\s*>\s?", "", lines[i]))
                i += 1
            out.append(
                '<blockquote style="border-left:3px solid #ccc;margin:4px 0;padding:0 8px;'
                f'color:#333">{markdown_html(chr(10).join(quoted))}</blockquote>'
            )
            continue
        elif heading := _HEADING.match(line):
            flush()
            out.append(f'<div style="margin:6px 0 2px"><b>{_inline(heading.group(2))}</b></div>')
        elif item := _ITEM.match(line):
            flush()
            ordered = item.group(1)[0].isdigit()
            items = []
            while i < len(lines) and (found := _ITEM.match(lines[i])):
                items.append(_inline(found.group(2)))
                i += 1
            tag = "ol" if ordered else "ul"
            lis = "".join(f"<li>{entry}</li>" for entry in items)
            out.append(f'<{tag} style="margin:4px 0;padding-left:1.5em">{lis}</{tag}>')
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "".join(out)


def notice(text: str) -> str:
    """A warning line; its own line height, as widgets set a tall one meant for controls."""
    return f'<div style="color:#b35900;line-height:1.4">{text_html(text)}</div>'


class Displayed:
    """Shows ``self.widget`` when the object is the last thing in a notebook cell."""

    widget: Any

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
