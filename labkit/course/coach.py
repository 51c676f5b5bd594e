"""The design coach: a chat about one module's design exercise, answered from the course.

A small model asked for advice invents (model names, code that does not run), so the coach
answers from the course itself: each message is searched in the lessons, the design guides and
the docs they link (``coach_index.py``), and the reply quotes or cites those passages with links
to their lesson sections (``grounding.py``). With the bundled 135M model the model only picks
which sentences to quote; a model of a few billion parameters writes the reply from the
passages and cites them. ``grounded=False`` gives the plain chat of earlier versions.

Next to the chat each module has a design guide that works without any model — a checklist,
questions worth asking, and a worked example of a good design conversation. The coach's
instructions and the guides are plain Markdown files in ``labkit/course/prompts/`` that an
instructor can edit. When the runtime lists several chat models, the coach starts on the
largest one (by the size in its name); the learner can pick another in its dropdown.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from labkit.client import Client
from labkit.conversation import Conversation, Message, Summariser, summarise_with
from labkit.course.coach_guide import MODULES, Module, guide, load_module
from labkit.course.display import Displayed, markdown_html, notice
from labkit.course.picker import UNAVAILABLE, ModelPicker
from labkit.errors import InvalidInput, LabkitError, RuntimeUnavailable
from labkit.reply import Reply, Timeout

if TYPE_CHECKING:
    from labkit.course.coach_index import CourseIndex, Passage
    from labkit.course.grounding import Grounded

__all__ = ["MODULES", "Assistant", "Module", "assistant", "guide", "load_module"]


PieceObserver = Callable[[str], None]


class Assistant(Displayed):
    """A design coach for one module's exercise, answering from the course.

    ``send(text)`` searches the course for the message and shows the reply in the widget piece
    by piece, then returns it (Markdown). With ``grounded=True`` (the default) the reply quotes
    or cites the course's passages with links to their lesson sections, and the passages found
    are folded under it; ``mode`` is "quote" (the model only picks sentences), "generate" (it
    writes from the passages and cites them) or "auto" (quote below a few billion parameters).
    The first message reads the course's index from its cache, or builds it once (a progress
    bar shows it); pass ``course`` to use one already built. ``grounded=False`` is the plain
    chat, its conversation kept inside the window by a ``Conversation`` (Module 2).

    When no runtime answers, the widget says so and the next send tries again. Below the chat,
    the module's design guide (checklist, questions, worked example) is one click away; a
    suggested question sends itself when clicked. Without a ``client`` the coach finds the
    runtime and starts on its largest chat model; a given client keeps its model
    (``prefer_largest=True`` switches it).
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
        prefer_largest: bool | None = None,
        grounded: bool = True,
        mode: str = "auto",
        course: CourseIndex | None = None,
    ) -> None:
        if module not in MODULES:
            raise InvalidInput(f"module must be one of {sorted(MODULES)}, not {module!r}.")
        self.module = MODULES[module]
        self.number = module
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        # Grounded replies: from the course's passages, quoted or cited (see grounding.py).
        from labkit.course.grounding import choose_mode

        choose_mode(mode, None)  # an unknown mode is refused now, not at the first message
        self.grounded, self.mode, self.course = grounded, mode, course
        # Grounded replies are repeatable even without a seed: the same message, the same quotes.
        self.grounded_seed = seed if seed is not None else 42
        self.last_grounded: Grounded | None = None
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

        if prefer_largest is None:
            prefer_largest = client is None  # never change the model of a learner's client
        self.picker = ModelPicker(client, prefer_largest=prefer_largest)
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
        title = w.HTML(f"<h4 style='margin:4px 0'>{html.escape(self.module.title)}</h4>")
        self.progress = w.Output()  # the index's progress bar, while the course is read
        heading = w.VBox([title, self.progress])
        self.widget = w.VBox(
            [
                heading,
                self.picker.widget,
                self.output,
                self.live,
                w.HBox([self.input, self.send_button, self.clear_button]),
                self.status,
                self._guide(),
            ]
        )

    def _guide(self) -> w.Accordion:
        """The design guide under the chat, folded: it works with no model at all."""
        asks = []
        for question in self.module.questions:
            button = w.Button(description=question, tooltip="Ask the coach this")
            button.layout = {"width": "auto", "max_width": "100%"}
            button.on_click(lambda _, q=question: self._submitted({"new": q}))
            asks.append(button)
        page = w.VBox([w.HTML(self.module.guide_html()), w.HTML("<b>Ask:</b>"), *asks])
        guide = w.Accordion(children=[page])
        guide.set_title(0, "Design guide: checklist, questions to ask, a worked example")
        guide.selected_index = None
        return guide

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
        if self.grounded:
            return self._send_grounded(text)
        self._add_entry("You", text)
        self.conversation.add_user(text)
        pieces: list[str] = []
        try:
            client = self._need_client()
            messages = self.conversation.messages()
            # repeat_penalty keeps the tiny model from looping in a free conversation.
            self._stream_into_live(
                client, messages, pieces, seed=self.seed, options={"repeat_penalty": 1.15}
            )
            finished = self.last_reply is not None
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

    def _course(self, client: Client) -> CourseIndex:
        """The course's index, read from its cache (or built once) on the first message."""
        if self.course is None:
            from labkit.course.coach_index import CourseIndex

            self.status.value = (
                '<small style="color:#666">Reading the course: its index is built once, then '
                "read from the cache…</small>"
            )
            with self.progress:  # tqdm draws its bar here, inside the coach
                self.course = CourseIndex.build(client, progress=True)
            self.progress.clear_output()
        return self.course

    def _link(self, passage: Passage) -> str:
        """Where a passage's link leads: its lesson section in JupyterLab ("" for the guides)."""
        from labkit.course.coach_index import lab_link

        if not passage.notebook:
            return ""
        try:
            return lab_link(passage.notebook, passage.heading)
        except LabkitError:
            return ""

    def _send_grounded(self, text: str) -> str:
        """Answer ``text`` from the course's passages: quoted or cited, streamed block by block."""
        from labkit.course import grounding

        self._add_entry("You", text)
        self.conversation.add_user(text)
        # A short follow-up ("and how do I read it?") is searched together with the question
        # before it: alone it says too little to find a passage.
        query = text
        earlier = [m["content"] for m in self.conversation.history[:-1] if m["role"] == "user"]
        if earlier and len(text.split()) < 8:
            query = f"{earlier[-1]} {text}"
        pieces: list[str] = []
        try:
            client = self._need_client()
            course = self._course(client)
            mode = grounding.choose_mode(self.mode, client.model)
            if mode == "quote":
                result = grounding.quote_reply(
                    query,
                    self.number,
                    course,
                    client,
                    self._link,
                    seed=self.grounded_seed,
                    timeout=self.timeout,
                )
                for block in result.blocks():
                    pieces.append(block)
                    self.live.value = self._bubble("Coach", "".join(pieces))
                    for observer in self.observers:
                        observer(block)
            else:
                passages = course.search(query, self.number)
                messages = grounding.generate_messages(text, passages, self.module.system)
                written = self._stream_into_live(client, messages, pieces, seed=self.grounded_seed)
                result = grounding.generate_reply(written, passages, self._link, self.last_reply)
        except LabkitError as exc:
            return self._failed(exc, "")
        self.last_grounded = result
        self.last_reply = result.reply
        reply = result.text.strip()
        self.conversation.add_assistant(reply)
        self._past += self._bubble("Coach", reply) + self._passages_html(result)
        self.output.value = self._past
        self.live.value = ""
        self._show_status()
        return reply

    def _stream_into_live(
        self,
        client: Client,
        messages: list[dict[str, str]],
        pieces: list[str],
        *,
        seed: int | None,
        options: dict[str, Any] | None = None,
    ) -> str:
        """Stream a reply into the live area; the text written (cut at the timeout).

        ``last_reply`` is the finished reply, or None when the timeout cut it short.
        """
        stream = client.stream(
            messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            options=options,
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
        return "".join(pieces)

    @staticmethod
    def _passages_html(result: Grounded) -> str:
        """Every passage the search found, folded under the reply: what the coach read."""
        items = "".join(
            f'<li><b>{html.escape(p.label)}</b> <small style="color:#666">'
            f"(similarity {p.score:.2f})</small>"
            f'<div style="white-space:pre-wrap;color:#444">{html.escape(p.text.strip())}</div></li>'
            for p in result.passages
        )
        return (
            '<details style="margin:0 0 6px 0"><summary style="color:#666">'
            f"The {len(result.passages)} passages of the course this reply was drawn from"
            f'</summary><ol style="line-height:1.4">{items}</ol></details>'
        )

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
        self._past += self._bubble(who, text) if who else notice(text)
        self.output.value = self._past
        self.live.value = ""

    @staticmethod
    def _bubble(who: str, text: str) -> str:
        # A normal line height: widgets set a tall one meant for one-line controls.
        if who == "Coach":  # the coach writes Markdown: code blocks, lists, links
            return (
                '<div class="labkit-reply" style="margin:4px 0;line-height:1.4">'
                f"<b>{html.escape(who)}:</b> {markdown_html(text)}</div>"
            )
        return (
            f'<div style="margin:4px 0;line-height:1.4;white-space:pre-wrap">'
            f"<b>{html.escape(who)}:</b> "
            f"{html.escape(text)}</div>"
        )

    def _show_status(self) -> None:
        """One line on what was sent and how fast it came back: the numbers the course uses."""
        parts = [str(self.conversation.trimmed)]
        if self.grounded and self.last_grounded is not None:
            found = self.last_grounded
            how = "quoted from" if found.mode == "quote" else "written from"
            parts = [f"{how} {len(found.passages)} passages of the course"]
            if found.unsupported:
                parts.append(f"{len(found.unsupported)} names or numbers not in its sources")
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
