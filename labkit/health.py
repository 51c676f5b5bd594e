"""Is the runtime healthy, and does it stay so? A background monitor and a notebook status light.

Each check is ``check_health`` (``labkit/probe.py``): it asks the runtime the way its family
expects and says **up** (everything fine), **degraded** (the runtime answers but cannot serve
the model: not installed, still loading, listing fails) or **down** (nothing usable answers).
This module runs that check over time and shows it::

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
from typing import Any

from labkit import discovery
from labkit.errors import InvalidInput
from labkit.probe import DIALECTS, Check, HealthReport, Status, check_health, identify

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

COLOURS: dict[Status, str] = {"up": "#1a7f37", "degraded": "#b35900", "down": "#cf222e"}


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
            found = discovery.find_runtime(start=False)
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
