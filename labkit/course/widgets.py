"""Widgets for the notebooks: quizzes, a model picker, and the design-coach assistant.

Each widget keeps its logic apart from its display, so it can be used (and tested) from code
as well as by clicking::

    q = quiz("What does stream=true change?", ["Nothing", "Text arrives in pieces"], "B",
             "The server sends the answer piece by piece as the model writes it.")
    q                      # shows the question; the learner picks and presses Check
    q.submit("B")          # the same from code: returns the Feedback and shows it

    picker = model_picker(client)   # a dropdown of the runtime's chat models
    coach = assistant(2)            # a chat with the local model about Module 2's exercise
    coach.send("How should I handle documents longer than the context window?")

Nothing here needs a browser to work: every widget also runs in a plain Python session.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from labkit import discovery
from labkit.client import Client
from labkit.conversation import Conversation, Message, Summariser, summarise_with
from labkit.errors import InvalidInput, LabkitError, RuntimeUnavailable
from labkit.reply import Reply, Timeout

# --- shared bits ------------------------------------------------------------------------------


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
        explanation = f"<div>{_text_html(self.explanation)}</div>" if self.explanation else ""
        return (
            f'<div style="border-left:4px solid {colour};padding:4px 8px;margin-top:4px;'
            'line-height:1.4">'
            f'<b style="color:{colour}">{html.escape(self.message)}</b>{explanation}</div>'
        )


def _text_html(text: str) -> str:
    """Plain text as HTML: escaped, line breaks and spacing kept, `code` shown as code."""
    escaped = html.escape(text)
    return re.sub(r"`([^`\n]+)`", r"<code>\1</code>", escaped).replace("\n", "<br>")


class _Displayed:
    """Shows ``self.widget`` when the object is the last thing in a notebook cell."""

    widget: Any

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


# --- quizzes ----------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


class Quiz(_Displayed):
    """A multiple-choice question: pick one option, press Check, read the feedback."""

    def __init__(
        self,
        question: str,
        options: Sequence[str],
        answer: str | int,
        explanation: str = "",
    ) -> None:
        if not 2 <= len(options) <= len(LETTERS):
            raise InvalidInput(f"A quiz needs 2 to {len(LETTERS)} options, not {len(options)}.")
        self.question, self.options, self.explanation = question, list(options), explanation
        self.answer = self._index(answer)
        if self.answer is None:
            raise InvalidInput(
                f"The answer {answer!r} is none of the options: give a letter (A, B, ...), "
                "a 0-based position, or the option's exact text."
            )
        self.labels = [f"{LETTERS[i]}. {text}" for i, text in enumerate(self.options)]
        self.choice = w.RadioButtons(options=self.labels, value=None, layout={"width": "auto"})
        self.button = w.Button(description="Check", button_style="primary")
        self.output = w.HTML()
        self.button.on_click(lambda _: self.submit(self.choice.value))
        title = w.HTML(f"<b>{_text_html(question)}</b>")
        self.widget = w.VBox([title, self.choice, self.button, self.output])
        self.feedback: Feedback | None = None
        # A click can reach the kernel before the newly chosen option does: once feedback is
        # showing, a change of choice re-checks, so the feedback always matches the choice.
        self.choice.observe(self._recheck, names="value")

    def _index(self, choice: str | int | None) -> int | None:
        """Which option ``choice`` names: a position, the option text, its label or its letter."""
        if isinstance(choice, int):
            return choice if 0 <= choice < len(self.options) else None
        if not isinstance(choice, str) or not choice.strip():
            return None
        text = choice.strip()
        for i, option in enumerate(self.options):  # the text first: an option may be "A"
            if _same(option, text) or text == f"{LETTERS[i]}. {option}":
                return i
        if len(text) == 1:
            index = LETTERS.find(text.upper())
            return index if 0 <= index < len(self.options) else None
        return None

    def check(self, choice: str | int | None) -> Feedback:
        """Judge ``choice`` without touching the display."""
        index = self._index(choice)
        if index is None:
            return Feedback(False, "Choose one of the options, then press Check.")
        if index == self.answer:
            return Feedback(True, "Correct!", self.explanation)
        return Feedback(False, "Not quite — have another look.", self.explanation)

    def _recheck(self, change: dict[str, Any]) -> None:
        if self.feedback is not None and change["new"] is not None:
            self.feedback = self.check(change["new"])
            self.output.value = self.feedback.html()

    def submit(self, choice: str | int | None) -> Feedback:
        """Judge ``choice``, select it in the widget and show the feedback."""
        index = self._index(choice)
        if index is not None:
            self.choice.value = self.labels[index]
        self.feedback = self.check(choice)
        self.output.value = self.feedback.html()
        return self.feedback


def quiz(question: str, options: Sequence[str], answer: str | int, explanation: str = "") -> Quiz:
    """A multiple-choice question widget (``answer``: a letter, a 0-based position or the text)."""
    return Quiz(question, options, answer, explanation)


AnswerCheck = Callable[[str], bool] | str | Sequence[str]


def _normal(text: str) -> str:
    """Text compared loosely: case, spacing, quotes and end punctuation do not matter."""
    return " ".join(text.casefold().split()).strip(" .!?;:'\"`")


def _same(a: str, b: str) -> bool:
    return _normal(a) == _normal(b)


class FreeText(_Displayed):
    """A question answered in words: type, press Check (or Enter), read the feedback."""

    def __init__(self, question: str, check: AnswerCheck, explanation: str = "") -> None:
        if isinstance(check, str):
            check = [check]
        if not callable(check):
            accepted = [str(answer) for answer in check]
            if not accepted:
                raise InvalidInput("free_text() needs at least one accepted answer or a function.")
            check = _accepts(accepted)
        self.question, self.explanation = question, explanation
        self._check: Callable[[str], bool] = check
        self.text = w.Text(placeholder="Your answer", continuous_update=False)
        self.button = w.Button(description="Check", button_style="primary")
        self.output = w.HTML()
        self.button.on_click(lambda _: self.submit(self.text.value))
        self.text.observe(lambda change: self.submit(change["new"]), names="value")
        title = w.HTML(f"<b>{_text_html(question)}</b>")
        self.widget = w.VBox([title, w.HBox([self.text, self.button]), self.output])
        self.feedback: Feedback | None = None

    def check(self, answer: str) -> Feedback:
        """Judge ``answer`` without touching the display."""
        if not answer.strip():
            return Feedback(False, "Type an answer, then press Check.")
        try:
            right = bool(self._check(answer))
        except Exception as exc:  # a checker written in the notebook may fail on odd input
            return Feedback(False, f"Could not check that answer ({exc}).")
        if right:
            return Feedback(True, "Correct!", self.explanation)
        return Feedback(False, "Not quite — try again.", self.explanation)

    def submit(self, answer: str) -> Feedback:
        """Judge ``answer``, put it in the text box and show the feedback."""
        self.feedback = self.check(answer)
        self.text.value = answer
        self.output.value = self.feedback.html()
        return self.feedback


def _accepts(accepted: Sequence[str]) -> Callable[[str], bool]:
    """A checker that accepts any of these answers, compared loosely."""
    return lambda answer: any(_same(answer, option) for option in accepted)


def free_text(question: str, check: AnswerCheck, explanation: str = "") -> FreeText:
    """A typed-answer question; ``check`` is a function or the accepted answers."""
    return FreeText(question, check, explanation)


# --- finding the runtime without starting one ------------------------------------------------

UNAVAILABLE = "AI unavailable — run `labkit up` in a terminal, then try again."


def connect() -> Client:
    """A client for the runtime labkit finds; raises RuntimeUnavailable rather than start one."""
    # A widget must not start a runtime behind the learner's back: it says how to start one.
    found = discovery.find_runtime(start=False)
    return Client(
        found.url,
        dialect=found.dialect,
        model=found.chat_model or None,
        embed_model=found.embed_model or None,
    )


def chat_models(client: Client) -> list[str]:
    """The runtime's models that can chat (embedding models left out)."""
    names = client.models(timeout=Timeout(connect=3.0, read=10.0))
    chat = [name for name in names if not discovery._is_embedding(name)]
    return chat or names


