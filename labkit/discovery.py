"""Which local runtime am I using, and why?

The search order: an explicit setting (``LABKIT_BASE_URL``, or ``OLLAMA_HOST`` as Ollama's
own client reads it) → this folder's own kit runtime, if it runs → a running Ollama → LM Studio
→ a llama.cpp server → the kit's embedded runtime, started when asked
(``find_runtime(start=True)``). Embeddings come from the same address unless
``LABKIT_EMBED_URL`` names a second one (llama.cpp serves embeddings from its own instance).

A kit runtime names its owner in every answer (``labkit/runtime/identity.py``). Another
folder's or another user's kit runtime on a known port is never used without being asked for:
its owner may stop it at any time, and your prompts would reach their process.
``running_runtimes()`` lists it, marked ``foreign``; only a runtime its operator started as
shared (``--shared``, the team's systemd service) is used like any other.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from labkit import runtime
from labkit.errors import InvalidInput, RuntimeUnavailable
from labkit.probe import KNOWN_RUNTIMES, OLLAMA, PROBE_TIMEOUT, identify
from labkit.runtime.launcher import identify_at, server_folder
from labkit.transport import base_url

__all__ = [
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
]

_EMBEDDING_HINTS = ("embed", "minilm", "bge", "e5-", "gte", "nomic")


@dataclass(frozen=True)
class Runtime:
    """A runtime that answered: where it is, which dialect it speaks, and why it was chosen."""

    name: str
    url: str
    dialect: str  # "ollama" or "openai"
    reason: str
    models: tuple[str, ...] = field(default=())
    # Where embeddings are asked for, and the models listed there (the same server by default).
    embed_url: str = ""
    embed_models: tuple[str, ...] | None = None
    # Another folder's or user's kit runtime: listed by running_runtimes(), never chosen.
    foreign: bool = False

    @property
    def openai_url(self) -> str:
        """Base URL for OpenAI-compatible clients (``openai.OpenAI(base_url=...)``)."""
        return self.url + "/v1"

    @property
    def chat_model(self) -> str:
        """The model to chat with: ``$LABKIT_CHAT_MODEL`` or the first non-embedding model."""
        chat = [m for m in self.models if not _is_embedding(m)]
        return os.environ.get("LABKIT_CHAT_MODEL") or (chat[0] if chat else "")

    @property
    def embed_model(self) -> str:
        """The embedding model: ``$LABKIT_EMBED_MODEL_NAME`` or the first embedding model."""
        listed = self.models if self.embed_models is None else self.embed_models
        embed = [m for m in listed if _is_embedding(m)]
        if not embed and self.embed_models is not None:
            embed = list(self.embed_models)  # a server started for embeddings serves nothing else
        return os.environ.get("LABKIT_EMBED_MODEL_NAME") or (embed[0] if embed else "")

    @property
    def embeddings_url(self) -> str:
        """Where to ask for embeddings: ``$LABKIT_EMBED_URL``'s server, or this runtime."""
        return self.embed_url or self.url

    @property
    def has_embeddings(self) -> bool:
        """True if an embedding model is known (notebooks that need one check this first)."""
        return bool(self.embed_model)

    def embeddings_help(self) -> str:
        """What to start so that this runtime has an embedding model, in plain words."""
        return embeddings_help(self)

    def __str__(self) -> str:
        models = ", ".join(self.models) or "no models"
        text = f"{self.name} at {self.url} ({self.dialect} dialect; {models}) — {self.reason}"
        if self.embed_url:
            embed = ", ".join(self.embed_models or ()) or "no answer"
            text += f"; embeddings from {self.embed_url} ({embed}), set by $LABKIT_EMBED_URL"
        return text


def _is_embedding(model: str) -> bool:
    return any(hint in model.lower() for hint in _EMBEDDING_HINTS)


def ollama_host_url(value: str) -> str:
    """Turn an ``OLLAMA_HOST`` value into a URL, the way Ollama's own Python client does.

    ``host`` and ``host:port`` mean http (port 11434 when none is given); a scheme without a
    port means that scheme's port (http 80, https 443); IPv6 addresses keep their brackets.
    """
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest, port = "http", text, OLLAMA.port
    else:
        port = {"http": 80, "https": 443}.get(scheme.lower(), OLLAMA.port)
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port or port
    except ValueError as exc:
        raise InvalidInput(
            f"OLLAMA_HOST={value!r} cannot be read as host:port ({exc}). An IPv6 address needs "
            "square brackets, as in a URL: OLLAMA_HOST=[::1]:11434 (or http://[::1]:11434)."
        ) from exc
    host = parts.hostname or "127.0.0.1"
    if host == "0.0.0.0":  # a bind-all address (how a server is told to listen): use loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"  # urlsplit drops the brackets; a URL needs them back
    except ValueError:
        pass  # a name, not an address
    path = parts.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def embed_url_from_env() -> str:
    """``$LABKIT_EMBED_URL`` without a trailing slash or ``/v1``, or "" when it is not set."""
    return base_url(os.environ.get("LABKIT_EMBED_URL", "").strip())


