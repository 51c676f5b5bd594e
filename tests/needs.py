"""What some tests need from the machine, and the one way they say it is missing."""

from __future__ import annotations

import os
import sys

import pytest


def needs_root(what: str) -> None:
    """Skip (fail under CI, which runs as root) unless this is root on Linux."""
    if sys.platform == "linux" and os.geteuid() == 0:
        return
    why = f"{what} needs root on Linux"
    if os.environ.get("CI"):
        pytest.fail(f"{why}, and CI must run it (it runs as root)")
    pytest.skip(why)
