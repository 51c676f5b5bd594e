"""Fault injection: a proxy that makes a runtime fail on purpose, so you can see your code cope."""

from labkit.faults.proxy import STREAM_TYPES, FaultProxy, serve
from labkit.faults.rules import Action, Exchange, Fault, FaultSpecError, Rule, parse_rule

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
