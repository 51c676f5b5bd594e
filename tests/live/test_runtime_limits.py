"""What reaches llama.cpp, what it may cost, and the memory the runtime keeps to.

The attack requests (thousands of alternatives per token, many choices, huge sampler arrays)
get a 400 in their dialect's shape that names the field and the limit; the costliest requests
the runtime accepts keep it under the README's memory figure; bad text and bad encodings get
a 4xx, never a 500. Every generation here is a few tokens long.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from labkit import runtime
from labkit.runtime import fields

ROOT = Path(__file__).resolve().parents[2]
CHAT = runtime.CHAT_MODEL
EMBED = runtime.EMBED_MODEL
HELLO = [{"role": "user", "content": "Count from one to ten in words."}]
TIMEOUT = 120


def _post(record: runtime.RuntimeRecord, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(record.url + path, json=body, timeout=TIMEOUT, **kwargs)


def _ollama_error(answer: requests.Response, status: int = 400) -> str:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def _openai_error(answer: requests.Response, status: int = 400) -> str:
    assert answer.status_code == status, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    return str(error["message"])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _readme_ceiling_mb() -> int:
    """The memory the README promises the bundled runtime keeps to when busy."""
    found = re.search(r"at most about (\d+) MB", (ROOT / "README.md").read_text())
    assert found, "the README no longer states the runtime's memory ceiling"
    return int(found[1])


# --- 1. The attack requests are refused before llama.cpp sees them ------------------------

ATTACKS = [
    # (path, body, the field the message must name, the limit it must name)
    (
        "/v1/completions",
        {"prompt": "Hello", "n_probs": 49152, "max_tokens": 300, "stream": True},
        "n_probs",
        fields.MAX_ALTERNATIVES,
    ),
    (
        "/v1/chat/completions",
        {"messages": HELLO, "logprobs": True, "top_logprobs": 49152},
        "top_logprobs",
        fields.MAX_ALTERNATIVES,
    ),
    ("/v1/completions", {"prompt": "Hi", "logprobs": 100}, "logprobs", fields.MAX_ALTERNATIVES),
    ("/v1/chat/completions", {"messages": HELLO, "n": 64}, "n", fields.MAX_CHOICES),
    ("/v1/completions", {"prompt": ["Hi"] * 64}, "prompt", fields.MAX_CHOICES),
    ("/v1/completions", {"prompt": "Hi", "best_of": 8}, "best_of", 1),
    (
        "/v1/chat/completions",
        {"messages": HELLO, "logit_bias": {str(n): 5 for n in range(5000)}},
        "logit_bias",
        fields.MAX_LOGIT_BIAS,
    ),
    ("/v1/chat/completions", {"messages": HELLO, "stop": ["x"] * 1000}, "stop", fields.MAX_STOP),
    (
        "/api/chat",
        {"messages": HELLO, "options": {"stop": ["x"] * 1000}},
        "options.stop",
        fields.MAX_STOP,
    ),
    (
        "/api/generate",
        {"prompt": "Hi", "options": {"stop": ["y" * 5000]}},
        "options.stop",
        fields.MAX_STOP_CHARS,
    ),
]


@pytest.mark.parametrize(("path", "body", "field", "limit"), ATTACKS)
def test_costly_fields_are_refused_naming_the_field_and_the_limit(
    embedded: runtime.RuntimeRecord, path: str, body: dict[str, Any], field: str, limit: int
) -> None:
    answer = _post(embedded, path, {"model": CHAT, **body})
    message = (_openai_error if path.startswith("/v1/") else _ollama_error)(answer)
    assert f'"{field}"' in message and str(limit) in message, message


def test_the_issues_attack_leaves_memory_where_it_was(embedded: runtime.RuntimeRecord) -> None:
    # Before, this 120-byte request answered 1.4 GB and left the runtime 2 GB bigger.
    before = _rss_mb(embedded.pid)
    attack = {"model": CHAT, "prompt": "Hello", "n_probs": 49152, "max_tokens": 300}
    for _ in range(20):
        answer = _post(embedded, "/v1/completions", {**attack, "stream": True})
        assert answer.status_code == 400 and len(answer.content) < 1000
    assert _rss_mb(embedded.pid) - before < 20


def test_fields_the_kit_does_not_pass_on_never_reach_llama_cpp(
    embedded: runtime.RuntimeRecord,
) -> None:
    # llama.cpp itself refuses an empty dry_sequence_breakers (400): passed on, this would fail.
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 2, "seed": 1, "temperature": 0}
    extra = {"dry_sequence_breakers": [], "samplers": "nonsense", "n_cmpl": 64, "user": "ada"}
    answer = _post(embedded, "/v1/chat/completions", {**body, **extra})
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["choices"]) == 1


def test_a_generate_context_longer_than_the_context_is_refused(
    embedded: runtime.RuntimeRecord,
) -> None:
    body = {"model": CHAT, "prompt": "Hi", "context": [1000] * 100_000, "stream": False}
    message = _ollama_error(_post(embedded, "/api/generate", body))
    assert '"context"' in message and "100000 tokens" in message and "2048" in message


def test_a_token_budget_beyond_the_context_is_cut_to_it(embedded: runtime.RuntimeRecord) -> None:
    # Accepted: llama.cpp stops at the end of the context whatever the budget says.
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 3, "stream": False}
    answer = _post(embedded, "/v1/chat/completions", {**body, "repeat_last_n": 2**31 - 1})
    assert answer.status_code == 200, answer.text[:300]
    typed = _post(embedded, "/v1/chat/completions", {**body, "temperature": "hot"})
    assert '"temperature" must be a number' in _openai_error(typed)


# --- 2. The costliest accepted requests keep to the README's memory figure ------------------


def test_the_costliest_accepted_requests_stay_under_the_readmes_memory_figure(
    embedded: runtime.RuntimeRecord,
) -> None:
    # The shared runtime, busy with every test before this one: the README's figure is what
    # it keeps to when busy. (A runtime of its own would take 15 s to start.)
    ceiling = _readme_ceiling_mb()
    before = _rss_mb(embedded.pid)
    # The most alternatives, for the most choices, streamed and collected.
    most = {"logprobs": True, "top_logprobs": fields.MAX_ALTERNATIVES, "n": fields.MAX_CHOICES}
    chat = {"model": CHAT, "messages": HELLO, "max_tokens": 8, "seed": 1, "temperature": 0}
    answer = _post(embedded, "/v1/chat/completions", {**chat, **most})
    assert answer.status_code == 200, answer.text[:300]
    choices = answer.json()["choices"]
    assert len(choices) == fields.MAX_CHOICES
    assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 20 for c in choices)
    prompts = ["One", "Two", "Three", "Four"]
    completion = {"model": CHAT, "prompt": prompts, "max_tokens": 8, "stream": True}
    extra = {"n_probs": fields.MAX_ALTERNATIVES, "post_sampling_probs": True}
    answer = _post(embedded, "/v1/completions", {**completion, **extra})
    assert answer.status_code == 200 and answer.text.count("data: {") > 4
    # The longest prompt the front lets through: llama.cpp tokenizes it, then finds it too long.
    for number in range(3):
        longest = {"model": CHAT, "prompt": f"{number} " + "word " * 13_000, "max_tokens": 1}
        assert "context" in _openai_error(_post(embedded, "/v1/completions", longest))
    # The largest embedding input (the model's whole context), twice side by side.
    tokens = [[1000 + n + k for n in range(510)] for k in range(2)]
    answer = _post(embedded, "/v1/embeddings", {"model": EMBED, "input": tokens})
    assert [len(d["embedding"]) for d in answer.json()["data"]] == [384, 384]
    # The largest schema: 256 choices in 8 KB.
    values = [hashlib.sha1(str(n).encode()).hexdigest()[:20] for n in range(256)]
    schema = {"type": "object", "properties": {"v": {"type": "string", "enum": values}}}
    assert len(json.dumps(schema)) < 8 * 1024
    body = {"model": CHAT, "messages": HELLO, "format": schema, "stream": False}
    answer = _post(embedded, "/api/chat", {**body, "options": {"num_predict": 24}})
    assert answer.status_code == 200, answer.text[:300]
    after = _rss_mb(embedded.pid)
    # A new runtime (about 425 MB) grows by about 160 MB over these, buffers it makes once
    # and keeps; a 120-byte request asking for 49,152 alternatives per token once grew it by 2 GB.
    assert after - before < 250, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    assert after < ceiling, f"{after:.0f} MB; the README promises at most about {ceiling} MB"


# --- 3. Bad text and bad encodings: 4xx, never 500 -------------------------------------------

SURROGATE = '"\\ud800"'  # a JSON escape of half a UTF-16 pair: valid JSON, no text


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (
            "/api/chat",
            f'{{"model": "{CHAT}", "messages": [{{"role": "user", "content": {SURROGATE}}}]}}',
            "messages[0].content",
        ),
        ("/api/embed", f'{{"model": "{EMBED}", "input": ["fine", {SURROGATE}]}}', "input[1]"),
        ("/api/show", f'{{"model": {SURROGATE}}}', "model"),
        (
            "/api/generate",
            f'{{"model": "{CHAT}", "prompt": "a", "options": {{{SURROGATE}: 1}}}}',
            "a key of options",
        ),
        (
            "/v1/chat/completions",
            f'{{"model": "{CHAT}", "messages": [{{"role": "user", "content": {SURROGATE}}}]}}',
            "messages[0].content",
        ),
        ("/v1/embeddings", f'{{"model": "{EMBED}", "input": {SURROGATE}}}', "input"),
    ],
)
def test_a_lone_surrogate_is_a_400_that_says_where(
    embedded: runtime.RuntimeRecord, path: str, body: str, where: str
) -> None:
    answer = requests.post(
        embedded.url + path,
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    error = _openai_error if path.startswith("/v1/") else _ollama_error
    message = error(answer)
    assert f"{where} holds a lone surrogate" in message, message


def test_a_body_that_is_not_the_gzip_it_claims_is_a_400(embedded: runtime.RuntimeRecord) -> None:
    plain = json.dumps({"model": CHAT, "messages": HELLO}).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = requests.post(embedded.url + "/api/chat", data=plain, headers=headers, timeout=30)
    assert "Content-Encoding" in _ollama_error(answer)
    answer = requests.post(
        embedded.url + "/v1/chat/completions", data=plain, headers=headers, timeout=30
    )
    assert "gzip" in _openai_error(answer)
    # A body that is the gzip it claims is read as usual.
    body = {"model": CHAT, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    packed = gzip.compress(json.dumps(body).encode())
    answer = requests.post(embedded.url + "/api/generate", data=packed, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json()["done"] is True


def test_a_list_of_prompts_unstreamed_gets_one_choice_each(embedded: runtime.RuntimeRecord) -> None:
    body = {"model": CHAT, "prompt": ["One,", "Two,"], "max_tokens": 2, "seed": 1}
    answer = _post(embedded, "/v1/completions", {**body, "temperature": 0})
    assert answer.status_code == 200, answer.text[:300]
    choices = answer.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert all(isinstance(c["text"], str) and c["finish_reason"] for c in choices)


def test_an_embedding_input_of_too_many_tokens_is_a_400_naming_the_limit(
    embedded: runtime.RuntimeRecord,
) -> None:
    for given in ([1000] * 600, [[1000] * 10, [1000] * 600]):
        answer = _post(embedded, "/v1/embeddings", {"model": EMBED, "input": given})
        message = _openai_error(answer)
        assert "600 tokens" in message and "512" in message, message


# --- 4. What answers do not tell ---------------------------------------------------------------


def test_show_names_the_model_file_but_not_where_it_lies(embedded: runtime.RuntimeRecord) -> None:
    answer = _post(embedded, "/api/show", {"model": CHAT})
    assert answer.status_code == 200
    text = answer.text
    path = runtime.chat_model_path()
    assert str(path.parent) not in text and path.name in answer.json()["modelfile"]


def test_a_huge_unknown_model_name_is_not_echoed_whole(embedded: runtime.RuntimeRecord) -> None:
    name = "m" * 100_000
    for path, error in (
        ("/api/show", _ollama_error),
        ("/api/chat", _ollama_error),
        ("/api/embeddings", _ollama_error),
        ("/v1/chat/completions", _openai_error),
    ):
        answer = _post(embedded, path, {"model": name, "messages": HELLO})
        message = error(answer, 404)
        assert len(answer.content) < 1000 and "100000 characters" in message, message
    answer = requests.get(embedded.url + "/v1/models/" + "m" * 5000, timeout=30)
    assert len(answer.content) < 1000 and "5000 characters" in _openai_error(answer, 404)


# --- 5. The nginx front: no token in its logs, the runtime's body limit ----------------------


@pytest.mark.nginx
def test_nginx_logs_no_token_and_refuses_what_the_runtime_would(
    embedded: runtime.RuntimeRecord, tmp_path: Path
) -> None:
    from test_deploy import NGINX, TOKEN, nginx_config  # the shipped config, test addresses

    assert NGINX is not None
    tmp_path.chmod(0o755)  # nginx's workers may run as another user
    port = runtime.free_port()
    main = nginx_config(tmp_path, port, embedded.port or 0)
    # An operator's main log at "info", the level that writes repeated header lines whole.
    main.write_text(main.read_text().replace(" warn;", " info;"))
    server = subprocess.Popen(
        [NGINX, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url, cert = f"https://127.0.0.1:{port}", str(tmp_path / "cert.pem")
        deadline = time.monotonic() + 10
        while runtime.port_free(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        key = f"Bearer {TOKEN}"
        assert requests.get(
            url + "/api/version", headers={"Authorization": key}, verify=cert, timeout=10
        ).ok
        twice = [("Authorization", key), ("Authorization", key + "-other")]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            context = ssl.create_default_context(cafile=cert)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                head = "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in twice)
                tls.sendall((head + "Connection: close\r\n\r\n").encode())
                assert tls.recv(100).startswith(b"HTTP/1.1 400")
        big = b"x" * (8 * 1024 * 1024 + 1)
        for path, shape in (("/api/chat", str), ("/v1/chat/completions", dict)):
            answer = requests.post(
                url + path, data=big, headers={"Authorization": key}, verify=cert, timeout=60
            )
            assert answer.status_code == 413
            assert isinstance(answer.json()["error"], shape)  # the dialect's error shape
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)
    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
    assert "labkit-error.log" in logs and "error.log" in logs
    assert "too large body" in logs["labkit-error.log"]  # the site's log works
    assert not [name for name, text in logs.items() if TOKEN in text], "a token reached a log"
