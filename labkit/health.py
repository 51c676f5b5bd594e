"""Is the runtime healthy? One-off checks, a background monitor, and a notebook status light.

Each runtime family has its own signs of life:

* Ollama (and the kit's embedded runtime): ``GET /`` says "Ollama is running", and
  ``GET /api/tags`` lists the model;
* a llama.cpp server: ``GET /health`` says ok (503 while it is still loading the model);
* anything OpenAI-compatible (LM Studio, vLLM, ...): ``GET /v1/models`` lists the model.

The verdict is **up** (everything fine), **degraded** (the runtime answers but cannot serve
the model: not installed, still loading, listing fails) or **down** (nothing usable answers)::

    report = check_health("http://127.0.0.1:11434", "ollama", "smollm2:135m")
    print(report)                 # up — http://127.0.0.1:11434 ...
    monitor = HealthMonitor(interval=5).start()   # checks the runtime labkit finds
    display(monitor.widget())                     # a coloured label that follows it
    monitor.history, monitor.availability()       # ... later; monitor.stop() when done
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

from labkit.errors import InvalidInput
from labkit.models import match_model
from labkit.transport import auth_headers

__all__ = [
    "COLOURS",
    "DIALECTS",
    "Check",
    "HealthMonitor",
    "HealthReport",
    "check_health",
    "identify",
    "status_html",
]

Status = Literal["up", "degraded", "down"]
# The name people use -> the family of checks to run.
DIALECTS = {
    "ollama": "ollama",
    "openai": "openai",
    "lmstudio": "openai",
    "llamacpp": "llamacpp",
    "llama.cpp": "llamacpp",
}
COLOURS: dict[Status, str] = {"up": "#1a7f37", "degraded": "#b35900", "down": "#cf222e"}


@dataclass(frozen=True)
class Check:
    """One probe: what was asked, whether it passed, how long it took (s), and what was seen."""

    name: str
    ok: bool
    latency: float
    detail: str


@dataclass(frozen=True)
class HealthReport:
    """The verdict on one runtime at one moment, with the checks behind it."""

    status: Status
    url: str
    dialect: str
    model: str | None
    checks: tuple[Check, ...]
    checked_at: float = field(default_factory=time.time)  # wall-clock time

    @property
    def up(self) -> bool:
        """True when the runtime can serve the model."""
        return self.status == "up"

    @property
    def reasons(self) -> list[str]:
        """Why the runtime is not up (empty when it is)."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    @property
    def latency(self) -> float:
        """Seconds all checks took together."""
        return sum(c.latency for c in self.checks)

    def __str__(self) -> str:
        what = f"{self.model} at {self.url}" if self.model else self.url
        checks = "; ".join(
            f"{c.name} {'ok' if c.ok else 'FAILED'} ({c.latency * 1000:.0f} ms): {c.detail}"
            for c in self.checks
        )
        return f"{self.status} — {what} ({self.dialect}) — {checks}"


def check_health(
    url: str,
    dialect: str = "ollama",
    model: str | None = None,
    *,
    timeout: float = 2.0,
    api_key: str | None = None,
) -> HealthReport:
    """Probe the runtime at ``url`` the way its ``dialect`` expects; never raises for a bad runtime.

    ``api_key`` defaults to ``$LABKIT_API_KEY``, as for ``Client``.
    """
    kind = DIALECTS.get(dialect.lower())
    if kind is None:
        raise InvalidInput(
            f"Unknown dialect {dialect!r} for a health check. Use one of: {', '.join(DIALECTS)}."
        )
    base = url.rstrip("/").removesuffix("/v1")  # accept an OpenAI base URL too
    probe = _Prober(base, timeout, api_key)
    if kind == "ollama":
        checks, status = _check_ollama(probe, model)
    elif kind == "llamacpp":
        checks, status = _check_llamacpp(probe, model)
    else:
        checks, status = _check_openai(probe, model)
    return HealthReport(status, base, kind, model, tuple(checks))


