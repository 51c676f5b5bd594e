"""What grading writes: the gradebook, each learner's feedback, pass rates and their plot.

Everything here may be opened by someone who trusts it: the instructor's spreadsheet, a
learner's Markdown viewer. Names come from file names and messages from learners' code,
so each is made inert where it lands: a CSV cell cannot start a formula, Markdown text
cannot make a heading, link, image or HTML, and what a note may carry is capped and
filtered for hidden test code. Why a hidden test failed (``detail``) goes to the
instructor's folder only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from labkit.grader.exercise import Exercise, json_bytes, write_atomic

__all__ = [
    "JOURNAL",
    "MAX_NOTES",
    "NOTE_CHARS",
    "STATE",
    "append_journal",
    "csv_cell",
    "feedback",
    "file_stem",
    "hidden_code",
    "instructor_notes",
    "markdown_text",
    "pass_rates",
    "previous_results",
    "tidy_result",
    "write_book",
    "write_outputs",
    "write_rates",
    "write_row_files",
]


NOTE_CHARS = 300  # characters kept of one note: enough to say what happened, not to smuggle


MAX_NOTES = 8  # notes kept per learner; the rest are counted, not shown


MESSAGE_CHARS = 600  # characters kept of a test's message or hint


STATE = "state.json"  # every kept result, rewritten whole at the start and end of a run


JOURNAL = "state-journal.jsonl"  # results graded since, one line each


DETAIL_CHARS = 4000  # characters kept of a hidden test's detail, for the instructor


# Spreadsheets treat a cell that starts with one of these as a formula (or run it as one
# after a tab or line break); the full-width forms are read as formulas in some locales.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


# Control characters, line and paragraph breaks, zero-width and bidirectional controls:
# they can break a Markdown line apart or make text read differently than it is stored.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


# Markdown (and Jupyter's $math$) punctuation, escaped with a backslash where it is text.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-!|~$])")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = str(value)
    if text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text  # the prefix spreadsheets themselves use for "this is text"
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text


def markdown_text(value: object, limit: int | None = None) -> str:
    """``value`` as one line of Markdown text: no formatting, link, HTML or line break."""
    text = _UNSAFE_CHARS.sub(" ", str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def _code_block(value: object, limit: int) -> list[str]:
    """``value`` as a fenced code block that no line of it can close early."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = _UNSAFE_CHARS.sub(lambda m: m[0] if m[0] == "\n" else " ", text)
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *text.splitlines(), fence]


def file_stem(name: str) -> str:
    """A file name for a row's files: ``name`` itself when it is a safe one."""
    clean = _UNSAFE_CHARS.sub("_", name).replace("/", "_")
    if clean in ("", ".", "..") or clean.startswith("."):
        clean = "_" + clean
    if clean != name or len(clean.encode()) > 200:  # two names must not share a file
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        clean = clean.encode()[:180].decode(errors="ignore") + "-" + digest
    return clean


def hidden_code(exercise: Exercise) -> frozenset[str]:
    """Lines only hidden tests have (spaces removed), long enough to recognise in a note."""
    hidden: set[str] = set()
    shown: set[str] = set()
    for question in exercise.questions:
        for test in question.tests:
            lines = {"".join(line.split()) for line in test.code.splitlines()}
            (hidden if test.hidden else shown).update(lines)
    return frozenset(line for line in hidden - shown if len(line) >= 10)


def _quotes_hidden(text: str, secrets: frozenset[str]) -> bool:
    squeezed = "".join(text.split())  # "assert  x ==1" quotes "assert x == 1" too
    return any(line in squeezed for line in secrets)


def tidy_result(result: dict[str, Any], secrets: frozenset[str]) -> dict[str, Any]:
    """Cap and filter what a result carries into feedback and the gradebook (in place).

    Notes and public tests' messages quote the learner's code and output: each is capped,
    one that quotes hidden test code is withheld, and only the first notes are kept.
    """
    notes = []
    for note in result.get("notes", []):
        text = _UNSAFE_CHARS.sub(" ", str(note))  # one line in the gradebook, read as stored
        if _quotes_hidden(text, secrets):
            text = "A note quoted hidden test code and was withheld."
        elif len(text) > NOTE_CHARS:
            text = text[: NOTE_CHARS - 1] + "…"
        notes.append(text)
    if len(notes) > MAX_NOTES:
        more = len(notes) - (MAX_NOTES - 1)
        notes = [*notes[: MAX_NOTES - 1], f"… and {more} more notes, not shown."]
    result["notes"] = notes
    for test in result.get("tests", []):
        for key in ("message", "hint"):
            text = str(test.get(key) or "")
            if _quotes_hidden(text, secrets):
                test["message"], test["hint"] = "This test's message was withheld.", ""
                break
            test[key] = text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
    return result


