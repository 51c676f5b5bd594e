"""Quizzes, typed answers and the coach's guides and model choice, driven from code.

No runtime is needed: the one test of the coach's model choice scripts a model listing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fake_server import Answer, FakeServer, refused_url

from labkit.client import Client
from labkit.course import free_text, number, quiz, quizzes
from labkit.course.coach import MODULES, Assistant, guide, load_module
from labkit.course.picker import largest, parameters
from labkit.course.quiz_hints import hint_for
from labkit.course.quizzes import (
    GENERIC_HINT,
    FreeText,
    Quiz,
    learner,
    learner_id_path,
    option_order,
)
from labkit.errors import InvalidInput
from labkit.retry import NO_RETRY


@pytest.fixture(autouse=True)
def _own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No learner name given, and a home of the test's own for the learner id."""
    for variable in ("LABKIT_LEARNER", "JUPYTERHUB_USER"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(quizzes, "_known_ids", {})
    return tmp_path / "config"


# --- multiple choice --------------------------------------------------------------------------


def make_quiz(**settings: object) -> Quiz:
    return quiz(
        "What does `format: json` guarantee?",
        ["Nothing", "Valid JSON", "Correct facts"],
        "B",
        "Decoding is constrained to JSON.",
        hint="Think about what the sampler may pick.",
        **settings,
    )


def test_quiz_accepts_letters_positions_and_text() -> None:
    q = make_quiz(shuffle=False)
    for right in ("B", "b", 1, "Valid JSON", " valid json. ", "B. Valid JSON"):
        assert q.check(right).correct, right
    for wrong in ("A", 2, "Correct facts", True):
        assert not q.check(wrong).correct, wrong
    assert "Choose" in q.check(None).message and "Choose" in q.check("Z").message


def test_shuffled_letters_mean_what_the_learner_sees() -> None:
    for who in ("ana", "ben", "chen", "dara", "eli"):
        q = make_quiz(who=who)
        right = q.options.index("Valid JSON")
        assert q.answer == right and q.labels[right].endswith("Valid JSON")
        assert q.check("ABC"[right]).correct and q.check(right).correct
        assert q.check("valid json").correct  # the text works whatever the order
        assert sorted(q.options) == sorted(["Nothing", "Valid JSON", "Correct facts"])


def test_the_order_depends_on_learner_and_question_only() -> None:
    assert option_order("q1", 4, "ana") == option_order("q1", 4, "ana")
    orders = {tuple(option_order("q1", 4, f"learner{i}")) for i in range(40)}
    assert len(orders) > 10  # 24 orders exist; 40 learners see many of them
    assert {tuple(option_order(f"q{i}", 4, "ana")) for i in range(40)} != {(0, 1, 2, 3)}
    assert make_quiz(who="ana").options == make_quiz(who="ana").options
    assert make_quiz(who="ana", id="other").id == "other"


def test_a_first_wrong_answer_gets_the_hint_and_the_second_the_explanation() -> None:
    q = make_quiz(shuffle=False)
    feedback = q.submit("A")
    assert not feedback.correct and "Not quite" in q.output.value
    assert "sampler" in q.output.value and "constrained to JSON" not in q.output.value
    assert "Valid JSON" not in q.output.value  # the answer is not named yet
    assert q.choice.value == "A. Nothing"
    q.submit("A")  # the same wrong option again is not a second wrong answer
    assert "sampler" in q.output.value and "constrained to JSON" not in q.output.value
    assert not q.submit("C").correct
    assert "constrained to JSON" in q.output.value and "B. Valid JSON" in q.output.value
    assert q.submit("B").correct and "Correct!" in q.output.value


def test_the_right_answer_first_shows_the_explanation_and_it_stays_shown() -> None:
    q = make_quiz(shuffle=False)
    assert q.submit("B").correct and "constrained to JSON" in q.output.value
    assert not q.submit("A").correct and "constrained to JSON" in q.output.value


def test_check_alone_counts_no_try() -> None:
    q = make_quiz(shuffle=False)
    for _ in range(3):
        assert q.check("A").explanation == "Think about what the sampler may pick."
    assert q.check("C").explanation == "Think about what the sampler may pick."
    assert not q.revealed


def test_changing_the_choice_after_feedback_is_a_new_try() -> None:
    q = make_quiz(shuffle=False)
    q.choice.value = "A. Nothing"
    q.button.click()
    assert "sampler" in q.output.value
    q.choice.value = "C. Correct facts"  # re-checked at once: the second wrong answer
    assert "constrained to JSON" in q.output.value


def test_hints_come_from_the_quiz_data_or_a_generic_one() -> None:
    question = "Why add a random jitter to each backoff pause?"
    data = hint_for(question)
    assert data and quiz(question, ["a", "b"], 0).hint == data
    assert hint_for("  WHY add a random   jitter to each backoff pause? ") == data
    assert quiz(question, ["a", "b"], 0, hint="mine").hint == "mine"
    assert quiz("Unknown?", ["a", "b"], 0).hint == GENERIC_HINT
    assert free_text("Unknown?", "x").hint == GENERIC_HINT


def test_free_text_gives_a_hint_first_then_the_explanation() -> None:
    q = free_text(
        "Default port of Ollama?", ["11434"], "Ollama listens on 11434.", hint="Its own port."
    )
    assert not q.submit("8080").correct and "Its own port." in q.output.value
    assert "listens on 11434" not in q.output.value
    q.submit("8080")  # the same answer again (Enter twice) is not a second try
    assert "listens on 11434" not in q.output.value
    assert not q.submit("1234").correct and "listens on 11434" in q.output.value
    assert "Type an answer" in q.check("  ").message


def test_quiz_check_button_reads_the_selection() -> None:
    q = make_quiz()
    q.choice.value = q.labels[q.answer]  # what a click on the radio button does
    q.button.click()
    assert q.feedback is not None and q.feedback.correct and "Correct!" in q.output.value
    q.choice.value = q.labels[q.answer - 1]  # another choice re-checks at once
    assert not q.feedback.correct and "Not quite" in q.output.value


def test_quiz_option_text_wins_over_a_letter() -> None:
    q = Quiz("2 + 2?", ["3", "4", "A"], "4", shuffle=False)
    assert q.answer == 1 and q.check("4").correct and not q.check("A").correct


def test_quiz_refuses_an_answer_that_is_not_an_option() -> None:
    with pytest.raises(InvalidInput, match="none of the options"):
        quiz("?", ["x", "y"], "maybe")
    with pytest.raises(InvalidInput, match="none of the options"):
        quiz("?", ["x", "y"], 2)
    with pytest.raises(InvalidInput, match="2 to"):
        quiz("?", ["only one"], 0)


# --- who is answering ---------------------------------------------------------------------------


def test_without_a_name_each_home_gets_its_own_id_that_lasts(
    _own_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quizzes.getpass, "getuser", lambda: "jovyan")  # as on Binder
    first = learner()
    stored = learner_id_path()
    assert stored == _own_home / "labkit" / "learner-id"
    assert stored.read_text() == first + "\n" and len(first) == 32
    monkeypatch.setattr(quizzes, "_known_ids", {})  # a kernel restart
    assert learner() == first
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-home"))
    second = learner()
    assert second != first and "jovyan" not in (first, second)
    orders = [[option_order(f"q{i}", 4, who) for i in range(10)] for who in (first, second)]
    assert orders[0] != orders[1]
    assert sorted(p.name for p in stored.parent.iterdir()) == ["learner-id"]  # no temp files


def test_a_name_given_wins_over_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "ana")
    assert learner() == "ana"
    monkeypatch.setenv("LABKIT_LEARNER", "ben")
    assert learner() == "ben"
    assert not learner_id_path().exists()