# --- the model picker -------------------------------------------------------------------------


class ModelPicker(_Displayed):
    """A dropdown of the runtime's chat models; choosing one sets ``client.model``."""

    def __init__(self, client: Client | None = None, *, description: str = "Model") -> None:
        self.client = client
        self.problem = ""  # why the last refresh found no runtime ("" if it did)
        self.dropdown = w.Dropdown(description=description, options=[])
        self.message = w.HTML()
        self.refresh_button = w.Button(
            description="↻",
            tooltip="List the models again",
            layout={"width": "3em", "flex": "0 0 auto"},
        )
        self.refresh_button.on_click(lambda _: self.refresh())
        self.dropdown.observe(self._chosen, names="value")
        self.widget = w.HBox([self.dropdown, self.refresh_button, self.message])
        self.refresh()

    @property
    def value(self) -> str | None:
        """The chosen model (None while no runtime answers)."""
        value = self.dropdown.value
        return value if isinstance(value, str) else None

    def bind(self, client: Client | None) -> bool:
        """Use another client (the dropdown is listed again); True if its runtime answered."""
        self.client = client
        return self.refresh()

    def refresh(self) -> bool:
        """List the models again; True if the runtime answered."""
        try:
            if self.client is None:
                self.client = connect()
            # A quick probe first: listing models is retried, which is slow when nothing runs.
            health = self.client.health()
            if not health.up:
                raise RuntimeUnavailable(health.detail)
            names = chat_models(self.client)
        except LabkitError as exc:
            self.dropdown.options, self.dropdown.disabled = [], True
            self.problem = str(exc)
            self.message.value = _notice(UNAVAILABLE)
            self.message.tooltip = self.problem  # the details, on hover
            return False
        self.problem = self.message.tooltip = ""
        client = self.client
        listed = [name for name in names if name in (client.model, f"{client.model}:latest")]
        current = listed[0] if listed else (names[0] if names else None)
        self.dropdown.options, self.dropdown.disabled = names, not names
        self.dropdown.value = current
        self.message.value = "" if names else _notice("The runtime lists no chat models.")
        client.model = current
        return True

    def _chosen(self, change: Mapping[str, Any]) -> None:
        if self.client is not None and isinstance(change["new"], str):
            self.client.model = change["new"]