class _Prober:
    """GET requests with the timing and the error wording every check shares."""

    def __init__(self, base: str, timeout: float, api_key: str | None) -> None:
        self.base, self.timeout = base, timeout
        self.headers = auth_headers(api_key)

    def get(self, path: str) -> tuple[requests.Response | None, float, str]:
        """(response or None, seconds, what went wrong if there was no response)."""
        start = time.perf_counter()
        try:
            response = requests.get(self.base + path, timeout=self.timeout, headers=self.headers)
        except requests.Timeout:
            return None, time.perf_counter() - start, f"no answer within {self.timeout:g} s"
        except requests.exceptions.SSLError as exc:
            problem = (
                f"TLS failed ({exc}); if the server uses your own certificate authority, "
                "point REQUESTS_CA_BUNDLE at its certificate file"
            )
            return None, time.perf_counter() - start, problem
        except requests.ConnectionError:
            return None, time.perf_counter() - start, f"cannot connect to {self.base}"
        except requests.RequestException as exc:
            return None, time.perf_counter() - start, f"request failed: {exc}"
        return response, time.perf_counter() - start, ""


def _http_problem(response: requests.Response) -> str:
    hint = {401: " — the server wants an API key", 403: " — the API key was refused"}
    return f"HTTP {response.status_code}{hint.get(response.status_code, '')}: {response.text[:120]}"


def _names(probe: _Prober, path: str, key: str, field_name: str) -> tuple[list[str] | None, Check]:
    """The model names from a listing (``/api/tags`` or ``/v1/models``), and the check's result."""
    name = f"GET {path}"
    response, took, problem = probe.get(path)
    if response is None:
        return None, Check(name, False, took, problem)
    if not response.ok:
        return None, Check(name, False, took, _http_problem(response))
    try:
        names = [str(m[field_name]) for m in response.json()[key]]
    except (ValueError, KeyError, TypeError):
        return None, Check(name, False, took, f"not a model listing: {response.text[:120]}")
    return names, Check(name, True, took, f"{len(names)} model(s): {', '.join(names) or 'none'}")


def _listing(probe: _Prober, path: str, key: str, field_name: str, model: str | None) -> Check:
    """Check a model listing, and that ``model`` is in it (by ``labkit.models.match_model``)."""
    names, check = _names(probe, path, key, field_name)
    if names is None or model is None:
        return check
    if match_model(model, names) is not None:
        return Check(check.name, True, check.latency, f"has {model}")
    listed = ", ".join(names) or "none"
    return Check(
        check.name, False, check.latency, f"model {model!r} is not available (listed: {listed})"
    )


def _alive(probe: _Prober) -> Check:
    """The liveness probe: Ollama (and the kit's runtime) answer ``GET /`` with "Ollama is running"."""
    response, took, problem = probe.get("/")
    if response is None:
        return Check("GET /", False, took, problem)
    if response.ok and "Ollama is running" in response.text:
        return Check("GET /", True, took, "Ollama is running")
    if response.ok:
        return Check("GET /", False, took, f"not Ollama's answer: {response.text[:80]!r}")
    return Check("GET /", False, took, _http_problem(response))


def identify(
    url: str, *, timeout: float = 1.0, api_key: str | None = None
) -> tuple[str, tuple[str, ...]] | None:
    """Ask ``url`` what it is: ``(dialect, model names)``, or None if no model server answers."""
    probe = _Prober(url.rstrip("/").removesuffix("/v1"), timeout, api_key)
    if _alive(probe).ok:
        names, _ = _names(probe, "/api/tags", "models", "name")
        return ("ollama", tuple(names)) if names is not None else None
    names, _ = _names(probe, "/v1/models", "data", "id")
    return ("openai", tuple(names)) if names is not None else None


def _check_ollama(probe: _Prober, model: str | None) -> tuple[list[Check], Status]:
    root = _alive(probe)
    if not root.ok:
        return [root], "down"
    tags = _listing(probe, "/api/tags", "models", "name", model)
    return [root, tags], "up" if tags.ok else "degraded"