def test_an_unwritable_home_falls_back_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker / "config"))  # cannot be made
    who = learner()
    assert len(who) == 32 and who == learner()
    assert make_quiz().options  # a quiz still shows
    monkeypatch.setattr(quizzes, "_known_ids", {})
    monkeypatch.setattr(quizzes.socket, "gethostname", lambda: "another-container")
    assert learner() != who  # the fallback still differs between containers


def test_a_damaged_id_file_is_replaced_whole(_own_home: Path) -> None:
    path = learner_id_path()
    path.parent.mkdir(parents=True)
    path.write_text("half")
    who = learner()
    assert len(who) == 32 and path.read_text() == who + "\n"


def test_kernels_starting_together_agree_on_one_id(_own_home: Path) -> None:
    path = learner_id_path()
    barrier = threading.Barrier(8)
    found: list[str] = []

    def start() -> None:
        barrier.wait()
        found.append(quizzes._stored_id(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert path.read_text() == found[0] + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["learner-id"]


# --- typed answers ----------------------------------------------------------------------------


def test_free_text_with_accepted_answers_and_with_a_function() -> None:
    q = free_text("Default port of Ollama?", ["11434"], "Ollama listens on 11434.")
    assert q.submit(" 11434. ").correct and "11434" in q.output.value
    assert not q.submit("8080").correct and "Not quite" in q.output.value
    assert "Type an answer" in q.check("  ").message

    def at_most_seventy(text: str) -> bool:
        return float(text.strip().rstrip("%")) <= 70

    budget = FreeText("Input share of the window?", at_most_seventy)
    assert budget.check("70%").correct and not budget.check("90").correct
    assert "Could not check" in budget.check("seventy").message  # the checker raised


@pytest.mark.parametrize(
    "answer", ["11434", "11,434", "11434.0", "port 11434", " 11434. ", "11434 (the default)"]
)
def test_numbers_are_compared_as_numbers(answer: str) -> None:
    assert free_text("Port?", ["11434"]).check(answer).correct


@pytest.mark.parametrize("answer", ["1143", "114340", "11434 or 8080", "eleven", "1,1434"])
def test_other_numbers_and_two_numbers_are_wrong(answer: str) -> None:
    assert not free_text("Port?", [11434]).check(answer).correct


def test_a_tolerance_accepts_rounding() -> None:
    q = free_text("70% of 8192?", number(5734.4, tolerance=35))
    for right in ("5734", "5734.4", "5,734", "5734,4", "about 5700 tokens", "~5734"):
        assert q.check(right).correct, right
    for wrong in ("5600", "8192", "70%", "2458"):
        assert not q.check(wrong).correct, wrong


@pytest.mark.parametrize("answer", ["Llama.cpp", "LLAMA.CPP!", "  llama.cpp  ", "`llama.cpp`"])
def test_words_ignore_case_space_and_punctuation(answer: str) -> None:
    assert free_text("Which server?", "llama.cpp").check(answer).correct


def test_a_leading_article_does_not_matter_but_other_words_do() -> None:
    q = free_text("Which part?", ["format"])
    assert q.check("The format").correct and q.check("FORMAT.").correct
    assert not q.check("the role").correct and not q.check("format and role").correct
    with pytest.raises(InvalidInput, match="at least one"):
        free_text("?", [])


def test_free_text_checks_on_enter() -> None:
    q = free_text("Name the runtime started by `labkit up`.", "llama.cpp")
    q.text.value = "Llama.cpp"  # what Enter sends from the browser (continuous_update=False)
    assert q.feedback is not None and q.feedback.correct and "Correct!" in q.output.value


# --- the coach's guides and model choice ------------------------------------------------------


def test_every_module_has_a_guide_that_needs_no_model() -> None:
    for number_, module in MODULES.items():
        assert len(module.checklist) >= 5, number_
        assert len(module.questions) >= 3, number_
        speakers = [who for who, _ in module.example]
        assert speakers[:2] == ["You", "Coach"] and speakers.count("Coach") >= 2, number_
        page = module.guide_html()
        assert all(item.split("`")[0][:20] in page for item in module.checklist)
        assert guide(number_).widget.value == page
    with pytest.raises(InvalidInput, match="module"):
        guide(9)
    with pytest.raises(InvalidInput, match="no coach"):
        load_module(9)


def test_the_coach_prompts_are_shipped_as_package_data() -> None:
    folder = Path(__file__).resolve().parents[2] / "labkit" / "course" / "prompts"
    names = sorted(path.name for path in folder.glob("*.md"))
    assert names == ["coach.md", "module-1.md", "module-2.md", "module-3.md", "module-4.md"]
    coach = (folder / "coach.md").read_text().strip()
    assert all(module.system.startswith(coach) for module in MODULES.values())


def test_module_4_coach_tells_the_course_story() -> None:
    system = MODULES[4].system
    for fact in ("30 s", "120 s", "3 retries", "4 attempts", "404", "usually not 500", "version"):
        assert fact in system, fact


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("SmolLM2-135M-Instruct", 135e6),
        ("qwen2.5:7b", 7e9),
        ("qwen2.5:1.5b-instruct-q4_K_M", 1.5e9),
        ("mixtral:8x7b", 56e9),
        ("llama3:latest", None),
        ("all-minilm", None),
        ("v1-model-q8_0", None),
    ],
)
def test_model_size_from_its_name(name: str, size: float | None) -> None:
    assert parameters(name) == size