def model_picker(client: Client | None = None) -> ModelPicker:
    """A dropdown of the runtime's chat models, starting at the client's; it sets client.model."""
    return ModelPicker(client)


def _notice(text: str) -> str:
    """A warning line; its own line height, as widgets set a tall one meant for controls."""
    return f'<div style="color:#b35900;line-height:1.4">{_text_html(text)}</div>'


# --- the design-coach assistant ------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """What the assistant coaches in one module."""

    title: str
    system: str
    placeholder: str


_COACH = (
    "You are a friendly design coach in a course on building applications with language "
    "models that run on the learner's own computer. Give short, practical answers (at most "
    "six sentences or a short list), use small code examples only when asked, ask one "
    "question back when the learner's plan is unclear, and never write the whole solution. "
)

MODULES: dict[int, Module] = {
    1: Module(
        "Module 1 — Local model APIs",
        _COACH + "The exercise: a Python script that calls a local Ollama-style endpoint "
        "(POST http://127.0.0.1:11434/api/chat with model, messages and stream). Help with "
        "building the JSON request, reading the reply (message.content; OpenAI-style "
        "servers use choices[0].message.content), choosing streaming (text appears as it "
        "is written, good for people reading) or not (one JSON reply, good for programs), "
        "and handling errors: connection refused, timeouts, HTTP 404 for a missing model.",
        "Ask about your script: the request, streaming or not, errors…",
    ),
    2: Module(
        "Module 2 — Prompting for applications",
        _COACH + "The exercise: a document-classification pipeline on a local model. Help with "
        "the system prompt (role, task, output format, constraints), the JSON output and its "
        'field names (for example category, confidence, reason), enforcing it with "format": '
        '"json" or a JSON schema, validating every reply and logging failures, and '
        "documents longer than the context window: split them into chunks that use at "
        "most 70% of the window, keeping 30% for the answer, then combine the results.",
        "Ask about your classifier: system prompt, JSON fields, long documents…",
    ),
    3: Module(
        "Module 3 — Retrieval-augmented generation",
        _COACH + "The exercise: an assistant that answers questions about a company's HR policy "
        "documents and sends nothing to the cloud. Help with choosing a local embedding "
        "model (all-MiniLM-L6-v2: 384 dimensions, fast; nomic-embed-text for long "
        "texts; bge-m3 for many languages), chunking (200 to 400 tokens, 10-15% overlap), "
        "the vector store (FAISS on the same machine), how many passages to retrieve "
        "(start with 3), and a prompt that answers only from the passages and cites them.",
        "Ask about your HR assistant: embeddings, chunks, vector store, prompt…",
    ),
    4: Module(
        "Module 4 — Production",
        _COACH + "The exercise: make a working integration production-ready. Help with timeouts "
        "(30 s to connect, 120 s to read), retries (3, with exponential backoff, then a "
        "fallback message), structured logging (model, prompt or its hash, latency, "
        "reply length, whether it passed validation), graceful degradation when the model "
        "is down (a cached reply or a clear 'AI unavailable' message), health checks, and "
        "a deployment plan for a small team (one shared runtime as a service behind a "
        "reverse proxy, monitoring).",
        "Ask about timeouts, retries, logging, fallbacks or deployment…",
    ),
}