def embeddings_help(rt: Runtime) -> str:
    """What to start so that ``rt`` has an embedding model: one instruction per runtime."""
    if rt.embed_url:
        return (
            f"$LABKIT_EMBED_URL points at {rt.embed_url}, but no embedding model answers there. "
            "Start llama.cpp's server for embeddings on that address: "
            "llama-server -m all-minilm-l6-v2.f16.gguf --embeddings --pooling mean --port PORT "
            "(the file is in this kit's models/ folder)."
        )
    if rt.dialect == "ollama":
        return (
            f"{rt.name} at {rt.url} has no embedding model. Pull one: `ollama pull all-minilm` "
            "(or set $LABKIT_EMBED_MODEL_NAME to one you have), then run this cell again."
        )
    if rt.name == "LM Studio":
        return (
            f"LM Studio at {rt.url} has no embedding model loaded. In LM Studio, download and "
            "load an embedding model (search 'all-MiniLM-L6-v2' or 'nomic-embed-text'), then "
            "run this cell again."
        )
    return (
        f"The server at {rt.url} offers no embedding model (a llama.cpp server serves one model, "
        "and embeddings only when started for them). Start a second llama.cpp server for "
        "embeddings: `llama-server -m models/all-minilm-l6-v2.f16.gguf --embeddings "
        "--pooling mean --port 8081`, then `export LABKIT_EMBED_URL=http://127.0.0.1:8081` "
        "before starting Jupyter (or in the notebook: os.environ['LABKIT_EMBED_URL'] = ...). "
        "Or leave LABKIT_BASE_URL unset and let `labkit up` serve both models."
    )


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[str, tuple[str, ...]] | None:
    """Ask ``url`` what it is: ``(dialect, models)``, or None if no model server answers."""
    return identify(url, timeout=timeout)


def find_runtime(*, start: bool = False) -> Runtime:
    """The runtime notebooks should use, following the search order in this module's doc.

    With nothing running, ``start=True`` starts the kit's embedded runtime; otherwise this
    raises RuntimeUnavailable (a server takes memory and CPU, so it starts only when asked).
    """
    own = runtime.read_record()
    for variable in ("LABKIT_BASE_URL", "OLLAMA_HOST"):
        if value := os.environ.get(variable):
            url = base_url(value if variable == "LABKIT_BASE_URL" else ollama_host_url(value))
            found = probe(url)
            if found is None:
                raise RuntimeUnavailable(
                    f"${variable} points at {url}, but no model server answers there. "
                    f"Start your runtime, or unset {variable} to let labkit find one."
                )
            return _with_embed_server(
                Runtime("custom", url, found[0], f"set by ${variable}", found[1])
            )

    if own and (found := _own_answer(own)):
        return _embedded(own, found, "the kit's embedded runtime of this folder is running")
    strangers = []
    for rt in _on_known_ports(own, "found running on port {port}"):
        if not rt.foreign:
            silent = f"; this folder's kit runtime (pid {own.pid}) does not answer" if own else ""
            return replace(rt, reason=rt.reason + silent)
        strangers.append(rt)

    if not start:
        nothing = "No runtime this folder may use" if strangers else "No local runtime"
        raise RuntimeUnavailable(
            f"{nothing} is running. Run `labkit up` in a terminal, or start Ollama, "
            "LM Studio or a llama.cpp server." + "".join(_passed_over(rt) for rt in strangers)
        )
    record = runtime.up(say=False)
    found = probe(record.url) or ("ollama", tuple(record.models))
    return _embedded(record, found, "no other runtime was running, so labkit started its own")


def _with_embed_server(rt: Runtime) -> Runtime:
    """``rt`` with ``$LABKIT_EMBED_URL``'s server for embeddings, when that is set."""
    if not (url := embed_url_from_env()) or url == rt.url:
        return rt
    found = probe(url)
    # A dead embedding address is not fatal here: chat still works, and notebooks that
    # need embeddings check has_embeddings and print embeddings_help().
    return replace(rt, embed_url=url, embed_models=found[1] if found else ())


