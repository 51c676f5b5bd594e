"""The names each public module exports are pinned: adding or removing one is a decision.

Learners and notebooks import these names; a rename that slips through breaks a lesson. When a
change here is meant, update the set below in the same commit.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
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
        "CourseUpdateError",
        "DocumentError",
        "EmbeddingMismatch",
        "FaultSpecError",
        "GradingError",
        "IndexFileError",
        "InvalidInput",
        "InvalidModelOutput",
        "LabkitError",
        "LabkitTimeout",
        "MasterFormatError",
        "ModelNotFound",
        "NotImplementedYet",
        "OverwriteRefused",
        "RagError",
        "ResponseTooLarge",
        "RuntimeStartError",
        "RuntimeUnavailable",
        "ServerBusy",
        "ServerError",
        "ValidationFailed",
    },
    "labkit.update": {
        "MANIFEST",
        "Change",
        "CourseUpdateError",
        "UpdatePlan",
        "add_arguments",
        "apply",
        "cli",
        "course_files",
        "find_course",
        "git_commit",
        "manifest_for",
        "plan",
        "read_manifest",
        "sha256",
        "update",
        "write_manifest",
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
# Loaded only when used: widgets, a web server, the grader, plotting, FAISS, schema checks,
# notebook machinery and other clients (each takes from a tenth of a second to several).
HEAVY = (
    "IPython",
    "PIL",
    "aiohttp",
    "faiss",
    "ipywidgets",
    "jsonschema",
    "jupyter_client",
    "labkit.grader",
    "matplotlib",
    "nbclient",
    "nbformat",
    "ollama",
    "openai",
)
# Every module a notebook imports, and what each may load beyond labkit's own light set.
LEARNER_MODULES = {
    "labkit": (),
    **{
        f"labkit.{path.stem}": ()
        for path in sorted(PACKAGE.glob("*.py"))
        if not path.stem.startswith("_") and path.stem != "cli"
    },
    **{f"labkit.rag.{path.stem}": () for path in sorted((PACKAGE / "rag").glob("[!_]*.py"))},
    "labkit.rag": (),
    "labkit.faults": (),
    "labkit.faults.rules": (),
    "labkit.faults.proxy": ("aiohttp",),  # the proxy is an aiohttp web server
    "labkit.course": (),  # check() in a grading kernel; the widgets load on first use
}


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


# Imports each module in a fork of one process that has imported labkit alone (every module
# imports the package first), and prints what each import added to sys.modules.
_LOADS = r"""
import importlib, json, os, sys
import labkit
base = set(sys.modules)
print(json.dumps(["labkit", sorted(base)]))
for name in sys.argv[1:]:
    sys.stdout.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:
            importlib.import_module(name)
            with os.fdopen(write, "w") as out:
                json.dump(sorted(set(sys.modules) - base), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as got:
        text = got.read()
    os.waitpid(pid, 0)
    print(json.dumps([name, json.loads(text) if text else None]))
"""


@pytest.fixture(scope="module")
def loads() -> dict[str, list[str] | None]:
    """Module -> the modules importing it loads (None: the import failed)."""
    names = [name for name in LEARNER_MODULES if name != "labkit"]
    out = subprocess.run(
        [sys.executable, "-c", _LOADS, *names],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(line) for line in out.stdout.splitlines())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="imports each module in a forked process")
@pytest.mark.parametrize("name", sorted(LEARNER_MODULES))
def test_each_learner_module_loads_nothing_heavy(
    name: str, loads: dict[str, list[str] | None]
) -> None:
    """FAISS loads when an index is built, matplotlib when a plot is drawn: not on import."""
    loaded = loads[name]
    assert loaded is not None, f"import {name} failed"
    allowed = LEARNER_MODULES[name]
    heavy = [m for m in loaded if m.startswith(HEAVY) and not m.startswith(allowed)]
    assert heavy == [], f"import {name} loaded {sorted({m.split('.')[0] for m in heavy})}"
    base = loads["labkit"] or []
    assert name in loaded or name in base  # the check saw the module itself load


def test_the_heavy_check_sees_a_heavy_import(loads: dict[str, list[str] | None]) -> None:
    proxy = loads["labkit.faults.proxy"]
    assert proxy is not None and "aiohttp" in proxy  # a module that needs one is caught
