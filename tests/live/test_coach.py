"""The grounded design coach on the live runtime: learner messages answered from the course.

The index holds a few sections of Module 3 and its design guide (embedded in seconds into a
temporary folder), so the test stays cheap; bench/coach.py runs the whole evaluation set on the
whole course. Each reply must state nothing its cited passages do not hold, and cite a section
the message is labelled with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import Client, discovery
from labkit.course.coach import Assistant
from labkit.course.coach_index import CourseIndex, course_documents
from labkit.course.grounding import unsupported
from labkit.rag.documents import Document, parse_sections

ROOT = Path(__file__).resolve().parents[2]
KEEP = {
    "Which embedding model?",
    "Comparing meanings: cosine similarity",
    "The tuning knobs",
    "6. When the handbook does not know",
    "7. Superseded policies: why dates and status matter",
    "8. Measuring retrieval: recall@k and MRR",
}
CASES = ("m3-10", "m3-12")  # the handbook does not say; measuring retrieval


def _few_sections() -> list[tuple[Document, tuple[int, ...]]]:
    """Module 3's lesson cut down to the KEEP sections, and Module 3's design guide."""
    docs = []
    for doc, modules in course_documents():
        if doc.name == "03-rag.ipynb":
            parts = [f"# {doc.title}"]
            for section in doc.sections:
                if section.headings and section.headings[-1] in KEEP:
                    parts.append(
                        f"## {section.headings[-1]}\n\n{doc.text[section.start : section.end]}"
                    )
            text = "\n\n".join(parts)
            docs.append(
                (Document(doc.name, doc.path, doc.title, text, parse_sections(text)), modules)
            )
        elif doc.name == "guide-3":
            docs.append((doc, modules))
    return docs


@pytest.fixture(scope="module")
def coach(rt: discovery.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    client = Client(rt.url, dialect=rt.dialect, model=rt.chat_model)
    course = CourseIndex.build(
        client, cache=tmp_path_factory.mktemp("coach"), documents=_few_sections(), progress=False
    )
    return Assistant(3, client, course=course, mode="quote", seed=7)


@pytest.mark.parametrize("case", CASES)
def test_the_coach_quotes_the_right_section_and_invents_nothing(
    coach: Assistant, case: str
) -> None:
    items = {
        item["id"]: item
        for item in map(
            json.loads, (ROOT / "tests/data/coach/messages.jsonl").read_text().splitlines()
        )
    }
    item = items[case]
    reply = coach.send(item["message"])
    found = coach.last_grounded
    assert found is not None and found.mode == "quote" and reply == found.text
    assert found.unsupported == []
    sources = [p.text for p in found.cited]
    quoted = "\n".join(
        line
        for line in reply.splitlines()
        if line.startswith("> ") and "*Question:*" not in line and "*Answer:*" not in line
    )
    assert quoted and unsupported(quoted, sources) == []  # the quotes themselves, checked again
    cited = [p.section for p in found.cited]
    assert set(cited) & set(item["expected"]), f"{case} cites {cited}, not {item['expected']}"
    # The transcript shows the reply rendered: quotes and a link to the lesson section.
    assert "<blockquote" in coach.output.value and 'href="' in coach.output.value
    assert "passages of the course this reply was drawn from" in coach.output.value
