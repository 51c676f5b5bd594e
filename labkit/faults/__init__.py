"""Fault injection: a proxy that makes a runtime fail on purpose, so you can see your code cope.

The proxy (``proxy.py``) is imported on first use: it needs aiohttp's web server, which takes
a while to load, and the rules (``rules.py``) need none of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labkit.faults.rules import Action, Exchange, Fault, FaultSpecError, Rule, parse_rule

if TYPE_CHECKING:
    from labkit.faults.proxy import STREAM_TYPES, FaultProxy, serve

_PROXY = ("STREAM_TYPES", "FaultProxy", "serve")


def __getattr__(name: str) -> Any:
    if name in _PROXY:
        return getattr(importlib.import_module("labkit.faults.proxy"), name)
    raise AttributeError(f"module 'labkit.faults' has no attribute {name!r}")


__all__ = [
    "STREAM_TYPES",
    "Action",
    "Exchange",
    "Fault",
    "FaultProxy",
    "FaultSpecError",
    "Rule",
    "parse_rule",
    "serve",
]
