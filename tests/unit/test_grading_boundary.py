"""The grading boundary: tests call learner code across it, and only plain data comes back.

The "kernel" here is a namespace in this process answered by ``labkit.grader.bridge``; the
tester's side is ``labkit.grader.remote``. Each test plays a learner who tries to pass a
test without solving it, or to reach the test's code, and checks what the tester sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labkit.course import checks
from labkit.grader import bridge, remote
from labkit.grader.tester import names_read


class Kernel:
    """A learner's namespace behind the bridge; it keeps every request it was sent."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.requests: list[str] = []

    def send(self, request: dict[str, Any]) -> str:
        text = json.dumps(request)
        self.requests.append(text)
        return bridge.serve(text, self.namespace)


def _learner(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(code, namespace)
    return namespace


def _run(
    test_code: str, learner_code: str, *, hidden: bool = False
) -> tuple[checks.TestResult, Kernel]:
    """Run ``test_code`` as the tester does, against a learner's notebook."""
    kernel = Kernel(_learner(learner_code))
    boundary = remote.Boundary(kernel.send)
    scope = boundary.lookup(sorted(names_read(test_code)))
    test = {"name": "q1.1", "code": test_code, "points": 1.0, "hidden": hidden}
    return checks.run_test(test, scope, question="q1", grading=True), kernel


def test_an_honest_solution_passes() -> None:
    learner = "def square(x):\n    return x * x\n"
    result, _ = _run("assert square(3) == 9 and isinstance(square(2.5), float)", learner)
    assert result.status == "passed", result.message


def test_a_value_that_equals_everything_arrives_as_the_plain_value_it_holds() -> None:
    learner = (
        "class Anything(str):\n"
        "    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "    __hash__ = str.__hash__\n"
        "class Yes(int):\n"
        "    def __eq__(self, other): return True\n"
        "    __hash__ = int.__hash__\n"
        "class Full(dict):\n"
        "    def __eq__(self, other): return True\n"
        "    def __len__(self): return 99\n"
        "def reply_text(body): return Anything('')\n"
        "def count(): return Yes(0)\n"
        "def parsed(): return Full()\n"
    )
    for test in (
        "assert reply_text({}) == 'The sky is blue.'",
        "assert type(reply_text({})) is str and reply_text({}) == ''",
        "assert count() == 3",
        "assert parsed() == {'label': 'pay'}",
        "assert len(parsed()) == 99",
    ):
        result, _ = _run(test, learner)
        expected = "passed" if "type(" in test else "failed"
        assert result.status == expected, test


def test_objects_arrive_as_snapshots_without_their_methods_running_here() -> None:
    learner = (
        "class Sneaky:\n"
        "    def __init__(self): self.label = 'pay'; self.calls = 0\n"
        "    def __eq__(self, other): return True\n"
        "    def __bool__(self): return True\n"
        "    def bump(self): self.calls += 1; return self.calls\n"
        "def make(): return Sneaky()\n"
    )
    result, _ = _run(
        "x = make()\n"
        "assert type(x).__name__ == 'Sneaky' and x.label == 'pay'\n"
        "assert x != 'anything'\n"  # the learner's __eq__ did not answer
        "assert x.bump() == 1 and x.bump() == 2\n",  # methods run in the kernel
        learner,
    )
    assert result.status == "passed", result.message


def test_a_learner_exception_keeps_its_class_name_bases_and_attributes() -> None:
    learner = (
        "class ModelCallError(Exception):\n"
        "    def __init__(self, kind, retryable):\n"
        "        super().__init__(f'{kind}!'); self.kind = kind; self.retryable = retryable\n"
        "class Timeout(ModelCallError): pass\n"
        "def call(): raise Timeout('timeout', True)\n"
        "def fine(): raise KeyError('x')\n"
    )
    result, _ = _run(
        "try:\n    call()\nexcept ModelCallError as exc:\n"
        "    assert (exc.kind, exc.retryable) == ('timeout', True) and str(exc) == 'timeout!'\n"
        "    assert type(exc).__name__ == 'Timeout' and isinstance(exc, Exception)\n"
        "else:\n    raise AssertionError('no error')\n"
        "try:\n    fine()\nexcept KeyError:\n    pass\n",
        learner,
    )
    assert result.status == "passed", result.message


def test_generators_are_iterated_one_item_per_call() -> None:
    learner = (
        "seen = []\n"
        "def read_so_far(): return list(seen)\n"
        "def pieces(lines):\n"
        "    for line in lines:\n"
        "        seen.append(line)\n"
        "        yield line.decode().upper()\n"
    )
    # A variable of the notebook is read when the test starts; a function reads it now.
    result, _ = _run(
        "it = pieces([b'a', b'b', b'c'])\n"
        "assert next(it) == 'A' and read_so_far() == [b'a']\n"
        "assert list(it) == ['B', 'C']\n",
        learner,
    )
    assert result.status == "passed", result.message


def test_a_callback_reaches_the_learner_as_a_recorder_replayed_after_the_call() -> None:
    learner = (
        "def retry(sleep, attempts=3, timeout=(30.0, 120.0)):\n"
        "    for n in range(attempts - 1):\n"
        "        sleep(0.5 * 2 ** n)\n"
        "    return 'done'\n"
    )
    result, _ = _run(
        "pauses = []\n"
        "assert retry(sleep=pauses.append) == 'done'\n"
        "assert pauses == [0.5, 1.0], pauses\n"
        "defaults = {n: p.default for n, p in inspect.signature(retry).parameters.items()}\n"
        "assert defaults['attempts'] == 3 and defaults['timeout'] == (30.0, 120.0)\n",
        "import inspect\n" + learner,
    )
    assert result.status == "passed", result.message


def test_the_same_learner_object_is_the_same_object_for_the_test() -> None:
    learner = "_cache = {}\ndef build(path):\n    return _cache.setdefault(str(path), object())\n"
    result, _ = _run(
        "from pathlib import Path\nassert build(Path('a')) is build(Path('a'))\nassert build('b') is not build('a')",
        learner,
    )
    assert result.status == "passed", result.message


def test_data_types_survive_the_crossing() -> None:
    learner = (
        "import math\nfrom pathlib import Path\n"
        "VALUES = (1, 2.5, 'é☕', b'\\x00\\xff', None, True, {1: 'a', ('k',): {2}}, frozenset({3}),"
        " Path('/tmp/x'), [float('nan'), math.inf], ...)\n"
        "def echo(x): return x\n"
    )
    result, _ = _run(
        "v = echo(VALUES)\n"
        "assert type(v) is tuple and v[:6] == (1, 2.5, 'é☕', b'\\x00\\xff', None, True)\n"
        "assert v[6] == {1: 'a', ('k',): {2}} and v[7] == frozenset({3})\n"
        "assert v[8] == Path('/tmp/x') and v[9][0] != v[9][0] and v[9][1] == float('inf')\n"
        "assert v[10] is ...\n",
        learner,
    )
    assert result.status == "passed", result.message


def test_labkit_settings_a_test_changes_reach_the_learners_code_during_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = Kernel(_learner("import os\ndef where(): return os.environ.get('LABKIT_EMBED_URL')\n"))
    monkeypatch.setenv("LABKIT_EMBED_URL", "http://127.0.0.1:1")
    where = remote.Boundary(kernel.send).lookup(["where"])["where"]
    assert where() == "http://127.0.0.1:1"
    monkeypatch.setenv("LABKIT_EMBED_URL", "http://127.0.0.1:2")  # a test's own proxy
    assert where() == "http://127.0.0.1:2"
    monkeypatch.setenv("LABKIT_EMBED_URL", "http://127.0.0.1:1")
    assert where() == "http://127.0.0.1:1"
    assert '"env": []' in kernel.requests[-1]  # nothing changed: nothing sent


def test_the_test_uses_the_runtime_the_notebook_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # use_ollama_dialect() in a notebook points LABKIT_BASE_URL elsewhere: tests follow it.
    monkeypatch.setenv("LABKIT_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LABKIT_HOME", "/tester/own")
    kernel_env = {"LABKIT_BASE_URL": "http://127.0.0.1:2", "LABKIT_HOME": "/learner/chosen"}
    answer = json.dumps({"ok": {"$": "dict", "v": [[k, v] for k, v in kernel_env.items()]}})
    remote.Boundary(lambda request: answer).adopt_environment()
    assert os.environ["LABKIT_BASE_URL"] == "http://127.0.0.1:2"
    assert os.environ["LABKIT_HOME"] == "/tester/own"  # only the runtime's settings are taken


def test_numpy_arrays_stay_arrays_of_numbers() -> None:
    learner = "import numpy as np\ndef vectors(): return np.ones((2, 3), dtype='float32')\n"
    result, _ = _run(
        "v = vectors()\nassert v.shape == (2, 3) and v.dtype.name == 'float32'", learner
    )
    assert result.status == "passed", result.message
    forged = json.dumps({"ok": {"$": "ndarray", "dtype": "object", "v": [1]}})
    with pytest.raises(remote.RemoteError, match="not numbers"):
        remote.Boundary(lambda request: forged).call({"name": "f"}, (), {})


def test_a_name_bound_to_a_dangerous_function_runs_in_the_kernel_not_the_tester() -> None:
    # ``Client = exec`` would run the learner's string in the tester if the tester used its
    # own copy of whatever a name is bound to: it never does for callables.
    learner = (
        "import subprocess, pickle\n"
        "Client = exec\nPopen = subprocess.Popen\njson = pickle\n"
        'BASE_URL = \'open("/tmp/owned", "w")\'\n'
    )
    kernel = Kernel(_learner(learner))
    boundary = remote.Boundary(kernel.send)
    scope = boundary.lookup(["Client", "Popen", "json", "BASE_URL"])
    assert isinstance(scope["Client"], remote.RemoteFunction)
    assert scope["Popen"] is not subprocess.Popen and isinstance(scope["Popen"], type)
    assert scope["json"] is not __import__("pickle")  # a module under another name is not followed
    assert not isinstance(scope["json"], type(json))


def test_modules_the_notebook_imported_are_the_tests_own_copies() -> None:
    kernel = Kernel(_learner("import json, time\nimport numpy as np\n"))
    scope = remote.Boundary(kernel.send).lookup(["json", "time", "np"])
    import numpy

    assert scope["json"] is json and scope["np"] is numpy


def test_only_names_and_values_reach_the_kernel() -> None:
    secret = "expected = {'chat-window': True, 'nightly-labels': False}"
    test = secret + "\nassert all(should_stream(k) is v for k, v in expected.items())"
    learner = "def should_stream(key):\n    return key == 'chat-window'\n"
    result, kernel = _run(test, learner, hidden=True)
    assert result.status == "passed"
    sent = "\n".join(kernel.requests)
    assert "expected" not in sent and "assert" not in sent and "should_stream" in sent


def test_a_forged_answer_can_only_be_data() -> None:
    answers = iter(
        [
            json.dumps(
                {"ok": {"$": "dict", "v": [["f", {"$": "func", "handle": 1, "name": "f"}]]}}
            ),
            json.dumps(
                {
                    "ok": {
                        "$": "obj",
                        "handle": 2,
                        "type": {"module": "builtins", "qualname": "dict"},
                    }
                }
            ),
        ]
    )
    boundary = remote.Boundary(lambda request: next(answers))
    f = boundary.lookup(["f"])["f"]
    value = f()
    assert isinstance(value, remote.RemoteObject) and not isinstance(value, dict)
    broken = remote.Boundary(lambda request: "not json")
    with pytest.raises(remote.RemoteError):
        broken.lookup(["x"])


def test_a_callback_value_that_is_no_plain_data_is_refused_with_a_clear_error() -> None:
    kernel = Kernel(_learner("def f(x): return x\n"))
    f = remote.Boundary(kernel.send).lookup(["f"])["f"]
    with pytest.raises(TypeError, match="cannot be passed"):
        f(object())


def test_the_tester_process_runs_a_test_over_its_pipes(tmp_path: Path) -> None:
    """The tester as the grader starts it, with this process playing the kernel."""
    namespace = _learner("def square(x):\n    return x * x\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-I", "-m", "labkit.grader.tester"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert json.loads(process.stdout.readline()) == {"op": "ready"}

        def answer(request: dict[str, Any]) -> None:
            reply = bridge.serve(json.dumps(request), namespace)
            process.stdin.write(json.dumps({"op": "reply", "answer": reply}) + "\n")
            process.stdin.flush()

        for code, expected in (
            ("assert square(4) == 16", "passed"),
            ("assert square(4) == 15", "failed"),
        ):
            test = {"name": "q1.1", "code": code, "points": 1.0, "hidden": True}
            spec = {"question": "q1", "placeholders": [], "test": test}
            process.stdin.write(json.dumps({"op": "test", "spec": spec}) + "\n")
            process.stdin.flush()
            while True:
                message = json.loads(process.stdout.readline())
                if message["op"] == "kernel":
                    answer(message["request"])
                    continue
                assert message["op"] == "result"
                assert message["result"]["status"] == expected
                break
        # A call the grader stops (too slow) is the test's timeout.
        spec["test"]["code"] = "square(1)"
        process.stdin.write(json.dumps({"op": "test", "spec": spec}) + "\n")
        process.stdin.flush()
        answer(json.loads(process.stdout.readline())["request"])  # its environment
        assert json.loads(process.stdout.readline())["op"] == "kernel"
        process.stdin.write(json.dumps({"op": "reply", "timeout": True}) + "\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["result"]["status"] == "timeout"
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0


def test_names_read_finds_what_a_test_may_take_from_the_notebook() -> None:
    code = (
        "import json\nfrom pathlib import Path as P\n"
        "def test_it(env, LABELS):\n    return chunks_for(env, LABELS)\n"
        "_hidden = [1]\nfor _q in _hidden:\n    assert check(_q) and len(TOP)\n"
        "try:\n    f()\nexcept E as exc:\n    pass\n"
    )
    assert names_read(code) == {"chunks_for", "check", "TOP", "f", "E", "env", "LABELS"}
