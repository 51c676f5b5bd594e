"""Health checks and the health monitor, against the live runtime (and through the fault proxy)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from labkit import runtime
from labkit.errors import LabkitError
from labkit.faults import Fault, FaultProxy
from labkit.health import HealthMonitor, HealthReport, check_health, status_html

MODEL = runtime.CHAT_MODEL


def health_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "labkit-health"]


@pytest.fixture
def proxy(embedded: runtime.RuntimeRecord) -> Iterator[FaultProxy]:
    with FaultProxy(embedded.url) as p:
        yield p


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_up_against_the_live_runtime(embedded: runtime.RuntimeRecord, dialect: str) -> None:
    report = check_health(embedded.url, dialect, MODEL)
    assert report.status == "up" and report.up
    assert report.reasons == []
    assert all(c.ok and 0 <= c.latency < 2 for c in report.checks)
    names = [c.name for c in report.checks]
    assert names == (["GET /", "GET /api/tags"] if dialect == "ollama" else ["GET /v1/models"])
    assert str(report).startswith(f"up — {MODEL} at {embedded.url}")


def test_llamacpp_checks_its_own_health_endpoint(embedded: runtime.RuntimeRecord) -> None:
    # The embedded runtime's chat model is a real llama.cpp server on its own port.
    # Its servers answer only requests with the runtime's key (only /health is open).
    report = check_health(embedded.llama_url, "llama.cpp", MODEL, api_key=embedded.api_key)
    assert report.status == "up"
    assert [c.name for c in report.checks] == ["GET /health", "GET /v1/models"]
    assert check_health(embedded.llama_url, "llamacpp", api_key=embedded.api_key).status == "up"


def test_an_openai_base_url_is_accepted(embedded: runtime.RuntimeRecord) -> None:
    report = check_health(embedded.url + "/v1", "lmstudio", MODEL)
    assert report.status == "up" and report.url == embedded.url


@pytest.mark.parametrize("dialect", ["ollama", "openai", "llamacpp"])
def test_degraded_when_the_model_is_missing(embedded: runtime.RuntimeRecord, dialect: str) -> None:
    url = embedded.llama_url if dialect == "llamacpp" else embedded.url
    report = check_health(url, dialect, "llama9:70b", api_key=embedded.api_key)
    assert report.status == "degraded"
    assert len(report.reasons) == 1
    assert "'llama9:70b' is not available" in report.reasons[0]
    assert MODEL in report.reasons[0]  # says what is there instead


def test_not_ollama_is_down_for_the_ollama_checks(embedded: runtime.RuntimeRecord) -> None:
    report = check_health(embedded.llama_url, "ollama", MODEL)  # llama.cpp answers / otherwise
    assert report.status == "down"


def test_through_the_proxy_with_503s(proxy: FaultProxy) -> None:
    assert check_health(proxy.url, "ollama", MODEL).status == "up"
    proxy.add(Fault.status(503), path="/api/tags")
    degraded = check_health(proxy.url, "ollama", MODEL)
    assert degraded.status == "degraded"
    assert degraded.reasons[0].startswith("GET /api/tags: HTTP 503")
    proxy.add(Fault.status(503))
    assert check_health(proxy.url, "openai", MODEL).status == "down"
    proxy.clear()
    proxy.add(Fault.status(503), path="/", times=1)  # "/" is a prefix of every path...
    assert check_health(proxy.url, "ollama", MODEL).status == "down"
    assert check_health(proxy.url, "ollama", MODEL).status == "up"  # ...but only once


def test_a_hung_runtime_is_down_within_the_timeout(proxy: FaultProxy) -> None:
    proxy.add(Fault.hang())
    began = time.perf_counter()
    report = check_health(proxy.url, "ollama", MODEL, timeout=0.3)
    assert time.perf_counter() - began < 2
    assert report.status == "down"
    assert "no answer within 0.3 s" in report.reasons[0]


def test_an_api_key_is_sent(proxy: FaultProxy) -> None:
    check_health(proxy.url, "openai", MODEL, api_key="team-secret")
    assert proxy.requests[0].headers["Authorization"] == "Bearer team-secret"


def test_monitor_keeps_a_history_and_reports_changes(proxy: FaultProxy) -> None:
    changes: list[HealthReport] = []
    monitor = HealthMonitor(
        proxy.url, "ollama", MODEL, interval=0.05, keep=5, on_change=changes.append
    )
    with monitor:
        deadline = time.monotonic() + 5
        while len(monitor.history) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.add(Fault.status(503))
        while (monitor.latest is None or monitor.latest.status != "down") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert health_threads()
    assert health_threads() == []  # stop() waited for the thread
    assert [r.status for r in changes] == ["up", "down"]
    assert len(monitor.history) <= 5  # only the newest are kept
    availability = monitor.availability()
    assert availability is not None and 0 < availability < 1


def test_monitor_finds_the_runtime_in_use(embedded: runtime.RuntimeRecord) -> None:
    monitor = HealthMonitor(interval=60)
    assert monitor.latest is None and monitor.availability() is None
    assert monitor.check_now().status == "up"
    assert monitor.model  # the chat model discovery picked
    with pytest.raises(LabkitError, match="interval"):
        HealthMonitor(embedded.url, "ollama", interval=0)


def test_status_widget_follows_the_monitor(proxy: FaultProxy) -> None:
    monitor = HealthMonitor(proxy.url, "ollama", MODEL, interval=60)
    label = monitor.widget()
    assert "checking" in label.value
    monitor.check_now()
    assert "● up" in label.value and "#1a7f37" in label.value
    proxy.add(Fault.status(503))
    monitor.check_now()
    assert "● down" in label.value and "HTTP 503" in label.value
    assert label.value == status_html(monitor.latest)
