"""How a class is graded: the options of ``labkit grade`` as one object, checked once.

``labkit grade`` builds a ``GradeOptions`` from its command line; a script builds one by
hand (``GradeOptions(workers=4, timeout=120)``). Every part of the grader reads the options
from this one object, so a new option is a field here, its flag in ``cli``, and the code
that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.errors import GradingError

__all__ = ["NETWORKS", "GradeOptions"]


NETWORKS = ("runtime", "host")  # what a kernel's network reaches: see GradeOptions.network

# The least of each limit that a notebook could be graded under, by the flag that sets it.
_SMALLEST = {
    "memory_mb": ("--memory-mb", 256),
    "disk_mb": ("--disk-mb", 16),
    "timeout": ("--timeout", 1),
    "notebook_timeout": ("--notebook-timeout", 10),
    "max_notebook_mb": ("--max-notebook-mb", 0.01),
}


@dataclass(frozen=True)
class GradeOptions:
    """The options of one grading run (the defaults are ``labkit grade``'s)."""

    workers: int = 2  # notebooks graded at once, each in a kernel of its own
    timeout: float = 60.0  # seconds per cell and per test
    regrade: bool = False  # grade notebooks that did not change since the last run too
    sandbox: bool = True  # each kernel boxed as an unprivileged user (root on Linux)
    memory_mb: int = 4096  # for each kernel and everything it starts, together
    disk_mb: int = 512  # each kernel's scratch disk (a tmpfs), temp folders included
    notebook_timeout: float = 600.0  # wall-time seconds per notebook, re-runs included
    max_notebook_mb: float = 20.0  # larger notebook files are not graded
    network: str = "runtime"  # "runtime": kernels reach only the runtime; "host": the network
    cache: bool = True  # repeated deterministic model requests answered from a shared cache
    progress: bool = True  # a progress bar on the terminal
    # A Dask scheduler's address (tcp://HOST:8786): its workers grade, on their machines,
    # instead of this machine's pool; "" grades here.
    scheduler: str = ""

    def __post_init__(self) -> None:
        """Refuse options no notebook could be graded under, naming the flag to fix."""
        if self.workers < 1:
            raise GradingError("--workers must be at least 1.")
        for name, (flag, least) in _SMALLEST.items():
            value = getattr(self, name)
            if value < least:
                raise GradingError(
                    f"{flag} {value:g} is too small to grade anything; use {least:g} or more."
                )
        if self.scheduler != self.scheduler.strip() or " " in self.scheduler:
            raise GradingError(
                f"--scheduler {self.scheduler!r} is not an address; give the one "
                "`dask scheduler` prints, such as tcp://10.0.0.5:8786."
            )
        if self.network not in NETWORKS:
            raise GradingError(
                f"--network {self.network!r} is not one the grader knows; use "
                + " or ".join(NETWORKS)
                + "."
            )

    @property
    def kernel_network(self) -> str:
        """The network kernels get: without a sandbox there is no box to give one of its own."""
        return self.network if self.sandbox else "host"
