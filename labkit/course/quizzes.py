"""Questions in the notebooks: multiple choice (``quiz``) and typed answers (``free_text``).

Each learner sees a quiz's options in their own order, the same every time they open the
notebook: the order comes from who they are (``learner()``) and the question, so "it's B"
passed along a row of desks is no help, and the right answer is not always in the same place::

    q = quiz("What does stream=true change?", ["Nothing", "Text arrives in pieces"], 1)
    q.submit("Text arrives in pieces")   # the option's text always works

A wrong answer first gets a hint, which points at the idea without naming the answer; the
explanation (which does name it) comes with the right answer, or after a second wrong one.
Hints are passed as ``hint=`` or kept in ``labkit/course/quiz_hints.py`` under the question.

Typed answers are compared loosely: case, spacing and punctuation do not matter, and numbers
are compared as numbers ("5,734", "5734.0" and "about 5734 tokens" are the same answer).
"""

from __future__ import annotations

import getpass
import hashlib
import math
import os
import random
import re
import secrets
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w

from labkit.course.display import Displayed, Feedback, text_html
from labkit.course.quiz_hints import hint_for
from labkit.errors import InvalidInput

__all__ = [
    "GENERIC_HINT",
    "LETTERS",
    "AnswerCheck",
    "FreeText",
    "Quiz",
    "free_text",
    "learner",
    "learner_id_path",
    "number",
    "option_order",
    "quiz",
    "same_answer",
]

LETTERS = "ABCDEFGHIJ"
# For a question nobody wrote a hint for: it names nothing, so it cannot give the answer away.
GENERIC_HINT = "Read the section above once more: which option does what it showed?"


def learner() -> str:
    """Who is answering: LABKIT_LEARNER, the JupyterHub user, or this home's own learner id."""
    for variable in ("LABKIT_LEARNER", "JUPYTERHUB_USER"):
        if name := os.environ.get(variable, "").strip():
            return name
    # Not the login name: under Binder or Docker everyone is `jovyan` or `root`.
    return _home_learner_id()


_ID = re.compile(r"[0-9a-f]{32}")
_known_ids: dict[Path, str] = {}  # read once per kernel and place


def learner_id_path() -> Path:
    """Where this learner's random id is kept: ``$XDG_CONFIG_HOME/labkit/learner-id``.

    The home, not ``$LABKIT_HOME``: that folder belongs to the runtime, may be shared by
    everyone using one checkout, and is copied into images built from the course folder.
    A home is one learner's. On Binder it lasts one session (the whole container goes when
    the session ends), so options keep their order across kernel restarts, not sessions.
    """
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".config") / "labkit" / "learner-id"


def _home_learner_id() -> str:
    """The id stored in the learner's home, made on first use; a fallback if it cannot be."""
    try:
        path = learner_id_path()
    except (RuntimeError, KeyError, OSError):  # no home at all
        return _fallback_id()
    if path not in _known_ids:
        try:
            _known_ids[path] = _stored_id(path)
        except OSError:  # a read-only or missing home: a quiz must still show
            _known_ids[path] = _fallback_id()
    return _known_ids[path]