def _embedded(
    record: runtime.RuntimeRecord, found: tuple[str, tuple[str, ...]], why: str
) -> Runtime:
    return _with_embed_server(
        Runtime("embedded (llama.cpp + Ollama API)", record.url, found[0], why, found[1])
    )


def running_runtimes() -> list[Runtime]:
    """Every known runtime answering on its default port (foreign ones marked), plus this folder's."""
    own = runtime.read_record()
    found = _on_known_ports(own, "answers on port {port}")
    if own and (answer := _own_answer(own)):
        found.append(_embedded(own, answer, f"started by labkit, pid {own.pid}"))
    return found


def _on_known_ports(own: runtime.RuntimeRecord | None, why: str) -> list[Runtime]:
    """The runtimes answering on the known ports, in search order (this folder's left out)."""
    found: list[Runtime] = []
    for name, port, _ in KNOWN_RUNTIMES:
        url = f"http://127.0.0.1:{port}"
        if own and own.url == url:
            continue  # this folder's runtime: asked about on its own, by instance
        if (answer := probe(url)) is None:
            continue
        rt = Runtime(name, url, answer[0], why.format(port=port), answer[1])
        if answer[0] == "ollama" and (other := _kit_runtime(rt, own)) is not None:
            rt = other
        found.append(rt if rt.foreign else _with_embed_server(rt))
    return found


def _own_answer(own: runtime.RuntimeRecord) -> tuple[str, tuple[str, ...]] | None:
    """What this folder's runtime answers, if it is the one at its address (None if not)."""
    found = probe(own.url)
    if found is None or not own.instance:
        return found
    seen = identify_at(own.url, PROBE_TIMEOUT)
    # Only the instance in this folder's private record proves the answer is its runtime's.
    return found if seen and seen[0] and seen[0].instance == own.instance else None


def _kit_runtime(rt: Runtime, own: runtime.RuntimeRecord | None) -> Runtime | None:
    """``rt`` as the kit runtime it is (another folder's or user's, or a shared one), or None."""
    seen = identify_at(rt.url, PROBE_TIMEOUT)
    if seen is None or seen[0] is None:
        return None  # not a kit runtime: Ollama itself, or an older kit
    who = seen[0]
    relation = who.relation(own.instance if own else None, runtime.home())
    if relation == "shared":
        return replace(rt, name=f"shared kit runtime (run by {who.user})")
    if relation == "user":
        return replace(rt, name="another user's kit runtime", reason=f"{who.user}'s", foreign=True)
    port = urlsplit(rt.url).port
    folder = server_folder(port) if port else None
    why = f"started for {folder}" if folder else "started in another checkout"
    if relation == "other":
        why = "claims this folder, but its record names another runtime"
    return replace(rt, name="another folder's kit runtime", reason=why, foreign=True)


def _passed_over(rt: Runtime) -> str:
    """One sentence on a foreign kit runtime that discovery saw and did not use."""
    return (
        f" {rt.name.capitalize()} answers at {rt.url} ({rt.reason}); labkit does not use it: "
        "its owner may stop it at any time, and what you send would reach their process. "
        f"`labkit up` starts this folder's own; to use that one anyway, set "
        f"LABKIT_BASE_URL={rt.url}."
    )


def use_ollama_dialect(*, say: bool = True) -> Runtime:
    """A runtime that speaks Ollama's dialect, for work written against ``/api/*``.

    The runtime found as usual if it speaks it; else another one running here that does; else
    the kit's runtime, started for it. When the choice differs from the usual one,
    ``$LABKIT_BASE_URL`` is set in this process so that every later ``find_runtime()`` agrees.
    """
    usual = find_runtime(start=True)
    if usual.dialect == "ollama":
        return usual
    others = [rt for rt in running_runtimes() if rt.dialect == "ollama" and not rt.foreign]
    url = others[0].url if others else runtime.up(say=False).url
    for name in ("LABKIT_CHAT_MODEL", "LABKIT_EMBED_MODEL_NAME", "LABKIT_EMBED_URL"):
        os.environ.pop(name, None)  # they name models of the other runtime
    os.environ["LABKIT_BASE_URL"] = url
    chosen = replace(find_runtime(), reason=f"{usual.url} speaks only OpenAI's dialect")
    if say:
        print(
            f"Your runtime at {usual.url} speaks only OpenAI's dialect (/v1/*), and this "
            f"notebook uses Ollama's (/api/*). It uses the Ollama-dialect runtime at {chosen.url} "
            + (
                "instead."
                if others
                else "instead, which labkit started for it (stop it with `labkit down`)."
            )
        )
    return chosen
