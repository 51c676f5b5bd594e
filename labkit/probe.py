"""Knock on one address: is a model server there, which dialect does it speak, is it healthy?

The runtimes labkit knows, and where they listen by default, are ``KNOWN_RUNTIMES``. Each
runtime family has its own signs of life:

* Ollama (and the kit's embedded runtime): ``GET /`` says "Ollama is running", and
  ``GET /api/tags`` lists the model;
* a llama.cpp server: ``GET /health`` says ok (503 while it is still loading the model);
* anything OpenAI-compatible (LM Studio, vLLM, ...): ``GET /v1/models`` lists the model.

``identify`` asks what a server is; ``check_health`` gives a verdict: **up** (everything
fine), **degraded** (the runtime answers but cannot serve the model: not installed, still
loading, listing fails) or **down** (nothing usable answers)::

    identify("http://127.0.0.1:11434")      # ("ollama", ("smollm2:135m", ...)) or None
    report = check_health("http://127.0.0.1:11434", "ollama", "smollm2:135m")
    print(report)                           # up — smollm2:135m at http://127.0.0.1:11434 ...

Watching a runtime over time is ``labkit/health.py``'s job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import requests

from labkit.errors import InvalidInput
from labkit.models import match_model
from labkit.transport import auth_headers, base_url

__all__ = [
    "DIALECTS",
    "KNOWN_RUNTIMES",
    "LLAMA_CPP",
    "LM_STUDIO",
    "OLLAMA",
    "PROBE_TIMEOUT",
    "Check",
    "HealthReport",
    "KnownRuntime",
    "Status",
    "check_health",
    "identify",
]

PROBE_TIMEOUT = 1.0  # seconds; a local server that is up answers in milliseconds


class KnownRuntime(NamedTuple):
    """A runtime labkit looks for: its name, its default port and the dialect it speaks."""

    name: str
    port: int
    dialect: str  # "ollama" or "openai"

    @property
    def url(self) -> str:
        """Where it listens when left to its defaults."""
        return f"http://127.0.0.1:{self.port}"


OLLAMA = KnownRuntime("Ollama", 11434, "ollama")
LM_STUDIO = KnownRuntime("LM Studio", 1234, "openai")
LLAMA_CPP = KnownRuntime("llama.cpp server", 8080, "openai")
# In the order labkit.discovery tries them.
KNOWN_RUNTIMES = (OLLAMA, LM_STUDIO, LLAMA_CPP)

Status = Literal["up", "degraded", "down"]
# The name people use -> the family of checks to run.
DIALECTS = {
    "ollama": "ollama",
    "openai": "openai",
    "lmstudio": "openai",
    "llamacpp": "llamacpp",
    "llama.cpp": "llamacpp",
}


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


def identify(
    url: str, *, timeout: float = PROBE_TIMEOUT, api_key: str | None = None
) -> tuple[str, tuple[str, ...]] | None:
    """Ask ``url`` what it is: ``(dialect, model names)``, or None if no model server answers."""
    probe = _Prober(url, timeout, api_key)
    if _alive(probe).ok:
        names, _ = _names(probe, "/api/tags", "models", "name")
        return ("ollama", tuple(names)) if names is not None else None
    names, _ = _names(probe, "/v1/models", "data", "id")
    return ("openai", tuple(names)) if names is not None else None


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
    probe = _Prober(url, timeout, api_key)  # an OpenAI base URL (.../v1) is accepted too
    if kind == "ollama":
        checks, status = _check_ollama(probe, model)
    elif kind == "llamacpp":
        checks, status = _check_llamacpp(probe, model)
    else:
        checks, status = _check_openai(probe, model)
    return HealthReport(status, probe.base, kind, model, tuple(checks))


class _Prober:
    """GET requests with the timing and the error wording every check shares."""

    def __init__(self, url: str, timeout: float, api_key: str | None) -> None:
        self.base, self.timeout = base_url(url), timeout
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
