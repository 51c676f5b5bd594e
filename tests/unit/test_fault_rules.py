"""Fault rules as values and as text: what ``labkit faults --rule`` and ``FaultProxy.add`` take."""

from __future__ import annotations

import pytest

from labkit.faults import Fault, Rule, parse_rule


def test_rules_from_text() -> None:
    rule = parse_rule("503 /api/chat times=2")
    assert (rule.fault, rule.path, rule.times) == (Fault.status(503), "/api/chat", 2)
    rule = parse_rule("latency=0.5+reset@3 /v1/* every=5 for=10s chance=50% method=post jitter=0.1")
    assert rule.fault == Fault.latency(0.5, jitter=0.1) + Fault.reset(after_chunks=3)
    assert (rule.every, rule.duration, rule.chance, rule.method) == (5, 10.0, 0.5, "POST")
    assert parse_rule("429 retry_after=2").fault == Fault.rate_limited(2)
    assert parse_rule("hang").path == "*"
    assert (
        str(parse_rule("truncate@2 /api/chat after=1"))
        == "truncate after 2 chunks on /api/chat (after=1)"
    )


@pytest.mark.parametrize(
    "text",
    ["", "explode /api/chat", "503 api/chat", "503 times=0", "503 colour=red", "reset@-1", "200"],
)
def test_bad_rules_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(text)


def test_faults_combine_but_actions_do_not() -> None:
    both = Fault.latency(1) + Fault.slow_stream(0.1) + Fault.status(503)
    assert (both.delay, both.chunk_delay, both.action, both.code) == (1.0, 0.1, "status", 503)
    assert str(both) == "latency 1s + 0.1s between chunks + 503"
    with pytest.raises(ValueError, match="Cannot combine"):
        Fault.status(503) + Fault.hang()
    with pytest.raises(ValueError):
        Rule(Fault.hang(), chance=2)


@pytest.mark.parametrize(
    ("rule_path", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/api/tags", False),
        ("/api/chat", "/api/chat", True),
        ("/api/chat", "/api/chat/x", True),
        ("/api/chat", "/api/chatter", False),
        ("/v1/*", "/v1/models", True),
        ("*", "/anything", True),
    ],
)
def test_rule_paths_match_the_root_exactly_and_prefixes_by_segment(
    rule_path: str, path: str, expected: bool
) -> None:
    assert Rule(Fault.status(503), path=rule_path).matches("GET", path) is expected
