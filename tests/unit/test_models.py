"""One rule for which installed model a name means (labkit/models.py)."""

from __future__ import annotations

import pytest

from labkit.models import match_model

BUNDLED = ["smollm2:135m", "all-minilm:l6-v2"]


@pytest.mark.parametrize(
    ("wanted", "names", "expected"),
    [
        ("smollm2:135m", BUNDLED, "smollm2:135m"),
        ("smollm2", BUNDLED, "smollm2:135m"),  # the family's only tag
        ("SmolLM2:135M", BUNDLED, "smollm2:135m"),  # case does not matter
        ("registry.ollama.ai/library/smollm2:135m", BUNDLED, "smollm2:135m"),
        ("llama3", ["llama3:latest", "llama3:70b"], "llama3:latest"),  # bare means latest
        ("llama3:latest", ["llama3"], "llama3"),
        ("llama3", ["llama3"], "llama3"),
    ],
)
def test_names_that_match(wanted: str, names: list[str], expected: str) -> None:
    assert match_model(wanted, names) == expected


@pytest.mark.parametrize(
    ("wanted", "names"),
    [
        ("smollm2:360m", BUNDLED),  # another tag is another model
        ("smollm2:latest", BUNDLED),  # latest is a tag like any other when asked for
        ("llama", ["llama3:latest"]),  # a prefix is not a family
        ("llama3", ["llama3:8b", "llama3:70b"]),  # ambiguous: say which one
        ("", BUNDLED),
        ("   ", BUNDLED),
        ("smollm2", []),
    ],
)
def test_names_that_do_not_match(wanted: str, names: list[str]) -> None:
    assert match_model(wanted, names) is None


def test_the_connection_probes_and_runtime_share_the_rule() -> None:
    """The other modules call match_model; none keeps a matcher of its own."""
    import inspect

    from labkit import connection, probe
    from labkit.runtime import catalog

    for module in (connection, probe, catalog):
        assert "match_model(" in inspect.getsource(module), module.__name__
