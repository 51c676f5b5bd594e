"""The names each public module exports are pinned: adding or removing one is a decision.

Learners and notebooks import these names; a rename that slips through breaks a lesson. When a
change here is meant, update the set below in the same commit.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import labkit

PACKAGE = Path(labkit.__file__).parent
EXPORTS: dict[str, set[str]] = {
    "labkit": {
        "BrokenStream",
        "CallLog",
        "Client",
        "ContextOverflow",
        "Conversation",
        "DocumentError",
        "EmbeddingMismatch",
        "Health",
        "IndexFileError",
        "InvalidInput",
        "InvalidModelOutput",
        "LabkitError",
        "LabkitTimeout",
        "ModelNotFound",
        "NO_RETRY",
        "NotImplementedYet",
        "RagError",
        "Reply",
        "ResponseTooLarge",
        "RetryPolicy",
        "Runtime",
        "RuntimeStartError",
        "RuntimeUnavailable",
        "ServerBusy",
        "ServerError",
        "Stream",
        "Timeout",
        "budget",
        "estimate_tokens",
        "find_runtime",
        "read_log",
        "split_to_budget",
        "summarise_with",
        "summarize",
        "validate",
    },
    "labkit.bench": {
        "Call",
        "COUNTED",
        "Comparison",
        "Config",
        "METRICS",
        "RUNTIME",
        "Summary",
        "Timed",
        "Trace",
        "Traces",
        "UNKNOWN",
        "USAGE",
        "batch_throughput",
        "compare",
        "measure",
        "read_csv",
        "run",
        "run_together",
        "runtime_speed",
        "summarize",
        "timed",
        "values",
        "write_csv",
    },
    "labkit.calllog": {
        "CallLog",
        "PROMPT_KEEP",
        "Record",
        "percentile",
        "prompt_hash",
        "read_log",
        "summarize",
    },
    "labkit.client": {
        "Ask",
        "Client",
        "PRESETS",
    },
    "labkit.connection": {
        "Call",
        "Connection",
    },
    "labkit.conversation": {
        "ContextOverflow",
        "Conversation",
        "INPUT_SHARE",
        "Message",
        "SUMMARY_PROMPT",
        "SUMMARY_SYSTEM",
        "Summariser",
        "TOKENS_PER_MESSAGE",
        "TokenCounter",
        "Trimmed",
        "budget",
        "estimate_tokens",
        "message_tokens",
        "split_to_budget",
        "summarise_with",
        "transcript",
    },
    "labkit.degrade": {
        "DEFAULT_FALLBACK",
        "Degraded",
        "Fallback",
        "KeyFunc",
        "MISTAKES",
        "ReplyCache",
        "Source",
        "cache_key",
        "call_key",
        "with_fallback",
    },
    "labkit.dialects": {
        "DIALECTS",
        "Dialect",
        "Format",
        "Messages",
        "OllamaDialect",
        "OpenAIDialect",
        "Parsed",
        "Settings",
        "as_messages",
        "check_format",
        "dialect_named",
        "json_line",
    },
    "labkit.discovery": {
        "KNOWN_RUNTIMES",
        "PROBE_TIMEOUT",
        "Runtime",
        "embed_url_from_env",
        "embeddings_help",
        "find_runtime",
        "ollama_host_url",
        "probe",
        "running_runtimes",
        "use_ollama_dialect",
    },
    "labkit.errors": {
        "BrokenStream",
        "ContextOverflow",
        "DocumentError",
        "EmbeddingMismatch",
        "IndexFileError",
        "InvalidInput",
        "InvalidModelOutput",
        "LabkitError",
        "LabkitTimeout",
        "ModelNotFound",
        "NotImplementedYet",
        "RagError",
        "ResponseTooLarge",
        "RuntimeStartError",
        "RuntimeUnavailable",
        "ServerBusy",
        "ServerError",
    },
    "labkit.health": {
        "COLOURS",
        "Check",
        "DIALECTS",
        "HealthMonitor",
        "HealthReport",
        "check_health",
        "identify",
        "status_html",
    },
    "labkit.models": {
        "match_model",
        "normalise",
    },
    "labkit.plots": {
        "cdf",
        "histogram",
        "percentile_bars",
        "throughput_vs_concurrency",
        "timeline",
    },
    "labkit.probe": {
        "Check",
        "DIALECTS",
        "HealthReport",
        "KNOWN_RUNTIMES",
        "KnownRuntime",
        "LLAMA_CPP",
        "LM_STUDIO",
        "OLLAMA",
        "PROBE_TIMEOUT",
        "Status",
        "check_health",
        "identify",
    },
    "labkit.reply": {
        "DEFAULT_TOTAL",
        "Health",
        "Reply",
        "Timeout",
    },
    "labkit.retry": {
        "NO_RETRY",
        "RETRY_STATUSES",
        "RetryPolicy",
        "any_of",
        "exponential",
        "fixed",
        "is_transient",
        "jitter",
        "on_status",
        "retry_after",
    },
    "labkit.stream": {
        "Stream",
    },
    "labkit.structured": {
        "HasText",
        "Schema",
        "check_schema",
        "parse_json",
        "validate",
    },
    "labkit.tokens": {
        "CHARS_PER_TOKEN",
        "LONG_WORD",
        "SAFETY",
        "TokenCounter",
        "estimate_tokens",
        "exact_counter",
        "pack",
        "pack_texts",
        "split_text",
        "truncate_tokens",
    },
    "labkit.trace": {
        "COUNTED",
        "Call",
        "Clock",
        "RUNTIME",
        "Timed",
        "Trace",
        "Traces",
        "UNKNOWN",
        "USAGE",
        "measure",
        "runtime_speed",
        "timed",
    },
    "labkit.transport": {
        "Deadline",
        "MAX_RESPONSE_BYTES",
        "auth_headers",
        "base_url",
        "error_text",
        "http_error",
        "parse_retry_after",
        "read_body",
        "read_lines",
        "transport_error",
        "tries",
    },
}
# Loaded only when used: a widget library, the runtime's web server, the grader, plotting.
HEAVY = ("ipywidgets", "aiohttp", "labkit.grader", "labkit.course.widgets", "matplotlib")


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_names_are_pinned(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == EXPORTS[name]
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ lists names it does not define: {missing}"


def test_every_public_module_is_pinned() -> None:
    """A new top-level module gets an __all__ and an entry above."""
    found = {
        f"labkit.{path.stem}"
        for path in PACKAGE.glob("*.py")
        if not path.stem.startswith("_") and path.stem != "cli"
    }
    assert found <= set(EXPORTS), sorted(found - set(EXPORTS))


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_every_subpackage_declares_its_exports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert "__all__" in assigned


def test_importing_labkit_loads_nothing_heavy() -> None:
    """``import labkit`` stays quick: no widgets, web server, grader or plotting behind it."""
    code = "import sys, labkit; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = out.stdout.split()
    heavy = [m for m in loaded if m.startswith(HEAVY)]
    assert heavy == [], f"import labkit loaded {heavy}"
    assert "labkit.client" in loaded  # the check sees what labkit really imports
    # -X importtime reports every module on stderr: the same answer, from Python itself.
    timed = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert not [m for m in timed if m.startswith(HEAVY)]
