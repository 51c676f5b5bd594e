"""A class where some learners attack the grader instead of solving the exercise.

Every notebook in tests/data/grading/submissions/attacks/ is one attack on exercise 04 (the
box-* ones are graded in test_grading_box.py, with tight limits); its
metadata says what it should get: ``"cheat"`` (no more than an untouched notebook) or
``"honest"`` (it solved the exercise as well: full marks). They are graded in one run beside
two honest learners and an untouched notebook, as a real class would be, and then:

- cheats score what the untouched notebook scores, honest learners keep full marks;
- no line of a hidden test, plain or base64/zlib-encoded, is in anything a learner can see;
- the run completes with a row for everyone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import needs_root

from labkit import discovery
from labkit.cli import main

PROJECT = Path(__file__).resolve().parents[2]
ATTACKS = PROJECT / "tests" / "data" / "grading" / "submissions" / "attacks"
KEY = PROJECT / "grading" / "hidden" / "04-production.json"
HONEST = ("honest-ada", "honest-bo")


@pytest.fixture(scope="module")
def graded(
    tmp_path_factory: pytest.TempPathFactory, rt: discovery.Runtime
) -> Iterator[dict[str, Any]]:
    """Grade the attackers, two honest learners and an untouched notebook in one run."""
    needs_root("grading attacks (the sandbox)")
    base = tmp_path_factory.mktemp("attacks")
    subs = base / "class"
    subs.mkdir()
    expect: dict[str, str] = {}
    # The box-* attacks (memory, disk, processes, time) are graded with tight limits by
    # test_grading_box.py; every other attack is graded here, at the default limits.
    for entry in sorted(p for p in ATTACKS.iterdir() if not p.name.startswith("box-")):
        shutil.copy(entry, subs / entry.name)  # a stray plain file (alice) comes too
        if entry.suffix == ".ipynb":
            meta = json.loads(entry.read_text(encoding="utf-8"))["metadata"]
            expect[entry.stem] = meta.get("labkit_expect", {}).get("learner", "cheat")
    for name in HONEST:
        shutil.copy(PROJECT / "solutions" / "04-production.ipynb", subs / f"{name}.ipynb")
        expect[name] = "honest"
    shutil.copy(PROJECT / "exercises" / "04-production.ipynb", subs / "untouched.ipynb")
    out = base / "class-grades"
    args = ["grade", str(subs), "--exercise", "04", "--root", str(PROJECT), "--quiet"]
    args += ["--workers", "2", "--runtime", rt.url]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(args)
    rows = {_unquoted(r["learner"]): r for r in csv.DictReader((out / "gradebook.csv").open())}
    yield {"code": code, "rows": rows, "expect": expect, "out": out, "printed": printed.getvalue()}


def _unquoted(cell: str) -> str:
    """A gradebook cell as typed: the quote that keeps a spreadsheet from running it, removed."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@", "\t", "\r") else cell


def test_the_run_completes_with_a_row_for_everyone(graded: dict[str, Any]) -> None:
    assert graded["code"] == 0, graded["printed"]
    assert set(graded["rows"]) >= set(graded["expect"]) | {"untouched"}
    # The stray plain file beside alice.ipynb has a row of its own; alice keeps hers.
    assert "alice (not-a-notebook)" in graded["rows"] and graded["expect"]["alice"] == "honest"


def test_cheats_score_no_more_than_an_untouched_notebook(graded: dict[str, Any]) -> None:
    rows = graded["rows"]
    floor = float(rows["untouched"]["total"])
    scores = {n: float(rows[n]["total"]) for n, e in graded["expect"].items() if e == "cheat"}
    assert scores, "no attack notebook expects to be caught"
    assert {n: s for n, s in scores.items() if s > floor} == {}, f"untouched scores {floor}"


def test_honest_learners_graded_beside_attackers_keep_full_marks(graded: dict[str, Any]) -> None:
    rows = graded["rows"]
    honest = [n for n, e in graded["expect"].items() if e == "honest"]
    short = {
        n: (rows[n]["total"], rows[n]["notes"])
        for n in honest
        if rows[n]["total"] != rows[n]["possible"]
    }
    assert short == {}


def _hidden_lines() -> set[str]:
    key = json.loads(KEY.read_text(encoding="utf-8"))
    hidden: set[str] = set()
    shown: set[str] = set()
    for question in key["questions"]:
        for test in question["tests"]:
            lines = {line.strip() for line in test["code"].splitlines()}
            (hidden if test["hidden"] else shown).update(lines)
    return {line for line in hidden - shown if len(line) >= 12}


def _decoded(text: str) -> Iterator[str]:
    """The text, and whatever base64 (then zlib) blobs in it decode to."""
    yield text
    for blob in re.findall(r"[A-Za-z0-9+/=_-]{24,}", text):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(blob + "=" * (-len(blob) % 4))
            except (binascii.Error, ValueError):
                continue
            with contextlib.suppress(zlib.error):
                raw = zlib.decompress(raw)
            yield raw.decode("utf-8", "replace")


def test_no_hidden_test_line_reaches_anything_a_learner_sees(graded: dict[str, Any]) -> None:
    secrets = _hidden_lines()
    assert len(secrets) > 20  # the check below has something to find
    leaks = []
    # What may be handed to learners: feedback, the gradebook, the executed notebooks (not
    # the instructor's notes, nor the grader's own state, which say why hidden tests failed).
    out = graded["out"]
    shared = [out / "gradebook.csv", *(out / "feedback").iterdir(), *(out / "executed").iterdir()]
    assert len(shared) > 2 * len(graded["expect"])
    for path in shared:
        text = path.read_text(encoding="utf-8", errors="replace")
        for decoded in _decoded(text):
            leaks += [(path.name, line) for line in secrets if line in decoded]
    assert leaks == []
