"""Each module's design guide: the coach's brief, a checklist, questions and a worked example.

They are plain Markdown files in ``labkit/course/prompts/`` that an instructor can edit:
``coach.md`` (the coach's manner, shared) and ``module-<n>.md`` (one module's exercise). The
guide works without any model; the coach also quotes its worked example (coach_index.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib import resources

import ipywidgets as w

from labkit.course.display import Displayed, text_html
from labkit.errors import InvalidInput

__all__ = ["MODULES", "Module", "guide", "load_module"]


@dataclass(frozen=True)
class Module:
    """What the assistant coaches in one module, and the guide that works without a model."""

    title: str
    system: str
    placeholder: str
    checklist: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    example: tuple[tuple[str, str], ...] = ()  # (speaker, text) of a worked dialogue

    def guide_html(self) -> str:
        """The checklist, the suggested questions and the worked example, as HTML."""
        items = "".join(f"<li>☐ {text_html(item)}</li>" for item in self.checklist)
        asks = "".join(f"<li>{text_html(item)}</li>" for item in self.questions)
        lines = "".join(
            f'<div style="margin:2px 0"><b>{html.escape(who)}:</b> {text_html(text)}</div>'
            for who, text in self.example
        )
        style = "line-height:1.4"
        return (
            f'<div style="{style}"><b>Checklist for your design</b>'
            f'<ul style="list-style:none;padding-left:0.5em">{items}</ul>'
            f"<b>Questions worth asking</b><ul>{asks}</ul>"
            f"<b>A worked example</b>{lines}</div>"
        )


def _sections(text: str) -> tuple[str, dict[str, str]]:
    """A prompt file's title (its "# " line) and its "## " sections by lower-case name."""
    title, parts, name = "", {}, ""
    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
        elif line.startswith("## "):
            name = line[3:].strip().lower()
            parts[name] = ""
        elif name:
            parts[name] += line + "\n"
    return title, {key: value.strip() for key, value in parts.items()}


def _prompt_file(name: str) -> str:
    return (resources.files("labkit.course") / "prompts" / name).read_text(encoding="utf-8")


def load_module(number: int) -> Module:
    """Module ``number``'s coach, read from prompts/coach.md and prompts/module-<number>.md."""
    try:
        text = _prompt_file(f"module-{number}.md")
    except FileNotFoundError as exc:
        raise InvalidInput(f"There is no coach for module {number!r}.") from exc
    title, parts = _sections(text)
    missing = {"placeholder", "brief"} - parts.keys()
    if not title or missing:
        raise InvalidInput(
            f"prompts/module-{number}.md needs a '# title' and the sections {sorted(missing)}."
        )

    def bullets(section: str) -> tuple[str, ...]:
        lines = parts.get(section, "").splitlines()
        return tuple(line[2:].strip() for line in lines if line.startswith("- "))

    dialogue = []
    for line in parts.get("example", "").splitlines():
        who, sep, said = line.partition(":")
        if sep and who.strip() in {"You", "Coach"}:
            dialogue.append((who.strip(), said.strip()))
    return Module(
        title=title,
        system=f"{_prompt_file('coach.md').strip()} {parts['brief']}",
        placeholder=parts["placeholder"],
        checklist=bullets("checklist"),
        questions=bullets("questions"),
        example=tuple(dialogue),
    )


MODULES: dict[int, Module] = {number: load_module(number) for number in (1, 2, 3, 4)}


class _Guide(Displayed):
    def __init__(self, module: Module) -> None:
        self.widget = w.HTML(module.guide_html())


def guide(module: int) -> Displayed:
    """Module ``module``'s design guide on its own: checklist, questions, worked example."""
    if module not in MODULES:
        raise InvalidInput(f"module must be one of {sorted(MODULES)}, not {module!r}.")
    return _Guide(MODULES[module])