def _scores(exercise: Exercise, result: dict[str, Any]) -> dict[str, float]:
    scores = {q.name: 0.0 for q in exercise.graded_questions}
    for test in result["tests"]:
        if test["question"] in scores:
            scores[test["question"]] += float(test.get("earned", 0.0))
    return {q: round(v, 4) for q, v in scores.items()}


def write_outputs(
    out: Path, exercise: Exercise, results: list[dict[str, Any]], key_hash: str
) -> None:
    """Everything at once: each row's files, the gradebook, the state and the pass rates."""
    for result in results:
        write_row_files(out, exercise, result)
    write_book(out, exercise, results, key_hash)
    write_rates(out, exercise, results)


def write_row_files(out: Path, exercise: Exercise, result: dict[str, Any]) -> None:
    """One row's feedback, executed notebook and instructor notes."""
    stem = file_stem(result["learner"])
    write_atomic(out / "feedback" / f"{stem}.md", feedback(exercise, result).encode("utf-8"))
    if result.get("executed"):
        write_atomic(out / "executed" / f"{stem}.ipynb", result["executed"].encode("utf-8"))
    if "not-graded" not in result["status"]:
        text = instructor_notes(exercise, result)
        write_atomic(out / "instructor" / f"{stem}.md", text.encode("utf-8"))


def write_book(
    out: Path,
    exercise: Exercise,
    results: list[dict[str, Any]],
    key_hash: str,
    pending: list[str] | None = None,
    *,
    state: bool = True,
) -> None:
    """The gradebook (and with ``state`` the state a later run reuses), each replaced whole.

    ``pending`` names learners still being graded: they get a row that says so, and no
    state, so a run that is stopped here grades them next time.
    """
    questions = [q.name for q in exercise.graded_questions]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["learner", *questions, "total", "possible", "status", "notes"])
    rows: list[tuple[str, list[str]]] = []
    for result in results:
        scores = _scores(exercise, result)
        result["scores"], result["total"] = scores, round(sum(scores.values()), 4)
        status = ", ".join(result["status"]) or "ok"
        cells = [*(f"{scores[q]:g}" for q in questions), f"{result['total']:g}"]
        rows.append((result["learner"], [*cells, status, " | ".join(result["notes"])]))
    for learner in pending or []:
        note = "Not graded yet: grading stopped first; run `labkit grade` again to grade it."
        rows.append((learner, [*("0" for _ in questions), "0", "pending", note]))
    for learner, cells in sorted(rows, key=lambda row: row[0]):
        row = [learner, *cells[:-2], f"{exercise.possible:g}", *cells[-2:]]
        writer.writerow([csv_cell(cell) for cell in row])
    write_atomic(out / "gradebook.csv", table.getvalue().encode("utf-8"))
    if not state:
        return
    kept = {r["learner"]: _kept(r) for r in results if "not-graded" not in r["status"]}
    write_atomic(out / STATE, json_bytes({"key": key_hash, "results": kept}))
    (out / JOURNAL).unlink(missing_ok=True)  # all it held is in the state now


def _kept(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "executed"}


def append_journal(out: Path, key_hash: str, result: dict[str, Any]) -> None:
    """Add one result to the state, appended: rewriting a class's state per row costs seconds."""
    line = json.dumps({"key": key_hash, "result": _kept(result)}, separators=(",", ":"))
    with (out / JOURNAL).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # a run killed from here on still has this row