def test_the_largest_model_replaces_a_smaller_one_only() -> None:
    assert largest(["smollm2:135m", "qwen2.5:7b"], "smollm2:135m") == "qwen2.5:7b"
    assert largest(["smollm2:135m", "qwen2.5:7b"], None) == "qwen2.5:7b"
    # A model of unknown size may be the bigger one: it is kept.
    assert largest(["llama3:latest", "smollm2:135m"], "llama3:latest") == "llama3:latest"
    assert largest(["llama3:latest", "mystery"], "mystery") == "mystery"
    assert largest(["qwen2.5:7b", "smollm2:135m"], "qwen2.5:7b") == "qwen2.5:7b"


def test_the_coach_starts_on_the_largest_chat_model_the_runtime_lists() -> None:
    names = ["smollm2:135m", "qwen2.5:7b", "all-minilm:l6-v2", "llama3.2:3b", "custom:latest"]
    listing = Answer(200, {"models": [{"name": name} for name in names]})
    up = Answer(200, "Ollama is running")
    # Each listing of the picker: the health check (GET /, GET /api/tags), then the models.
    with FakeServer(up, listing, listing, up, listing, listing) as fake:
        mine = Client(fake.url, dialect="ollama", model="smollm2:135m", retry=NO_RETRY)
        coach = Assistant(2, mine, prefer_largest=True)
        assert coach.picker.value == mine.model == "qwen2.5:7b"
        kept = Client(fake.url, dialect="ollama", model="smollm2:135m", retry=NO_RETRY)
        assert Assistant(2, kept).picker.value == "smollm2:135m"  # a given client keeps its model
    assert "all-minilm:l6-v2" not in coach.picker.dropdown.options


def test_the_design_guide_sits_under_the_chat_and_its_questions_send_themselves() -> None:
    coach = Assistant(4, Client(refused_url(), dialect="ollama", model="m", retry=NO_RETRY))
    parts = coach.widget.children
    # The chat's layout is kept (browser tests rely on it); the guide comes last.
    assert len(parts) == 7 and parts[2] is coach.output and parts[5] is coach.status
    guide_box = parts[6]
    assert guide_box.selected_index is None  # folded until the learner opens it
    page = guide_box.children[0]
    assert MODULES[4].checklist[0].split("(")[0][:30] in page.children[0].value
    buttons = [child for child in page.children if hasattr(child, "on_click")]
    assert [b.description for b in buttons] == list(MODULES[4].questions)
    buttons[0].click()  # no runtime: the question is shown, with the notice, and nothing lost
    assert MODULES[4].questions[0] in coach.output.value and "AI unavailable" in coach.output.value
    assert coach.conversation.history == []
