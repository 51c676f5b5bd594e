"""The class server of deploy/jupyterhub, run for real: a hub, three learners, one shared runtime.

The hub runs with the shipped configuration (only its ports are test ones), as root, with
three system users made here (and removed after). nginx runs the shipped token proxy
(deploy/nginx) in front of the session's runtime, which belongs to another user than the
learners, as the team's systemd service would. Each learner logs in through the hub's REST
API with their password, and notebook 00 runs in each one's own server, cell by cell,
through that server's kernel API. Then nginx is checked with two runtimes behind its
``least_conn`` upstream (deploy/jupyterhub/nginx-upstream.conf).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from needs import needs_root

from labkit import runtime
from labkit.course.quizzes import option_order
from labkit.errors import InvalidInput
from labkit.grader.sandbox import reachability_covers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HUB = DEPLOY / "jupyterhub"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SETUP_NOTEBOOK = ROOT / "notebooks/00-check-your-setup.ipynb"
GROUP = "lkt-learners"
# The proxy stands where a server's public name would: on a loopback address that is not
# 127.0.0.1, which labkit treats as this machine's own (no proxy from the environment, and no
# REQUESTS_CA_BUNDLE either), while a real class reaches https://llm.example.org.
PROXY_HOST = "127.0.0.2"

pytestmark = pytest.mark.slow

sys.path.insert(0, str(HUB))
import labkit_hub  # noqa: E402  (deploy/jupyterhub, not a package)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(runtime.free_port())
    return sorted(ports)


def _wait_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"not listening on {port}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


# --- nginx: the shipped token proxy ----------------------------------------------------------


@dataclass
class Proxy:
    url: str
    cert: Path
    config: Path
    token_map: Path
    access_log: Path

    def users_seen(self) -> list[str]:
        """The learner each request through the proxy was let in as (by its token)."""
        lines = self.access_log.read_text().splitlines()
        return [line.split()[0] for line in lines if line.split() and line.split()[0] != "-"]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for the proxy's address and its key, valid for a day."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subject = ["-subj", f"/CN={PROXY_HOST}", "-addext", f"subjectAltName=IP:{PROXY_HOST}"]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += [*subject, "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    cert.chmod(0o644)  # every learner's kernel checks the proxy against it
    return cert, key


def _site(folder: Path, port: int, upstream: str, token_map: Path) -> str:
    """deploy/nginx/labkit.conf with test addresses, certificate and token map."""
    cert, key = _certificate(folder)
    site = (DEPLOY / "nginx/labkit.conf").read_text()
    swaps = {
        "listen 443 ssl;": f"listen {PROXY_HOST}:{port} ssl;",
        "/etc/nginx/labkit-tokens.map": str(token_map),
        "/etc/nginx/snippets/labkit-proxy.conf": str(DEPLOY / "nginx/labkit-proxy.conf"),
        "/etc/ssl/labkit/fullchain.pem": str(cert),
        "/etc/ssl/labkit/privkey.pem": str(key),
        "/var/log/nginx/labkit-error.log": str(folder / "labkit-error.log"),
    }
    for old, new in swaps.items():
        assert old in site, f"deploy/nginx/labkit.conf no longer has {old!r}"
        site = site.replace(old, new)
    block = re.compile(r"upstream labkit_runtime \{.*?\n\}", re.DOTALL)
    assert block.search(site), "deploy/nginx/labkit.conf no longer has its upstream block"
    return block.sub(lambda _: upstream, site, count=1)


@contextlib.contextmanager
def _nginx(upstream: str) -> Iterator[Proxy]:
    """nginx with the shipped site on a loopback port, logging who each request came from."""
    port = runtime.free_port()
    with tempfile.TemporaryDirectory(prefix="labkit-hub-nginx-") as name:
        folder = Path(name)
        folder.chmod(0o755)  # nginx's workers may run as another user
        token_map = folder / "tokens.map"
        labkit_hub.write_private(token_map, "")
        (folder / "labkit.conf").write_text(_site(folder, port, upstream, token_map))
        temp = "".join(
            f"    {kind}_temp_path {folder / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = folder / "nginx.conf"
        main.write_text(
            f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} warn;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n{temp}    include {folder / 'labkit.conf'};\n"
            "    log_format who '$labkit_user $status $upstream_addr $request_uri';\n"
            f"    access_log {folder / 'access.log'} who;\n}}\n"
        )
        check = subprocess.run([NGINX, "-t", "-c", str(main)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        server = subprocess.Popen([NGINX, "-c", str(main)], stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, server, folder / "error.log", 10, PROXY_HOST)
            yield Proxy(
                f"https://{PROXY_HOST}:{port}",
                folder / "cert.pem",
                main,
                token_map,
                folder / "access.log",
            )
        finally:
            server.send_signal(signal.SIGQUIT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# --- three learners --------------------------------------------------------------------------


def _processes_of(uid: int) -> list[int]:
    """The processes running as ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def _remove_user(name: str) -> None:
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        for pid in _processes_of(uid):  # a server the hub failed to stop: these users are ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def learners() -> Iterator[dict[str, str]]:
    """Three system users in the learners' group, each with a password: name -> password."""
    needs_root("making system users for the class server")
    homes = Path(tempfile.mkdtemp(prefix="labkit-hub-homes-"))
    homes.chmod(0o755)
    passwords = {name: secrets.token_urlsafe(12) for name in LEARNERS}
    for name in LEARNERS:
        _remove_user(name)  # left over from an interrupted run
    subprocess.run(["groupadd", "-f", GROUP], check=True, capture_output=True)
    try:
        for name, password in passwords.items():
            subprocess.run(
                [
                    *("useradd", "--create-home", "--home-dir", str(homes / name)),
                    *("--groups", GROUP, "--shell", "/bin/bash", name),
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield passwords
    finally:
        for name in LEARNERS:
            _remove_user(name)
        subprocess.run(["groupdel", GROUP], capture_output=True, check=False)
        shutil.rmtree(homes, ignore_errors=True)


# --- the hub ---------------------------------------------------------------------------------


def _where_learners_reach_python(command: list[str], stashes: list[Path]) -> list[str]:
    """``command`` in a mount namespace where learners can reach this Python and labkit.

    Python may live under a folder others cannot enter (root's pyenv, on a developer's
    machine): there, the hub and the servers it starts see that folder as a tmpfs holding
    only the way to Python, as the grading sandbox does. The machine itself is unchanged.
    """
    needed = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable), ROOT / "labkit"]
    covers = reachability_covers(needed)
    if not covers:
        return command
    parents = [cover[0] for cover in covers]
    assert not any(a != b and a.startswith(b + "/") for a in parents for b in parents), covers
    lines = ["set -e"]
    for parent, keeps, mode in covers:
        stash = Path(tempfile.mkdtemp(prefix="labkit-hub-stash-"))
        stashes.append(stash)
        lines += [
            f"mount --bind {shlex.quote(parent)} {stash}",
            f"mount -t tmpfs -o mode={mode},size=1m tmpfs {shlex.quote(parent)}",
        ]
        for keep in keeps:
            make = "mkdir -p" if Path(keep).is_dir() else "touch"
            lines += [
                f"{make} {shlex.quote(keep)}",
                f"mount --bind {shlex.quote(str(stash / Path(keep).name))} {shlex.quote(keep)}",
            ]
    lines.append('exec "$@"')
    script = "\n".join(lines)
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "sh", "-c", script, "sh", *command]