def previous_results(out: Path, key_hash: str) -> dict[str, dict[str, Any]]:
    """The results a run in ``out`` kept for this key: its state, then its journal."""
    try:
        state = json.loads((out / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    results: dict[str, dict[str, Any]] = {}
    if isinstance(state, dict) and state.get("key") == key_hash:
        results.update(state.get("results") or {})
    try:
        lines = (out / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # the last line of a run killed while writing it
            continue
        if isinstance(entry, dict) and entry.get("key") == key_hash:
            results[entry["result"]["learner"]] = entry["result"]
    return results


def write_rates(out: Path, exercise: Exercise, results: list[dict[str, Any]]) -> None:
    """Write each test's pass rate: ``pass_rates.csv`` and its bar plot."""
    rates = pass_rates(exercise, results)
    rate_table = io.StringIO()
    writer = csv.writer(rate_table, lineterminator="\n")
    writer.writerow(["test", "question", "hidden", "description", "passed", "graded", "rate"])
    for row in rates:
        cells = [row["test"], row["question"], row["hidden"], row["description"]]
        cells += [row["passed"], row["graded"], f"{row['rate']:.3f}"]
        writer.writerow([csv_cell(cell) for cell in cells])
    write_atomic(out / "pass_rates.csv", rate_table.getvalue().encode("utf-8"))
    write_atomic(out / "pass_rates.png", _plot(exercise, rates))


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
        f"# {markdown_text(exercise.name)}: feedback for {markdown_text(result['learner'])}",
        "",
        f"**Score: {sum(scores.values()):g} / {exercise.possible:g}** · "
        f"status: {markdown_text(status)}",
        "",
    ]
    for q in exercise.graded_questions:
        lines += [f"## {markdown_text(q.name)}: {scores[q.name]:g} / {q.points:g} points", ""]
        for test in (t for t in result["tests"] if t["question"] == q.name):
            icon = _ICONS.get(test["status"], "❌")
            label = markdown_text(test["name"]) + (" (hidden test)" if test["hidden"] else "")
            about = f": {markdown_text(test['description'])}" if test.get("description") else ""
            worth = f" ({float(test.get('earned', 0)):g}/{float(test['points']):g})"
            lines.append(f"- {icon} {label}{about}{worth}")
            if test["status"] != "passed" and test.get("message"):
                lines.append(f"  - {markdown_text(test['message'], MESSAGE_CHARS)}")
            if test["status"] != "passed" and test.get("hint"):
                lines.append(f"  - Hint: {markdown_text(test['hint'], MESSAGE_CHARS)}")
        lines.append("")
    if result["notes"]:
        lines += ["## What happened when your notebook ran", ""]
        lines += [f"- {markdown_text(note, NOTE_CHARS)}" for note in result["notes"][:MAX_NOTES]]
        lines.append("")
    manual = [markdown_text(q.name) for q in exercise.questions if q.manual]
    if manual:
        lines += [f"Questions graded by a person ({', '.join(manual)}) are not in this score.", ""]
    return "\n".join(lines)


def instructor_notes(exercise: Exercise, result: dict[str, Any]) -> str:
    """For the instructor only: why each test failed, hidden ones included, and each attempt."""
    scores = _scores(exercise, result)
    status = ", ".join(result["status"]) or "ok"
    lines = [
        f"# {markdown_text(exercise.name)}: {markdown_text(result['learner'])} "
        "(instructor only: do not hand out)",
        "",
        f"- File: {markdown_text(result.get('file', ''))}",
        f"- Score: {sum(scores.values()):g} / {exercise.possible:g} · status: "
        f"{markdown_text(status)}",
        f"- Graded in {result.get('attempts', 1)} attempt(s)",
    ]
    lines += [
        f"- Earlier attempt: {markdown_text(x, NOTE_CHARS)}" for x in result.get("retried", [])
    ]
    lines.append("")
    failed = [t for t in result["tests"] if t["status"] != "passed"]
    for test in failed:
        kind = "hidden" if test["hidden"] else "public"
        lines.append(f"## {markdown_text(test['name'])} ({kind}): {markdown_text(test['status'])}")
        lines.append("")
        if test.get("message"):
            lines += [f"Learner saw: {markdown_text(test['message'], MESSAGE_CHARS)}", ""]
        if test.get("detail"):
            lines += [*_code_block(test["detail"], DETAIL_CHARS), ""]
    if not failed:
        lines += ["Every test passed.", ""]
    return "\n".join(lines)