PieceObserver = Callable[[str], None]


class Assistant(_Displayed):
    """A chat with the local model, framed as a design coach for one module's exercise.

    ``send(text)`` streams the reply into the widget piece by piece and returns it. The
    conversation is kept inside the context window by a ``Conversation`` (the sliding window
    of Module 2). When no runtime answers, the widget says so and the next send tries again.
    """

    def __init__(
        self,
        module: int = 1,
        client: Client | None = None,
        *,
        max_tokens: int = 250,
        temperature: float = 0.3,
        seed: int | None = None,
        timeout: float = 60.0,
        context_tokens: int = 2048,
        keep_turns: int = 4,
        summarise: bool | Summariser = False,
    ) -> None:
        if module not in MODULES:
            raise InvalidInput(f"module must be one of {sorted(MODULES)}, not {module!r}.")
        self.module = MODULES[module]
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.timeout = timeout  # seconds for a whole reply, so a send never hangs the kernel
        summariser: Summariser | None = summarise if callable(summarise) else None
        if summarise is True:

            def summariser(previous: str, older: Sequence[Message]) -> str:
                # Ask through whichever client is current when the summary is due.
                return summarise_with(self._need_client())(previous, older)

        self.conversation = Conversation(
            self.module.system,
            context_tokens=context_tokens,
            keep_turns=keep_turns,
            summarise=summariser,
        )
        self.observers: list[PieceObserver] = []
        self.last_reply: Reply | None = None
        self._past = ""  # the transcript so far, as HTML (re-rendered only between turns)

        self.picker = ModelPicker(client)
        self.output = w.HTML(layout={"max_height": "420px", "overflow": "auto"})
        self.live = w.HTML()  # the reply being written
        # CSS classes name the parts, for custom styles (and for browser tests to find them).
        self.output.add_class("labkit-transcript")
        self.live.add_class("labkit-live")
        self.status = w.HTML()
        self.input = w.Text(
            placeholder=self.module.placeholder,
            continuous_update=False,  # the value arrives on Enter (or when the box loses focus)
            layout={"flex": "1"},
        )
        self.send_button = w.Button(description="Send", button_style="primary")
        self.clear_button = w.Button(description="New chat")
        self.input.observe(self._submitted, names="value")
        self.send_button.on_click(lambda _: self._submitted({"new": self.input.value}))
        self.clear_button.on_click(lambda _: self.clear())
        heading = w.HTML(f"<h4 style='margin:4px 0'>{html.escape(self.module.title)}</h4>")
        self.widget = w.VBox(
            [
                heading,
                self.picker.widget,
                self.output,
                self.live,
                w.HBox([self.input, self.send_button, self.clear_button]),
                self.status,
            ]
        )

    # The client is the picker's, so choosing a model in the dropdown is what send() uses.
    @property
    def client(self) -> Client | None:
        """The client the assistant talks through (None until a runtime was found)."""
        return self.picker.client

    @client.setter
    def client(self, client: Client | None) -> None:
        self.picker.bind(client)

    def observe_pieces(self, observer: PieceObserver) -> None:
        """Call ``observer(piece)`` for each piece of every reply, after the widget shows it."""
        self.observers.append(observer)

    def _need_client(self) -> Client:
        """The client to send through; after a failure, look for the runtime again first."""
        picker = self.picker
        if (picker.client is None or picker.value is None) and not picker.refresh():
            raise RuntimeUnavailable(picker.problem)
        assert picker.client is not None  # a successful refresh always leaves a client
        return picker.client

    def send(self, text: str) -> str:
        """Send ``text``, stream the reply into the widget, and return the reply text.

        If the runtime is unavailable or the message cannot be sent, the widget shows why and
        the returned text is that notice; nothing is raised for runtime problems.
        """
        text = text.strip()
        if not text:
            return ""
        self._add_entry("You", text)
        self.conversation.add_user(text)
        pieces: list[str] = []
        try:
            client = self._need_client()
            messages = self.conversation.messages()
            stream = client.stream(
                messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                seed=self.seed,
                options={"repeat_penalty": 1.15},  # keeps the tiny model from looping
                timeout=Timeout(connect=5.0, read=self.timeout),
            )
            deadline = time.monotonic() + self.timeout
            finished = True
            try:
                for piece in stream:
                    pieces.append(piece)
                    # Each assignment sends the new value to the browser at once, even while
                    # this cell (or button callback) is still running: the reply grows live.
                    self.live.value = self._bubble("Coach", "".join(pieces))
                    for observer in self.observers:
                        observer(piece)
                    if time.monotonic() > deadline:
                        finished = False
                        break
            finally:
                stream.close()  # closing the connection makes the runtime stop generating
            self.last_reply = stream.reply if finished else None
        except LabkitError as exc:
            return self._failed(exc, "".join(pieces))
        reply = "".join(pieces).strip()
        self.conversation.add_assistant(reply)
        self._add_entry("Coach", reply)
        if finished:
            self._show_status()
        else:
            self._add_entry("", f"(Stopped: the reply took longer than {self.timeout:g} s.)")
        return reply

    def _failed(self, exc: LabkitError, partial: str) -> str:
        """Show why there is no (complete) answer; keep the conversation consistent."""
        if partial.strip():
            self.conversation.add_assistant(partial.strip())  # what the learner already saw
            self._add_entry("Coach", partial.strip())
        else:
            self.conversation.undo()  # the question got no answer: it may be asked again
        if isinstance(exc, RuntimeUnavailable):
            notice = f"{UNAVAILABLE}\n({exc})"
            self.picker.refresh()  # show it there too; the next send checks again first
        else:
            notice = f"The assistant could not answer: {exc}"
        self._add_entry("", notice)
        self.status.value = ""
        return notice

    def _submitted(self, change: Mapping[str, Any]) -> None:
        """Enter in the text box or the Send button; errors are shown, never raised into Jupyter."""
        text = str(change["new"] or "").strip()
        if not text or self.send_button.disabled:
            return
        self.send_button.disabled = self.input.disabled = True
        self.input.value = ""
        try:
            self.send(text)
        except Exception as exc:  # a callback's exception would vanish into Jupyter's log
            self._add_entry("", f"Unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.send_button.disabled = self.input.disabled = False

    def clear(self) -> None:
        """Start a new conversation (same module, same model)."""
        self.conversation.clear()
        self._past = self.output.value = self.live.value = self.status.value = ""

    def _add_entry(self, who: str, text: str) -> None:
        self._past += self._bubble(who, text) if who else _notice(text)
        self.output.value = self._past
        self.live.value = ""

    @staticmethod
    def _bubble(who: str, text: str) -> str:
        return (
            # A normal line height: widgets set a tall one meant for one-line controls.
            f'<div style="margin:4px 0;line-height:1.4;white-space:pre-wrap">'
            f"<b>{html.escape(who)}:</b> "
            f"{html.escape(text)}</div>"
        )

    def _show_status(self) -> None:
        """One line on what was sent and how fast it came back: the numbers the course uses."""
        parts = [str(self.conversation.trimmed)]
        reply = self.last_reply
        if reply is not None:
            speed = reply.tokens_per_second
            parts.append(f"{reply.model} · {reply.latency:.1f} s")
            if speed:
                parts[-1] += f" · {speed:.0f} tokens/s"
        self.status.value = f'<small style="color:#666">{html.escape(" — ".join(parts))}</small>'


def assistant(module: int, client: Client | None = None, **options: Any) -> Assistant:
    """The design-coach chat for module 1-4, on the local runtime."""
    return Assistant(module, client, **options)