@dataclass
class Hub:
    url: str
    admin_token: str
    state: Path
    proxy: Proxy
    log: Path

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        answer = requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kw)
        assert answer.status_code < 400, (
            f"{method} {path}: {answer.status_code} {answer.text}\n{self.log.read_text()[-3000:]}"
        )
        return answer.json() if answer.content else None


@pytest.fixture(scope="module")
def hub(learners: dict[str, str], embedded: runtime.RuntimeRecord) -> Iterator[Hub]:
    """JupyterHub with deploy/jupyterhub/jupyterhub_config.py, nginx's token proxy beside it."""
    upstream = f"upstream labkit_runtime {{\n    server {embedded.url.split('//')[1]};\n}}"
    with _nginx(upstream) as proxy, tempfile.TemporaryDirectory(prefix="labkit-hub-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        course = folder / "course-release"  # what the learners get: the setup notebook
        (course / "notebooks").mkdir(parents=True)
        shutil.copy(SETUP_NOTEBOOK, course / "notebooks")
        for path in [course, *course.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        public, api, proxy_api = _free_ports(3)
        config = folder / "jupyterhub_config.py"
        config.write_text(
            "c = get_config()  # noqa: F821\n"
            f"load_subconfig({str(HUB / 'jupyterhub_config.py')!r})  # noqa: F821\n"
            f"c.JupyterHub.bind_url = 'http://127.0.0.1:{public}'\n"
            f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{api}'\n"
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{proxy_api}'\n"
        )
        state = folder / "state"
        env = {
            **os.environ,
            "LABKIT_HUB_STATE": str(state),
            "LABKIT_HUB_TOKEN_MAP": str(proxy.token_map),
            "LABKIT_HUB_RELOAD": f"{NGINX} -c {proxy.config} -s reload",
            "LABKIT_HUB_RUNTIME_URL": proxy.url,
            "LABKIT_HUB_CA_BUNDLE": str(proxy.cert),
            "LABKIT_HUB_COURSE": str(course),
            "LABKIT_HUB_GROUP": GROUP,
            "LABKIT_HUB_ADMINS": "",
            "LABKIT_HUB_VENV": sys.prefix,
        }
        log = folder / "hub.log"
        stashes: list[Path] = []
        command = [str(Path(sys.prefix) / "bin/jupyterhub"), "-f", str(config)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                _where_learners_reach_python(command, stashes),
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_port(public, process, log, 60)
            url = f"http://127.0.0.1:{public}"
            deadline = time.monotonic() + 60  # the proxy listens before the hub's route is in
            while requests.get(f"{url}/hub/api/", timeout=10).status_code != 200:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            token = (state / "instructor-api-token").read_text().strip()
            yield Hub(url, token, state, proxy, log)
        finally:
            process.send_signal(signal.SIGTERM)  # stops the learners' servers and its proxy
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # A hub stopped while it was still starting leaves its proxy behind (its group).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            for stash in stashes:
                stash.rmdir()  # its mount went with the hub's namespace


# --- a kernel in a learner's server, over its websocket --------------------------------------


class Kernel:
    """A kernel in one learner's server, run through that server's REST and websocket API."""

    def __init__(self, server: str, token: str, folder: str) -> None:
        import websocket  # jupyter_server's own dependency

        self.server, self.headers = server, {"Authorization": f"token {token}"}
        started = requests.post(
            f"{server}/api/kernels",
            json={"name": "python3", "path": folder},
            headers=self.headers,
            timeout=60,
        )
        assert started.status_code == 201, started.text
        self.id = started.json()["id"]
        self.ws = websocket.create_connection(
            server.replace("http", "ws", 1) + f"/api/kernels/{self.id}/channels",
            header=[f"Authorization: token {token}"],
            timeout=180,
        )
        self.session = uuid.uuid4().hex

    def run(self, code: str) -> tuple[str, list[str]]:
        """Run ``code``: what it printed (and displayed as text), and its errors."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "session": self.session,
            "username": "",
            "version": "5.3",
            "date": datetime.now(timezone.utc).isoformat(),
        }
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
        self.ws.send(json.dumps({**message, "channel": "shell", "buffers": []}))
        text: list[str] = []
        errors: list[str] = []
        idle = replied = False
        while not (idle and replied):
            got = json.loads(self.ws.recv())
            if got.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, body = got["msg_type"], got["content"]
            if kind == "stream":
                text.append(body["text"])
            elif kind in ("execute_result", "display_data"):
                text.append(body["data"].get("text/plain", ""))
            elif kind == "error":
                errors.append(f"{body['ename']}: {body['evalue']}")
            elif kind == "status" and body["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        return "".join(text), errors

    def close(self) -> None:
        self.ws.close()
        requests.delete(f"{self.server}/api/kernels/{self.id}", headers=self.headers, timeout=30)


PROBE = """
import hashlib, json, os, pwd
print("PROBE" + json.dumps({
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "learner": os.environ.get("LABKIT_LEARNER"),
    "base_url": os.environ.get("LABKIT_BASE_URL"),
    "token": hashlib.sha256(os.environ.get("LABKIT_API_KEY", "").encode()).hexdigest(),
    "runtime": rt.url, "runtime_reason": rt.reason,
    # The official clients, built without an address or key, reach it too.
    "ollama_models": len(__import__("ollama").Client().list().models),
    "openai_models": len(__import__("openai").OpenAI().models.list().data),
}))
"""


def _quiz_cell() -> str:
    """The first quiz of lesson 1, as it stands, bound to a name."""
    lesson = nbformat.read(ROOT / "notebooks/01-local-model-apis.ipynb", as_version=4)
    cell = next(c for c in lesson.cells if c.cell_type == "code" and "\nquiz(" in c.source)
    return (
        cell.source.replace("\nquiz(", "\nq = quiz(", 1)
        + '\nprint("QUIZ" + json.dumps({"id": q.id, "order": q.order}))'
    )


def _learners(count: int) -> tuple[str, ...]:
    """``count`` learner names to whom the quiz of ``_quiz_cell`` shows different orders.

    Two learners see the same order of four options one time in 24: the names are picked
    for this quiz, so that a difference between learners is what the test can see.
    """
    call = next(
        node
        for node in ast.walk(ast.parse(_quiz_cell()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "quiz"
    )
    question, options = ast.literal_eval(call.args[0]), ast.literal_eval(call.args[1])
    named = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg == "id"}
    quiz_id = named.get("id") or hashlib.sha256(question.encode()).hexdigest()[:12]
    chosen: dict[tuple[int, ...], str] = {}
    for name in ("ada", "grace", "alan", "edsger", "barbara", "ken", "frances", "dennis"):
        chosen.setdefault(tuple(option_order(quiz_id, len(options), who=f"lkt-{name}")), name)
    assert len(chosen) >= count, "no three of the names see different orders: add names"
    return tuple(f"lkt-{name}" for name in list(chosen.values())[:count])


def _first_json(text: str, tag: str) -> Any:
    line = next(line for line in text.splitlines() if line.startswith(tag))
    return json.loads(line[len(tag) :])


LEARNERS = _learners(3)


@dataclass
class Session:
    name: str
    token: str  # the learner's hub token, from logging in with their password
    server: str
    outputs: list[str]
    errors: list[str]
    probe: dict[str, Any]
    quiz: dict[str, Any]
    kernel: Kernel  # the notebook's kernel, still running (as a learner's would be)


def _log_in(hub: Hub, name: str, password: str) -> str:
    """Log ``name`` in through the hub's REST API with their password: their API token."""
    answer = requests.post(
        f"{hub.url}/hub/api/users/{name}/tokens",
        json={"auth": {"username": name, "password": password}, "note": "class test"},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["token"])


def _work(hub: Hub, name: str, token: str) -> Session:
    """Run notebook 00 in ``name``'s server from their own course copy, then a quiz."""
    server = f"{hub.url}/user/{name}"
    path = "course/notebooks/00-check-your-setup.ipynb"
    answer = requests.get(
        f"{server}/api/contents/{path}", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert answer.status_code == 200, f"{name}'s server has no {path}: {answer.text}"
    notebook = nbformat.from_dict(answer.json()["content"])
    kernel = Kernel(server, token, "course/notebooks")
    outputs, errors = [], []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            text, failed = kernel.run(cell.source)
            outputs.append(text)
            errors += failed
            if failed:
                break
    probe = _first_json(kernel.run(PROBE)[0], "PROBE") if not errors else {}
    text, failed = kernel.run("import json\n" + _quiz_cell())
    errors += failed
    quiz = _first_json(text, "QUIZ") if not failed else {}
    return Session(name, token, server, outputs, errors, probe, quiz, kernel)


@pytest.fixture(scope="module")
def class_run(hub: Hub, learners: dict[str, str]) -> Iterator[dict[str, Session]]:
    """Each learner logged in, their server started by the instructor's token, notebook 00 run."""
    hub.api("POST", "/users", json={"usernames": list(LEARNERS)}, timeout=30)
    tokens = {name: _log_in(hub, name, password) for name, password in learners.items()}
    # Each POST waits up to 10 s for its server: ask for all three at once.
    with ThreadPoolExecutor(len(LEARNERS)) as pool:
        list(pool.map(lambda name: hub.api("POST", f"/users/{name}/server", timeout=150), LEARNERS))
    deadline = time.monotonic() + 150
    waiting = set(LEARNERS)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            server = hub.api("GET", f"/users/{name}", timeout=30)["servers"].get("", {})
            if server.get("ready"):
                waiting.discard(name)
        time.sleep(0.3)
    assert not waiting, f"servers not ready: {waiting}\n{hub.log.read_text()[-3000:]}"
    # The three learners work at the same time, as a class does.
    with ThreadPoolExecutor(len(LEARNERS)) as pool:
        sessions = {s.name: s for s in pool.map(lambda n: _work(hub, n, tokens[n]), LEARNERS)}
    try:
        yield sessions
    finally:
        for session in sessions.values():
            session.kernel.close()


@pytest.mark.sandbox
@pytest.mark.nginx
@pytest.mark.jupyterhub
def test_each_learner_runs_the_setup_notebook_in_their_own_server(
    class_run: dict[str, Session], hub: Hub
) -> None:
    for name, session in class_run.items():
        account = pwd.getpwnam(name)
        assert session.errors == [], f"{name}: {session.errors}"
        checks = [text for text in session.outputs if "✅" in text or "✘" in text]
        assert len(checks) == 3 and not any("✘" in text for text in checks), (name, checks)
        probe = session.probe
        # The kernel runs as the learner, in their own copy of the course.
        assert probe["uid"] == account.pw_uid
        assert probe["cwd"] == f"{account.pw_dir}/course/notebooks"
        assert Path(account.pw_dir, "course").stat().st_uid == account.pw_uid
        # ... and talks to the shared runtime through the token proxy, as set by the hub.
        assert probe["learner"] == name
        assert probe["base_url"] == probe["runtime"] == hub.proxy.url
        assert probe["runtime_reason"] == "set by $LABKIT_BASE_URL"
        assert probe["ollama_models"] >= 2 and probe["openai_models"] >= 2


@pytest.mark.sandbox
@pytest.mark.nginx
@pytest.mark.jupyterhub
def test_the_proxy_let_in_three_learners_with_three_tokens(
    class_run: dict[str, Session], hub: Hub
) -> None:
    tokens = json.loads((hub.state / "tokens.json").read_text())
    assert sorted(tokens) == sorted(LEARNERS)
    assert len(set(tokens.values())) == 3
    assert (hub.state / "tokens.json").stat().st_mode & 0o077 == 0  # root's alone
    lines = hub.proxy.token_map.read_text().splitlines()
    assert sorted(lines) == sorted(
        f'"~^Bearer {tokens[name]}$"  {name};  {labkit_hub.MARK}' for name in LEARNERS
    )
    for name, session in class_run.items():
        # Each kernel holds its learner's token (no one typed it) and no other.
        assert session.probe["token"] == hashlib.sha256(tokens[name].encode()).hexdigest()
    seen = hub.proxy.users_seen()
    # nginx let every learner's notebook in, each by their own token.
    for name in LEARNERS:
        assert seen.count(name) >= 4, (name, seen)  # models, chat, stream, embed at least


@pytest.mark.sandbox
@pytest.mark.nginx
@pytest.mark.jupyterhub
def test_each_learner_sees_their_own_quiz_order(class_run: dict[str, Session]) -> None:
    orders = {name: tuple(session.quiz["order"]) for name, session in class_run.items()}
    assert len(set(orders.values())) == len(LEARNERS), orders
    for name, session in class_run.items():
        quiz = session.quiz
        assert list(orders[name]) == option_order(quiz["id"], len(quiz["order"]), who=name)


@pytest.mark.sandbox
@pytest.mark.nginx
@pytest.mark.jupyterhub
def test_a_learners_labkit_down_cannot_stop_the_shared_runtime(
    class_run: dict[str, Session],
) -> None:
    shared = runtime.read_record()  # the session's runtime: another user's, to the learners
    assert shared is not None
    first, second = (class_run[name] for name in LEARNERS[:2])
    text, errors = first.kernel.run(
        "import json, os, signal, subprocess\n"
        "own = subprocess.run(['labkit', 'down'], capture_output=True, text=True)\n"
        # Pointed at the shared runtime's own folder: its record is not theirs to read.
        f"env = {{**os.environ, 'LABKIT_HOME': {str(runtime.home())!r}}}\n"
        "theirs = subprocess.run(['labkit', 'down'], capture_output=True, text=True, env=env)\n"
        "try:\n"
        f"    os.kill({shared.pid}, signal.SIGTERM)\n"
        "    killed = 'sent'\n"
        "except PermissionError:\n"
        "    killed = 'refused'\n"
        "print('DOWN' + json.dumps({'own': own.stdout + own.stderr, 'own_rc': own.returncode,"
        " 'theirs': theirs.stdout + theirs.stderr, 'kill': killed}))\n"
    )
    assert errors == []
    down = _first_json(text, "DOWN")
    assert down["own_rc"] == 0 and "No embedded runtime is running" in down["own"], down
    assert "No embedded runtime is running" in down["theirs"], down
    assert down["kill"] == "refused"
    # The shared runtime is the same process, and another learner's call still gets through.
    still = runtime.read_record()
    assert still is not None and still.pid == shared.pid
    text, errors = second.kernel.run(
        "print('REPLY' + str(bool(client.chat('Say hi.', temperature=0, seed=1, max_tokens=4).text)))"
    )
    assert errors == [] and "REPLYTrue" in text


# --- several runtimes behind nginx -----------------------------------------------------------


@pytest.fixture(scope="module")
def second_runtime() -> Iterator[runtime.RuntimeRecord]:
    """A second kit runtime, with a state folder of its own; stopped after."""
    with tempfile.TemporaryDirectory(prefix="labkit-second-") as name:
        record = runtime.up(runtime.free_port(), state_dir=Path(name), say=False)
        try:
            yield record
        finally:
            runtime.down(state_dir=Path(name), say=False)


def _instance(answer: requests.Response) -> str:
    value = answer.headers["X-Labkit-Runtime"]
    return dict(part.strip().partition("=")[::2] for part in value.split(";"))["instance"]


@pytest.mark.nginx
def test_least_conn_spreads_requests_over_two_runtimes(
    embedded: runtime.RuntimeRecord, second_runtime: runtime.RuntimeRecord
) -> None:
    shipped = (HUB / "nginx-upstream.conf").read_text()
    block = re.search(r"upstream labkit_runtime \{.*?\n\}", shipped, re.DOTALL)
    assert block and "least_conn;" in block.group(0)
    upstream = (
        block.group(0)
        .replace("127.0.0.1:11434", embedded.url.split("//")[1])
        .replace("127.0.0.1:11435", second_runtime.url.split("//")[1])
    )
    token = secrets.token_urlsafe(32)
    with _nginx(upstream) as proxy:
        labkit_hub.write_private(proxy.token_map, f'"~^Bearer {token}$"  tester;\n')
        subprocess.run([NGINX, "-c", str(proxy.config), "-s", "reload"], check=True)
        labkit_hub.wait_for_token(proxy.url, token, proxy.cert)
        headers = {"Authorization": f"Bearer {token}"}

        def get() -> str:
            answer = requests.get(
                proxy.url + "/api/tags", headers=headers, verify=str(proxy.cert), timeout=30
            )
            assert answer.status_code == 200, answer.text
            return _instance(answer)

        # Requests one after another: with none in flight, each runtime gets its turn.
        spread = [get() for _ in range(6)]
        logs = [
            proxy.access_log.read_text(),
            (proxy.config.parent / "labkit-error.log").read_text(),
        ]
        assert len(set(spread)) == 2 and min(map(spread.count, set(spread))) >= 2, (spread, logs)
        # One runtime held busy by a request still arriving: least_conn sends the next ones to
        # the other (nginx passes the body on as it comes, so the runtime waits for the rest).
        port = int(proxy.url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(proxy.cert))
        with (
            socket.create_connection((PROXY_HOST, port)) as raw,
            context.wrap_socket(raw, server_hostname=PROXY_HOST) as held,
        ):
            held.sendall(
                f"POST /api/show HTTP/1.1\r\nHost: {PROXY_HOST}\r\n".encode()
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(0.5)  # nginx has chosen a runtime and opened the request there
            while_held = [get() for _ in range(4)]
        assert len(set(while_held)) == 1, while_held
    assert set(while_held) < set(spread)


def test_the_hub_unit_verifies() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (HUB / "labkit-hub.service").read_text()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "labkit-hub.service"
        copy.write_text(unit.replace("/opt/local-llm-lab", str(ROOT)))
        done = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_concurrent_grants_keep_every_learners_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that start at once each get a token, and the map ends with all of them."""
    token_map = tmp_path / "tokens.map"
    token_map.write_text('"~^Bearer staff-token$"  staff;\n')  # added by hand: kept
    settings = labkit_hub.HubSettings(
        tmp_path / "state", token_map, ("true",), "https://unused", None, "", Path(sys.prefix)
    )
    store = labkit_hub.TokenStore(settings.state_dir / "tokens.json")
    names = [f"learner{i}" for i in range(12)]
    waits: list[str] = []
    # No proxy here: note which tokens the hub would wait for instead.
    monkeypatch.setattr(labkit_hub, "wait_for_token", lambda url, token, ca: waits.append(token))
    threads = [
        threading.Thread(target=labkit_hub.grant, args=(settings, store, name)) for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    again = labkit_hub.grant(settings, store, names[0])  # a restart keeps the token
    tokens = store.load()
    assert sorted(tokens) == sorted(names) and len(set(tokens.values())) == len(names)
    assert again == tokens[names[0]] and len(waits) == len(names)  # no reload the second time
    lines = token_map.read_text().splitlines()
    assert lines[0] == '"~^Bearer staff-token$"  staff;'
    assert len(lines) == 1 + len(names)
    assert token_map.stat().st_mode & 0o777 == 0o600
    with pytest.raises(InvalidInput, match="lower-case"):
        labkit_hub.grant(settings, store, 'eve; "~^" admin')
