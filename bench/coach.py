"""The design coach on its evaluation set: invented claims and right citations, per part.

Run: .venv/bin/python bench/coach.py [--mode auto|quote|generate] [--module N] [--part P]

Needs a running runtime (``labkit up``). Every message of tests/data/coach/messages.jsonl goes
to the coach of its module, as a learner would send it, and each reply is scored twice:

- **invented**: the reply states a number, code name or model name that none of the passages
  it cites contains (``labkit.course.grounding.unsupported``);
- **right section**: one of the lesson sections the reply quotes or cites is one the message
  is labelled with.

The tuning part and the held-out part are printed side by side, then per module. The goal on
the held-out part with the bundled model is 0 invented replies; the script exits 1 when it
is missed, so a run says plainly whether it holds. ``--show`` prints every reply.

``--chooser top`` leaves the chat model out of quote mode: the two best-scored sentences are
quoted, as if the model always chose [1, 2]. It runs in seconds, and shows what the model's
choice adds (or costs) against plain scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labkit import Client
from labkit.course import grounding
from labkit.course.coach import MODULES
from labkit.course.coach_index import CourseIndex, Passage, anchor
from labkit.errors import RuntimeUnavailable

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "data" / "coach" / "messages.jsonl"
PARTS = ("tuning", "held-out")


def load(path: Path = MESSAGES) -> list[dict[str, Any]]:
    """The evaluation messages, one dict per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def link(passage: Passage) -> str:
    """The lesson link as the coach writes it (relative to the course's notebooks)."""
    return f"{passage.notebook}#{anchor(passage.heading)}" if passage.notebook else ""


class TopChooser:
    """Stands in for the chat model in quote mode: always the two best-scored sentences."""

    model = "top-scored"

    def chat(self, messages: Any, **ask: Any) -> Any:
        return type("Choice", (), {"text": '{"quotes": [1, 2]}'})()


def reply(
    item: dict[str, Any], course: CourseIndex, client: Client, mode: str, top: bool = False
) -> grounding.Grounded:
    """The coach's reply to one evaluation message."""
    module = int(item["module"])
    if mode == "quote":
        chooser: Any = TopChooser() if top else client
        return grounding.quote_reply(item["message"], module, course, chooser, link)
    passages = course.search(item["message"], module)
    messages = grounding.generate_messages(item["message"], passages, MODULES[module].system)
    answer = client.chat(messages, temperature=0.0, seed=42, max_tokens=250)
    return grounding.generate_reply(answer.text, passages, link, answer)


def patient(ask: Callable[[], grounding.Grounded], tries: int = 4) -> grounding.Grounded:
    """``ask()``, asked again after a pause while the runtime restarts (a shared one may)."""
    for _ in range(tries - 1):
        try:
            return ask()
        except RuntimeUnavailable:
            time.sleep(20)
    return ask()


def score(
    items: Sequence[dict[str, Any]], results: Sequence[grounding.Grounded]
) -> list[dict[str, Any]]:
    """One row per message: invented claims, and whether a cited section is a labelled one."""
    rows = []
    for item, result in zip(items, results, strict=True):
        cited = [p.section for p in result.cited]
        rows.append(
            {
                "id": item["id"],
                "module": item["module"],
                "split": item["split"],
                "invented": result.unsupported,
                "right": any(section in item["expected"] for section in cited),
                "cited": cited,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Invented and right-citation counts, the parts side by side."""
    print(f"\n{title}")
    print(f"{'':24}" + "".join(f"{part:>14}" for part in PARTS))
    for label, key in (
        ("replies", None),
        ("invented (goal 0)", "invented"),
        ("right section", "right"),
    ):
        cells = []
        for part in PARTS:
            mine = [r for r in rows if r["split"] == part]
            if key is None:
                cells.append(f"{len(mine):>14}")
            else:
                count = sum(1 for r in mine if r[key])
                cells.append(f"{count:>9}/{len(mine):<4}")
        print(f"{label:24}" + "".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=grounding.MODES, default="auto")
    parser.add_argument("--module", type=int, choices=sorted(MODULES))
    parser.add_argument("--part", choices=PARTS)
    parser.add_argument("--model", help="chat model (default: the runtime's)")
    parser.add_argument("--show", action="store_true", help="print every reply")
    parser.add_argument(
        "--chooser", choices=("model", "top"), default="model", help="who picks the quotes"
    )
    args = parser.parse_args(argv)

    client = Client(model=args.model) if args.model else Client()
    mode = grounding.choose_mode(args.mode, client.model)
    chooser = "the two best-scored sentences" if args.chooser == "top" else client.model
    print(f"coach on {client.url}: mode {mode}, quotes chosen by {chooser}")
    started = time.monotonic()
    course = CourseIndex.build(client)
    print(f"{course} ready in {time.monotonic() - started:.1f} s")
    items = [
        item
        for item in load()
        if (args.module is None or item["module"] == args.module)
        and (args.part is None or item["split"] == args.part)
    ]
    results = []
    started = time.monotonic()
    for n, item in enumerate(items, start=1):
        result = patient(lambda item=item: reply(item, course, client, mode, args.chooser == "top"))
        results.append(result)
        if args.show:
            print(f"\n--- {item['id']} ({item['split']}): {item['message']}\n{result.text}")
        else:
            print(f"\r{n}/{len(items)} replies", end="", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(f"\n{len(items)} replies in {elapsed:.0f} s ({elapsed / max(1, len(items)):.1f} s each)")
    rows = score(items, results)
    table(rows, "All modules")
    for module in sorted({r["module"] for r in rows}):
        table([r for r in rows if r["module"] == module], f"Module {module}")
    for row in rows:
        if row["invented"]:
            print(f"✘ {row['id']} invented: {', '.join(row['invented'])}")
    held = [r for r in rows if r["split"] == "held-out"]
    invented = sum(1 for r in held if r["invented"])
    ok = invented == 0
    print(f"\n{'✔' if ok else '✘'} held-out replies with an invented claim: {invented} (goal 0)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