def _check_llamacpp(probe: _Prober, model: str | None) -> tuple[list[Check], Status]:
    response, took, problem = probe.get("/health")
    if response is None:
        return [Check("GET /health", False, took, problem)], "down"
    if response.status_code == 503:  # llama.cpp's way of saying "still loading the model"
        return [Check("GET /health", False, took, "loading the model (HTTP 503)")], "degraded"
    if not response.ok:
        return [Check("GET /health", False, took, _http_problem(response))], "down"
    health = Check("GET /health", True, took, response.text.strip()[:80])
    if model is None:
        return [health], "up"
    listing = _listing(probe, "/v1/models", "data", "id", model)
    return [health, listing], "up" if listing.ok else "degraded"


def _check_openai(probe: _Prober, model: str | None) -> tuple[list[Check], Status]:
    listing = _listing(probe, "/v1/models", "data", "id", model)
    if listing.ok:
        return [listing], "up"
    # A listing that arrived but lacks the model means the server itself is fine.
    return [listing], "degraded" if "is not available" in listing.detail else "down"


# --- watching over time ----------------------------------------------------------------------


class HealthMonitor:
    """Checks the runtime every ``interval`` seconds in a background thread and keeps a history."""

    def __init__(
        self,
        url: str | None = None,
        dialect: str | None = None,
        model: str | None = None,
        *,
        interval: float = 5.0,
        keep: int = 720,
        timeout: float = 2.0,
        api_key: str | None = None,
        on_change: Callable[[HealthReport], None] | None = None,
    ) -> None:
        if url is None:
            from labkit.discovery import find_runtime  # only when asked to find the runtime

            found = find_runtime(start=False)
            url, dialect, model = found.url, dialect or found.dialect, model or found.chat_model
        if interval <= 0:
            raise InvalidInput(f"The check interval must be positive, not {interval}.")
        self.url, self.dialect, self.model = url, dialect or "ollama", model
        self.interval, self.timeout, self.api_key = interval, timeout, api_key
        self.on_change = on_change  # called (in the monitor's thread) when the status changes
        self._history: deque[HealthReport] = deque(maxlen=keep)
        self._listeners: list[Callable[[HealthReport], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_now(self) -> HealthReport:
        """Run the checks once, record the report and tell the listeners."""
        report = check_health(
            self.url, self.dialect, self.model, timeout=self.timeout, api_key=self.api_key
        )
        with self._lock:
            previous = self._history[-1] if self._history else None
            self._history.append(report)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(report)
        if self.on_change and (previous is None or previous.status != report.status):
            self.on_change(report)
        return report

    @property
    def latest(self) -> HealthReport | None:
        """The most recent report, or None before the first check."""
        with self._lock:
            return self._history[-1] if self._history else None

    @property
    def history(self) -> list[HealthReport]:
        """The kept reports, oldest first."""
        with self._lock:
            return list(self._history)

    def availability(self) -> float | None:
        """The share of kept reports that said up (None before the first check)."""
        history = self.history
        return sum(r.up for r in history) / len(history) if history else None

    def start(self) -> HealthMonitor:
        """Start checking in the background (the first check runs at once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="labkit-health", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking; returns once the background thread has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * 3 + 5)
            self._thread = None

    def __enter__(self) -> HealthMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_now()
            except Exception as exc:  # a failing listener must not end the monitoring
                print(f"labkit.health: a status listener failed: {exc!r}")
            self._stop.wait(self.interval)

    def widget(self) -> Any:
        """A notebook label (ipywidgets.HTML) with the latest status, updated by every check."""
        import ipywidgets  # imported here so that importing labkit.health needs no display

        label = ipywidgets.HTML(value=status_html(self.latest))

        def update(report: HealthReport) -> None:
            label.value = status_html(report)

        with self._lock:
            self._listeners.append(update)
        return label


def status_html(report: HealthReport | None) -> str:
    """The HTML the status widget shows for ``report`` (a coloured dot and one line)."""
    if report is None:
        return '<span style="color:#6e7781">● checking…</span>'
    colour = COLOURS[report.status]
    what = report.model or report.url
    when = time.strftime("%H:%M:%S", time.localtime(report.checked_at))
    why = "; ".join(report.reasons) or f"{report.latency * 1000:.0f} ms"
    return (
        f'<span style="color:{colour};font-weight:bold">● {report.status}</span> '
        f"{_escape(what)} — {_escape(why)} <small>({when})</small>"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
