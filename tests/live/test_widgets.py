"""The notebook widgets that talk to the runtime, driven from code: the picker and the coach.

The assistant and the picker talk to the live runtime; a scripted fake server is used only
to force what a real runtime will not do on demand (a reply that never ends).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import pytest
from fake_server import Answer, FakeServer, Lines, ollama_lines, refused_url

from labkit import Client, discovery
from labkit.conversation import Message, message_tokens
from labkit.course.coach import MODULES, Assistant, assistant
from labkit.course.display import markdown_html
from labkit.course.picker import model_picker
from labkit.errors import InvalidInput
from labkit.retry import RetryPolicy

# The chat machinery itself (streaming, trimming, summaries): the plain chat, not grounded in
# the course (tests/live/test_coach.py tests the grounded coach).
QUICK = {"max_tokens": 16, "temperature": 0.0, "seed": 11, "grounded": False}


@pytest.fixture(scope="module")
def client(rt: discovery.Runtime) -> Client:
    return Client(rt.url, dialect=rt.dialect, model=rt.chat_model)


def dead_client() -> Client:
    """A client pointed at a closed port (one attempt, so the test stays quick)."""
    return Client(refused_url(), dialect="ollama", model="m", retry=RetryPolicy(attempts=1))


# --- the model picker -------------------------------------------------------------------------


def test_model_picker_lists_the_live_chat_models(client: Client, rt: discovery.Runtime) -> None:
    picker = model_picker(client)
    options = list(picker.dropdown.options)
    assert rt.chat_model in options and picker.value == client.model == rt.chat_model
    assert not any(discovery._is_embedding(name) for name in options)
    assert set(options) <= set(client.models())


def test_choosing_a_model_sets_the_clients_model(client: Client, rt: discovery.Runtime) -> None:
    own = Client(rt.url, dialect=rt.dialect, model="no-such-model")
    picker = model_picker(own)
    assert own.model == picker.value == rt.chat_model  # an unknown model gives way to a listed one
    picker.dropdown.options = [*picker.dropdown.options, "other:1b"]
    picker.dropdown.value = "other:1b"
    assert own.model == "other:1b"
    picker.dropdown.value = rt.chat_model
    assert own.model == rt.chat_model


def test_model_picker_without_a_runtime_explains_and_recovers(client: Client) -> None:
    picker = model_picker(dead_client())
    assert picker.value is None and picker.dropdown.disabled
    assert "labkit up" in picker.message.value and "AI unavailable" in picker.message.value
    assert "No runtime at http://127.0.0.1:" in picker.problem
    assert picker.message.tooltip == picker.problem  # the details, on hover
    assert picker.bind(client) and picker.value == client.model and picker.message.value == ""


# --- the assistant ----------------------------------------------------------------------------


def test_each_module_has_its_own_coach() -> None:
    topics = {1: "stream", 2: "JSON", 3: "embedding", 4: "retries"}
    assert sorted(MODULES) == [1, 2, 3, 4]
    for number, topic in topics.items():
        assert topic in MODULES[number].system and MODULES[number].title.startswith("Module")
    assert len({m.system for m in MODULES.values()}) == 4
    with pytest.raises(InvalidInput, match="module"):
        Assistant(7)


def test_send_streams_the_reply_into_the_widget(client: Client) -> None:
    coach = assistant(2, client, **QUICK)
    seen: list[tuple[str, str]] = []
    coach.observe_pieces(lambda piece: seen.append((piece, coach.live.value)))
    reply = coach.send("What fields should my classifier's JSON have?")
    assert reply and len(seen) > 1
    assert "".join(piece for piece, _ in seen).strip() == reply
    # While streaming, the live area already held everything received so far, in order.
    so_far = ""
    for piece, shown in seen:
        so_far += piece
        assert markdown_html(so_far) in shown
    assert markdown_html(reply) in coach.output.value and coach.live.value == ""
    sent = coach.conversation.messages()
    assert sent[0] == {"role": "system", "content": MODULES[2].system}
    assert [m["role"] for m in coach.conversation.history] == ["user", "assistant"]
    assert "tokens" in coach.status.value and coach.last_reply is not None


def test_long_history_is_trimmed_and_summarised(client: Client) -> None:
    folded: list[int] = []

    def summarise(previous: str, older: Sequence[Message]) -> str:
        folded.append(len(older))
        return f"{previous} {len(older)} earlier messages about classifiers.".strip()

    coach = Assistant(2, client, keep_turns=2, summarise=summarise, **QUICK)
    for i in range(30):
        coach.conversation.add_user(f"Question {i}: " + "details " * 10)
        coach.conversation.add_assistant(f"Answer {i}: " + "advice " * 10)
    reply = coach.send("Summing up: which fields?")
    assert reply and "AI unavailable" not in reply
    sent = coach.conversation.messages()
    assert message_tokens(sent) <= coach.conversation.input_tokens
    assert sent[0]["content"].startswith(MODULES[2].system)
    # Of the 30 old exchanges only the last stays beside the new one: 58 messages summarised,
    # once (asking again after the answer finds nothing new to fold in).
    assert folded == [58] and "58 earlier messages" in sent[0]["content"]
    assert len(sent) == 1 + 2 * 2  # system, then the last two exchanges
    assert "Left out" in coach.status.value


def test_unavailable_runtime_shows_a_message_then_recovers(client: Client) -> None:
    coach = Assistant(3, dead_client(), **QUICK)
    assert "AI unavailable" in coach.picker.message.value
    notice = coach.send("Which embedding model should I use?")
    assert "AI unavailable" in notice and "labkit up" in notice
    assert "labkit up" in coach.output.value and coach.conversation.history == []
    coach.client = client  # the runtime is back
    reply = coach.send("Which embedding model should I use?")
    assert reply and "AI unavailable" not in reply
    assert [m["role"] for m in coach.conversation.history] == ["user", "assistant"]


def test_without_a_client_it_finds_the_runtime_again_by_itself(
    rt: discovery.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABKIT_BASE_URL", refused_url())
    coach = Assistant(1, **QUICK)
    assert coach.client is None and "AI unavailable" in coach.picker.message.value
    assert "AI unavailable" in coach.send("Should I stream?")
    monkeypatch.setenv("LABKIT_BASE_URL", rt.url)  # as if `labkit up` ran meanwhile
    reply = coach.send("Should I stream?")
    assert reply and "AI unavailable" not in reply and coach.client is not None


def test_enter_sends_and_clears_the_box(client: Client) -> None:
    coach = Assistant(4, client, **QUICK)
    coach.input.value = "How long should my read timeout be?"
    assert coach.input.value == "" and not coach.send_button.disabled
    assert "How long should my read timeout be?" in coach.output.value
    assert len(coach.conversation.history) == 2
    coach.send_button.click()  # an empty box: nothing is sent
    assert len(coach.conversation.history) == 2
    coach.clear()
    assert coach.conversation.history == [] and coach.output.value == ""


def test_a_reply_that_never_ends_is_cut_at_the_timeout() -> None:
    endless = Lines(ollama_lines(["word "] * 400, done=False), end="hang", delay=0.02)
    listing = Answer(200, {"models": [{"name": "m"}]})
    # The health check reads / and /api/tags, the picker the model list, then the chat.
    with FakeServer(Answer(200, "Ollama is running"), listing, listing, endless) as fake:
        slow = Client(fake.url, dialect="ollama", model="m", retry=RetryPolicy(attempts=1))
        coach = Assistant(1, slow, timeout=0.6, grounded=False)
        start = time.monotonic()
        reply = coach.send("Tell me everything.")
        elapsed = time.monotonic() - start
    assert elapsed < 5.0 and reply.startswith("word") and "Stopped" in coach.output.value
    assert coach.conversation.history[-1]["content"] == reply  # what the learner saw is kept


def test_reply_reaches_the_browser_while_the_callback_runs(rt: discovery.Runtime) -> None:
    """In a real kernel, pressing Enter publishes each piece before the callback returns."""
    from jupyter_client import KernelManager

    manager = KernelManager(kernel_name="python3")  # ipykernel's own: this interpreter
    manager.start_kernel(env={**os.environ, "LABKIT_BASE_URL": rt.url})
    kernel = manager.client()
    try:
        kernel.start_channels()
        kernel.wait_for_ready(timeout=60)
        setup = kernel.execute(
            "from labkit.course import assistant\n"
            "coach = assistant(1, max_tokens=8, temperature=0, seed=11, grounded=False)\n"
            "print(coach.input.model_id, coach.live.model_id)",
        )
        ids = _stdout_of(kernel, setup).split()
        assert len(ids) == 2, ids
        box, live = ids
        # What the browser sends when the learner presses Enter in the text box.
        enter = kernel.session.msg(
            "comm_msg",
            {
                "comm_id": box,
                "data": {"method": "update", "state": {"value": "Why stream?"}, "buffer_paths": []},
            },
        )
        kernel.shell_channel.send(enter)
        shown: list[str] = []
        while True:
            message = kernel.get_iopub_msg(timeout=60)
            content = message["content"]
            if message["msg_type"] == "comm_msg" and content["comm_id"] == live:
                shown.append(content["data"].get("state", {}).get("value", ""))
            if message["parent_header"].get("msg_id") == enter["header"]["msg_id"] and (
                content.get("execution_state") == "idle"
            ):
                break
        growing = [value for value in shown if value]
        assert len(growing) > 1  # several updates, each sent while the reply was being written
        assert all(len(a) < len(b) for a, b in itertools.pairwise(growing))
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)


def _stdout_of(kernel: Any, msg_id: str) -> str:
    """Everything a cell printed, read until the kernel is idle again."""
    out = []
    while True:
        message = kernel.get_iopub_msg(timeout=60)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            out.append(message["content"]["text"])
        if message["msg_type"] == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        if message["content"].get("execution_state") == "idle":
            return "".join(out)


def test_a_message_too_long_for_the_window_is_explained(client: Client) -> None:
    coach = Assistant(2, client, **QUICK)
    notice = coach.send("word " * 5000)
    assert "could not answer" in notice and "split_to_budget" in notice
    assert coach.conversation.history == [] and "split_to_budget" in coach.output.value
