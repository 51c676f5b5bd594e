"""What grading writes: the gradebook, each learner's feedback, pass rates and their plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from labkit.grader.assign import Exercise, write_atomic
from labkit.grader.exercise import _json_bytes

__all__ = ["feedback", "pass_rates"]


def _scores(exercise: Exercise, result: dict[str, Any]) -> dict[str, float]:
    scores = {q.name: 0.0 for q in exercise.graded_questions}
    for test in result["tests"]:
        if test["question"] in scores:
            scores[test["question"]] += float(test.get("earned", 0.0))
    return {q: round(v, 4) for q, v in scores.items()}


def _write_outputs(
    out: Path, exercise: Exercise, results: list[dict[str, Any]], key_hash: str
) -> None:
    questions = [q.name for q in exercise.graded_questions]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["learner", *questions, "total", "possible", "status", "notes"])
    for result in results:
        scores = _scores(exercise, result)
        result["scores"], result["total"] = scores, round(sum(scores.values()), 4)
        status = ", ".join(result["status"]) or "ok"
        writer.writerow(
            [
                result["learner"],
                *(f"{scores[q]:g}" for q in questions),
                f"{result['total']:g}",
                f"{exercise.possible:g}",
                status,
                " | ".join(result["notes"]),
            ]
        )
    write_atomic(out / "gradebook.csv", table.getvalue().encode("utf-8"))
    for result in results:
        write_atomic(
            out / "feedback" / f"{result['learner']}.md", feedback(exercise, result).encode("utf-8")
        )
        if result.get("executed"):
            write_atomic(
                out / "executed" / f"{result['learner']}.ipynb", result["executed"].encode("utf-8")
            )
    rates = pass_rates(exercise, results)
    rate_table = io.StringIO()
    writer = csv.writer(rate_table, lineterminator="\n")
    writer.writerow(["test", "question", "hidden", "description", "passed", "graded", "rate"])
    for row in rates:
        writer.writerow(
            [
                row["test"],
                row["question"],
                row["hidden"],
                row["description"],
                row["passed"],
                row["graded"],
                f"{row['rate']:.3f}",
            ]
        )
    write_atomic(out / "pass_rates.csv", rate_table.getvalue().encode("utf-8"))
    write_atomic(out / "pass_rates.png", _plot(exercise, rates))
    kept = {r["learner"]: {k: v for k, v in r.items() if k != "executed"} for r in results}
    write_atomic(out / "state.json", _json_bytes({"key": key_hash, "results": kept}))


def pass_rates(exercise: Exercise, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each test: how many learners passed it, out of everyone graded."""
    rows = []
    results = [r for r in results if "not-graded" not in r["status"]]  # skipped entries
    for q in exercise.graded_questions:
        for t in q.tests:
            passed = sum(
                1
                for r in results
                for x in r["tests"]
                if x["name"] == t.name and x["status"] == "passed"
            )
            graded = len(results)
            rows.append(
                {
                    "test": t.name,
                    "question": q.name,
                    "hidden": t.hidden,
                    "description": t.description,
                    "passed": passed,
                    "graded": graded,
                    "rate": passed / graded if graded else 0.0,
                }
            )
    return rows


def _plot(exercise: Exercise, rates: list[dict[str, Any]]) -> bytes:
    """A bar per test: the share of the class that passed it (hidden tests hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["test"] + (" (hidden)" if r["hidden"] else "") for r in rates]
    values = [100 * r["rate"] for r in rates]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rates) + 1.5))
    bars = ax.barh(labels, values, color=["#8da0cb" if r["hidden"] else "#66c2a5" for r in rates])
    for bar, r in zip(bars, rates, strict=True):
        if r["hidden"]:
            bar.set_hatch("//")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("learners who passed (%)")
    ax.set_title(
        f"{exercise.name}: pass rate per test ({rates[0]['graded'] if rates else 0} notebooks)"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


_ICONS = {"passed": "✅", "not-implemented": "🚧", "timeout": "⏱️"}


def feedback(exercise: Exercise, result: dict[str, Any]) -> str:
    """A learner's feedback in Markdown: score, each test's outcome, what happened."""
    scores = _scores(exercise, result)
    status = ", ".join(result["status"]) or "ok"
    lines = [
        f"# {exercise.name}: feedback for {result['learner']}",
        "",
        f"**Score: {sum(scores.values()):g} / {exercise.possible:g}** · status: {status}",
        "",
    ]
    for q in exercise.graded_questions:
        lines += [f"## {q.name}: {scores[q.name]:g} / {q.points:g} points", ""]
        for test in (t for t in result["tests"] if t["question"] == q.name):
            icon = _ICONS.get(test["status"], "❌")
            label = test["name"] + (" (hidden test)" if test["hidden"] else "")
            about = f": {test['description']}" if test.get("description") else ""
            worth = f" ({float(test.get('earned', 0)):g}/{float(test['points']):g})"
            lines.append(f"- {icon} {label}{about}{worth}")
            if test["status"] != "passed" and test.get("message"):
                lines.append(f"  - {test['message']}")
            if test["status"] != "passed" and test.get("hint"):
                lines.append(f"  - Hint: {test['hint']}")
        lines.append("")
    if result["notes"]:
        lines += ["## What happened when your notebook ran", ""]
        lines += [f"- {note}" for note in result["notes"]]
        lines.append("")
    manual = [q.name for q in exercise.questions if q.manual]
    if manual:
        lines += [f"Questions graded by a person ({', '.join(manual)}) are not in this score.", ""]
    return "\n".join(lines)
