"""The grounded design coach without a runtime: its library, its check, its replies, its display.

A scripted embedder (words hashed into a vector) and a scripted chat model stand in for the
runtime, so what is tested is the coach's own logic: what it indexes, what it may say, and how
the reply is shown. tests/live/test_coach.py asks the real runtime.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_server import Answer, FakeServer, Lines, ollama_lines, refused_url

from labkit import Client
from labkit.course import grounding
from labkit.course.coach import Assistant
from labkit.course.coach_index import (
    LESSONS,
    CourseIndex,
    anchor,
    course_documents,
    lab_link,
    quotable_sentences,
)
from labkit.course.display import markdown_html
from labkit.errors import InvalidInput
from labkit.rag.documents import Document, parse_sections
from labkit.retry import RetryPolicy

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = ROOT / "tests" / "data" / "coach" / "messages.jsonl"


class Scripted:
    """Embeds by hashing words into 64 dimensions; chats with one fixed reply."""

    embed_model = "scripted-embed"
    model = "smollm2:135m"

    def __init__(self, reply: str = '{"quotes": [1]}') -> None:
        self.reply = reply
        self.chats: list[dict[str, Any]] = []

    def embed(self, texts: list[str], *, model: str | None = None, batch_size: int = 32) -> Any:
        rows = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in zip(rows, texts, strict=True):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                row[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return rows + 1e-3

    def chat(self, messages: list[dict[str, str]], **ask: Any) -> Any:
        self.chats.append({"messages": messages, **ask})
        return type("R", (), {"text": self.reply})()


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseIndex:
    return CourseIndex.build(Scripted(), cache=tmp_path_factory.mktemp("coach"), progress=False)


def link(passage: Any) -> str:
    return f"{passage.notebook}#{anchor(passage.heading)}" if passage.notebook else ""


# --- the evaluation set ---------------------------------------------------------------------


def test_the_evaluation_set_is_labelled_with_sections_that_exist() -> None:
    items = [json.loads(line) for line in MESSAGES.read_text().splitlines()]
    per_module = Counter(item["module"] for item in items)
    assert sorted(per_module) == [1, 2, 3, 4] and min(per_module.values()) >= 20
    for module in per_module:
        parts = Counter(i["split"] for i in items if i["module"] == module)
        assert set(parts) == {"tuning", "held-out"} and min(parts.values()) >= 10
    sections = {
        f"{doc.name} § {s.headings[-1]}"
        for doc, _ in course_documents()
        if doc.name.endswith(".ipynb")
        for s in doc.sections
    }
    for item in items:
        assert item["expected"], item["id"]
        missing = [label for label in item["expected"] if label not in sections]
        assert not missing, f"{item['id']} names sections no lesson has: {missing}"


# --- the library ----------------------------------------------------------------------------


def test_the_library_holds_every_lesson_each_guide_and_the_linked_docs() -> None:
    docs = {doc.name: modules for doc, modules in course_documents()}
    for module, notebooks in LESSONS.items():
        assert all(docs[name] == (module,) for name in notebooks)
        assert docs[f"guide-{module}"] == (module,)
    assert "labkit/retry.py" in docs and 4 in docs["labkit/retry.py"]
    guide = next(doc for doc, _ in course_documents() if doc.name == "guide-3")
    assert [s.headings[-1] for s in guide.sections] == ["Brief", "Checklist", "Worked example"]


def test_the_index_is_built_once_and_read_back_by_content(tmp_path: Path) -> None:
    embedder = Scripted()
    calls: list[int] = []
    original = embedder.embed

    def counting(texts: list[str], **kw: Any) -> Any:
        calls.append(len(texts))
        return original(texts, **kw)

    embedder.embed = counting  # type: ignore[method-assign]
    first = CourseIndex.build(embedder, cache=tmp_path, progress=False)
    built = sum(calls)
    again = CourseIndex.build(embedder, cache=tmp_path, progress=False)
    assert built == len(first) and sum(calls) == built + 1  # read back: one dimension check
    assert again.key == first.key and len(again) == len(first)
    docs = course_documents()
    doc, modules = docs[0]
    text = doc.text + "\n\nOne more line at the end of the last section."
    edited = Document(doc.name, doc.path, doc.title, text, parse_sections(text))
    changed = [(edited, modules), *docs[1:]]
    calls.clear()
    third = CourseIndex.build(embedder, cache=tmp_path, progress=False, documents=changed)
    assert third.key != first.key
    assert 0 < sum(calls) < 10  # only the changed passage is embedded again
    assert [p.name for p in tmp_path.iterdir()] == [third.key]  # the old index is removed


def test_quotable_sentences_leave_out_code_and_tables() -> None:
    text = "Use a timeout on every call.\n\n```python\nrequests.post(url)\n```\n\n| a | b |\n|---|---|\n- Retry only what may pass, never a 404."
    assert quotable_sentences(text) == [
        "Use a timeout on every call.",
        "Retry only what may pass, never a 404.",
    ]


def test_links_open_the_lesson_section_in_jupyterlab(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert (
        anchor("Which models are there? `GET /api/tags`") == "Which-models-are-there?-GET-/api/tags"
    )
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    # What jupyter_server sets: the notebook's full path; its root and base URL in a file.
    monkeypatch.setenv("JPY_SESSION_NAME", str(ROOT / "notebooks" / "01-local-model-apis.ipynb"))
    server = {"root_dir": str(ROOT), "base_url": "/user/ana/"}
    (tmp_path / "jpserver-1.json").write_text(json.dumps(server))
    assert lab_link("03-rag.ipynb", "The tuning knobs") == (
        "/user/ana/lab/tree/notebooks/03-rag.ipynb#The-tuning-knobs"
    )
    (tmp_path / "jpserver-1.json").unlink()  # older servers: a path relative to the root
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/01-local-model-apis.ipynb")
    assert lab_link("03-rag.ipynb", "The tuning knobs") == (
        "/lab/tree/notebooks/03-rag.ipynb#The-tuning-knobs"
    )
    monkeypatch.delenv("JPY_SESSION_NAME")  # not in Jupyter: relative to the current folder
    assert lab_link("03-rag.ipynb", "The tuning knobs") == "03-rag.ipynb#The-tuning-knobs"


# --- the check ------------------------------------------------------------------------------


def test_the_check_finds_invented_model_names_code_and_numbers() -> None:
    source = "all-MiniLM-L6-v2 reads 256 tokens; chunks of 250 tokens with 15% overlap."
    made_up = (
        "The default chunk size of all-MiniLM-L6-v2 is 800 tokens, see all-MiniLM-L6-v3.\n\n"
        "```python\nfrom datetime import timedelta64\n```"
    )
    found = grounding.unsupported(made_up, [source])
    assert {"800", "all-MiniLM-L6-v3", "timedelta64", "datetime"} <= set(found)
    assert "all-MiniLM-L6-v2" not in found
    assert grounding.unsupported("all-MiniLM-L6-v2 reads 256 tokens [1].", [source]) == []
    assert grounding.unsupported("Set `max_tokens` to 2048.", ["no such thing"]) == [
        "max_tokens",
        "2048",
    ]


def test_the_mode_follows_the_models_size() -> None:
    assert grounding.choose_mode("auto", "smollm2:135m") == "quote"
    assert grounding.choose_mode("auto", "smollm2") == "quote"
    assert grounding.choose_mode("auto", "qwen2.5:7b") == "generate"
    assert grounding.choose_mode("quote", "qwen2.5:7b") == "quote"
    with pytest.raises(InvalidInput, match="mode must be one of"):
        grounding.choose_mode("free", "m")
    with pytest.raises(InvalidInput, match="mode must be one of"):
        Assistant(1, Client(refused_url(), dialect="ollama", model="m"), mode="free")


# --- the replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "said", ['{"quotes": [2]}', "The default chunk size of all-MiniLM-L6-v3 is 800 tokens."]
)
def test_a_quoted_reply_holds_only_the_courses_words(course: CourseIndex, said: str) -> None:
    model = Scripted(said)
    message = "How much overlap should consecutive chunks have?"
    result = grounding.quote_reply(message, 3, course, model, link)  # type: ignore[arg-type]
    assert result.mode == "quote" and result.cited and result.unsupported == []
    asked = model.chats[0]
    assert asked["format"]["properties"]["quotes"]["maxItems"] <= 2  # it can only pick numbers
    quotes = [
        line[2:]
        for line in result.text.splitlines()
        if line.startswith("> ") and not line.startswith("> *")
    ]
    cited = [" ".join(p.text.split()) for p in result.cited]
    assert quotes and all(any(q in text for text in cited) for q in quotes)
    assert "800" not in result.text and "L6-v3" not in result.text
    assert re.search(r"\]\(03-rag\.ipynb#[^)\s]+\)", result.text)  # a link to the section


def test_a_generated_reply_gets_links_and_a_warning_for_what_it_made_up(
    course: CourseIndex,
) -> None:
    passages = course.search_vector(np.asarray(Scripted().embed(["chunk overlap tokens"])[0]), 3, 3)
    text = "Overlap helps [1]. Use all-MiniLM-L6-v3 with 800 tokens [2]."
    result = grounding.generate_reply(text, passages, link)
    assert result.cited == passages[:2]
    assert "all-MiniLM-L6-v3" in result.unsupported and "800" in result.unsupported
    assert "Sources:" in result.text and "Not in the passages it cites" in result.text


# --- the display ----------------------------------------------------------------------------


def test_markdown_replies_render_code_blocks_and_never_raw_html() -> None:
    shown = markdown_html(
        "Try this:\n\n```python\nprint(1 < 2)\n```\n\n- a [section](03-rag.ipynb#X)\n"
        "- [bad](javascript:alert(1)) <img src=x onerror=alert(1)>"
    )
    assert "```" not in shown and "<pre" in shown and "print(1 &lt; 2)" in shown
    assert '<a href="03-rag.ipynb#X"' in shown and "<ul" in shown
    assert "javascript:alert" not in re.findall(r'href="([^"]*)"', shown)[-1]
    assert "<img" not in shown and "&lt;img" in shown
    # A section's name may hold code: its link stays one link.
    label = markdown_html("[01.ipynb > `POST /api/chat`](01.ipynb#A-conversation)")
    assert label.count("<a ") == 1 and "<code>POST /api/chat</code></a>" in label


def test_the_grounded_coach_shows_its_passages_and_keeps_the_old_call(
    course: CourseIndex,
) -> None:
    client = Client(refused_url(), dialect="ollama", model="m", retry=RetryPolicy(attempts=1))
    coach = Assistant(3, client, course=course, max_tokens=40)  # the old keywords still work
    assert coach.grounded and coach.mode == "auto"
    notice = coach.send("How much overlap should chunks have?")
    assert "AI unavailable" in notice and coach.conversation.history == []


def test_importing_the_course_loads_neither_faiss_nor_the_coach() -> None:
    code = (
        "import sys, labkit.course\n"
        "assert 'faiss' not in sys.modules, 'faiss'\n"
        "assert 'labkit.course.coach_index' not in sys.modules\n"
        "import labkit.course.coach\n"
        "assert 'faiss' not in sys.modules, 'faiss after coach'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_big_model_writes_the_reply_and_its_citations_become_links(
    course: CourseIndex,
) -> None:
    written = ["Overlap keeps a sentence whole [1]. ", "Use all-MiniLM-L6-v3 at 800 tokens [2]."]
    listing = Answer(200, {"models": [{"name": "qwen2.5:7b"}]})
    stream = Lines(ollama_lines(written, model="qwen2.5:7b"))
    # The health check reads / and /api/tags, the picker the model list, then the chat.
    with FakeServer(Answer(200, "Ollama is running"), listing, listing, stream) as fake:
        big = Client(fake.url, dialect="ollama", model="qwen2.5:7b", retry=RetryPolicy(attempts=1))
        coach = Assistant(3, big, course=course)
        seen: list[str] = []
        coach.observe_pieces(seen.append)
        reply = coach.send("How much overlap should consecutive chunks have?")
    found = coach.last_grounded
    assert found is not None and found.mode == "generate" and seen == written
    assert reply.startswith("".join(written)) and "Sources:" in reply
    assert {"all-MiniLM-L6-v3", "800"} <= set(found.unsupported)
    assert "Not in the passages it cites" in coach.output.value and "<a href=" in coach.output.value
    assert "names or numbers not in its sources" in coach.status.value