def _stored_id(path: Path) -> str:
    """The id in ``path``; a new random one is written whole first if there is none."""
    with_id = _read_id(path)
    if with_id:
        return with_id
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_hex(16)
    handle, temporary = tempfile.mkstemp(prefix=".learner-id-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(new + "\n")
        try:
            # A link, not a rename: if another kernel got there first, its id wins and
            # both kernels show the same order. Readers never see a half-written file.
            os.link(temporary, path)
        except FileExistsError:
            if found := _read_id(path):
                return found
            os.replace(temporary, path)  # a damaged file is replaced whole
        except OSError:  # a file system without hard links
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return _read_id(path) or new


def _read_id(path: Path) -> str:
    """The id stored in ``path``, or "" if there is none (or only a damaged one)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text if _ID.fullmatch(text) else ""


def _fallback_id() -> str:
    """The machine's name with the login name: it differs between containers at least."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        login = "learner"
    return hashlib.sha256(f"{socket.gethostname()}\0{login}".encode()).hexdigest()[:32]


def option_order(quiz_id: str, count: int, who: str | None = None) -> list[int]:
    """The order (positions in the author's list) in which ``who`` sees ``count`` options."""
    # A hash, not Python's hash(): it must not change between kernel restarts.
    seed = hashlib.sha256(f"{who if who is not None else learner()}\0{quiz_id}".encode())
    order = list(range(count))
    random.Random(seed.hexdigest()).shuffle(order)
    return order


class Quiz(Displayed):
    """A multiple-choice question: pick one option, press Check, read the feedback.

    ``answer`` names the right option in the author's list (a letter, a 0-based position or
    the option's text). The options are shown shuffled per learner unless ``shuffle=False``;
    after that, letters and positions given to ``check`` mean what the learner sees.
    A first wrong answer gets ``hint`` (by default the one ``quiz_hints`` holds for the
    question); the right answer, or a second wrong one, gets ``explanation``.
    """

    def __init__(
        self,
        question: str,
        options: Sequence[str],
        answer: str | int,
        explanation: str = "",
        *,
        hint: str | None = None,
        id: str | None = None,
        shuffle: bool = True,
        who: str | None = None,
    ) -> None:
        if not 2 <= len(options) <= len(LETTERS):
            raise InvalidInput(f"A quiz needs 2 to {len(LETTERS)} options, not {len(options)}.")
        authored = [str(option) for option in options]
        given = _index(authored, answer)
        if given is None:
            raise InvalidInput(
                f"The answer {answer!r} is none of the options: give a letter (A, B, ...), "
                "a 0-based position, or the option's exact text."
            )
        self.question, self.explanation = question, explanation
        self.hint = hint or hint_for(question) or GENERIC_HINT
        self.tried: set[int] = set()  # the wrong options chosen so far (as the learner sees them)
        self.solved = False
        self.id = id or hashlib.sha256(question.encode()).hexdigest()[:12]
        self.order = (
            option_order(self.id, len(authored), who) if shuffle else list(range(len(authored)))
        )
        self.options = [authored[i] for i in self.order]
        self.answer = self.order.index(given)  # where the learner sees the right option
        self.labels = [f"{LETTERS[i]}. {text}" for i, text in enumerate(self.options)]
        self.choice = w.RadioButtons(options=self.labels, value=None, layout={"width": "auto"})
        self.button = w.Button(description="Check", button_style="primary")
        self.output = w.HTML()
        self.button.on_click(lambda _: self.submit(self.choice.value))
        title = w.HTML(f"<b>{text_html(question)}</b>")
        self.widget = w.VBox([title, self.choice, self.button, self.output])
        self.feedback: Feedback | None = None
        # A click can reach the kernel before the newly chosen option does: once feedback is
        # showing, a change of choice re-checks, so the feedback always matches the choice.
        self.choice.observe(self._recheck, names="value")

    def _index(self, choice: str | int | None) -> int | None:
        return _index(self.options, choice)

    @property
    def revealed(self) -> bool:
        """True once the explanation is shown: after the right answer or two wrong ones."""
        return self.solved or len(self.tried) >= 2

    def check(self, choice: str | int | None) -> Feedback:
        """Judge ``choice`` without touching the display (nor counting it as a try)."""
        index = self._index(choice)
        if index is None:
            return Feedback(False, "Choose one of the options, then press Check.")
        if index == self.answer:
            return Feedback(True, "Correct!", self.explanation)
        # The same wrong option twice is one wrong answer: only a second one reveals.
        if self.revealed or len(self.tried | {index}) >= 2:
            return Feedback(
                False, f"Not quite — the answer is {self.labels[self.answer]}", self.explanation
            )
        return Feedback(False, "Not quite — a hint, then try again:", self.hint)

    def _recheck(self, change: dict[str, Any]) -> None:
        if self.feedback is not None and change["new"] is not None:
            self._judge(self._index(change["new"]))

    def _judge(self, index: int | None) -> Feedback:
        """Judge, count the try and show the feedback."""
        self.feedback = self.check(index)
        if index == self.answer:
            self.solved = True
        elif index is not None:
            self.tried.add(index)
        self.output.value = self.feedback.html()
        return self.feedback

    def submit(self, choice: str | int | None) -> Feedback:
        """Judge ``choice``, select it in the widget and show the feedback."""
        index = self._index(choice)
        if index is not None:
            self.choice.value = self.labels[index]
        return self._judge(index)


def _index(options: Sequence[str], choice: str | int | None) -> int | None:
    """Which option ``choice`` names: a position, the option text, its label or its letter."""
    if isinstance(choice, bool):  # True is an int to Python, but never a position
        return None
    if isinstance(choice, int):
        return choice if 0 <= choice < len(options) else None
    if not isinstance(choice, str) or not choice.strip():
        return None
    text = choice.strip()
    for i, option in enumerate(options):  # the text first: an option may be "A"
        if _normal(option) == _normal(text) or text == f"{LETTERS[i]}. {option}":
            return i
    if len(text) == 1:
        index = LETTERS.find(text.upper())
        return index if 0 <= index < len(options) else None
    return None


def quiz(
    question: str,
    options: Sequence[str],
    answer: str | int,
    explanation: str = "",
    **settings: Any,
) -> Quiz:
    """A multiple-choice question widget (``answer``: a letter, a 0-based position or the text)."""
    return Quiz(question, options, answer, explanation, **settings)


# --- typed answers ----------------------------------------------------------------------------

AnswerCheck = Callable[[str], bool] | str | float | Sequence[str | float]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?|[-+]?[.,]\d+")
_ARTICLES = {"a", "an", "the"}


def _normal(text: str) -> str:
    """Text compared loosely: case, spacing, punctuation and a leading article do not matter."""
    words = re.sub(r"[^\w\s]", "", text.casefold()).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def _numbers(text: str) -> list[float]:
    """The numbers written in ``text``: "5,734" and "5734.0" are one number, "0,5" is a half."""
    found = []
    for match in _NUMBER.findall(text):
        if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", match):
            match = match.replace(",", "")  # thousands separators
        found.append(float(match.replace(",", ".")))
    return found


def number(value: float, tolerance: float = 0.0) -> Callable[[str], bool]:
    """A checker for a numeric answer: exactly one number in the text, within ``tolerance``."""

    def check(answer: str) -> bool:
        found = _numbers(answer)
        return len(found) == 1 and math.isclose(found[0], value, rel_tol=1e-9, abs_tol=tolerance)

    return check


def same_answer(answer: str, accepted: str | float) -> bool:
    """True if ``answer`` says the same as ``accepted``: numbers as numbers, words loosely."""
    return _accepts([accepted])(answer)


def _is_number(text: str | float) -> bool:
    if isinstance(text, int | float):
        return True
    return re.fullmatch(r"\s*" + _NUMBER.pattern + r"\s*", text) is not None


class FreeText(Displayed):
    """A question answered in words: type, press Check (or Enter), read the feedback.

    As with a quiz, a first wrong answer gets the hint and the explanation comes with the
    right answer or a second, different, wrong one.
    """

    def __init__(
        self,
        question: str,
        check: AnswerCheck,
        explanation: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        if isinstance(check, str | int | float):
            check = [check]
        if not callable(check):
            accepted = list(check)
            if not accepted:
                raise InvalidInput("free_text() needs at least one accepted answer or a function.")
            check = _accepts(accepted)
        self.question, self.explanation = question, explanation
        self.hint = hint or hint_for(question) or GENERIC_HINT
        self.tried: set[str] = set()  # the wrong answers given so far, compared loosely
        self.solved = False
        self._check: Callable[[str], bool] = check
        self.text = w.Text(placeholder="Your answer", continuous_update=False)
        self.button = w.Button(description="Check", button_style="primary")
        self.output = w.HTML()
        self.button.on_click(lambda _: self.submit(self.text.value))
        self.text.observe(lambda change: self.submit(change["new"]), names="value")
        title = w.HTML(f"<b>{text_html(question)}</b>")
        self.widget = w.VBox([title, w.HBox([self.text, self.button]), self.output])
        self.feedback: Feedback | None = None

    @property
    def revealed(self) -> bool:
        """True once the explanation is shown: after the right answer or two wrong ones."""
        return self.solved or len(self.tried) >= 2

    def check(self, answer: str) -> Feedback:
        """Judge ``answer`` without touching the display (nor counting it as a try)."""
        right, problem = self._verdict(answer)
        if problem:
            return Feedback(False, problem)
        if right:
            return Feedback(True, "Correct!", self.explanation)
        if self.revealed or len(self.tried | {_normal(answer)}) >= 2:
            return Feedback(False, "Not quite — here is the explanation:", self.explanation)
        return Feedback(False, "Not quite — a hint, then try again:", self.hint)

    def _verdict(self, answer: str) -> tuple[bool, str]:
        """(right, why it could not be judged: "" when it could)."""
        if not answer.strip():
            return False, "Type an answer, then press Check."
        try:
            return bool(self._check(answer)), ""
        except Exception as exc:  # a checker written in the notebook may fail on odd input
            return False, f"Could not check that answer ({exc})."

    def submit(self, answer: str) -> Feedback:
        """Judge ``answer``, put it in the text box and show the feedback."""
        self.feedback = self.check(answer)
        right, problem = self._verdict(answer)
        if right:
            self.solved = True
        elif not problem:
            self.tried.add(_normal(answer))
        self.text.value = answer  # Enter submits it again: the same answer, not a new try
        self.output.value = self.feedback.html()
        return self.feedback


def _accepts(accepted: Sequence[str | float]) -> Callable[[str], bool]:
    """A checker that accepts any of these answers: numbers as numbers, words loosely."""

    def check(answer: str) -> bool:
        for option in accepted:
            if _is_number(option):
                if number(float(str(option).replace(",", "")))(answer):
                    return True
            elif _normal(answer) == _normal(str(option)) != "":
                return True
        return False

    return check


def free_text(
    question: str, check: AnswerCheck, explanation: str = "", *, hint: str | None = None
) -> FreeText:
    """A typed-answer question; ``check`` is a function, or the accepted answers (or numbers)."""
    return FreeText(question, check, explanation, hint=hint)
