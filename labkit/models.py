"""Which installed model does a name mean? One rule, used by the client, health checks and runtime.

Ollama names a model ``family:tag`` (``llama3:8b``); a name without a tag means the tag
``latest``. This kit ships ``smollm2:135m`` and no ``smollm2:latest``, so reading "smollm2"
strictly would find nothing. The rule here, in order:

1. Names compare without case and without Ollama's default registry prefix
   (``registry.ollama.ai/library/``), as Ollama compares them.
2. An exact match wins; a bare name first means ``name:latest``.
3. A bare name with no ``latest`` tag installed means the family's only tag, when exactly one
   is installed ("smollm2" → "smollm2:135m"). With two tags it is ambiguous and matches none:
   say which one you mean.

    match_model("smollm2", ["smollm2:135m", "all-minilm:l6-v2"])   # "smollm2:135m"
    match_model("llama3", ["llama3:latest", "llama3:70b"])          # "llama3:latest"
    match_model("llama3", ["llama3:8b", "llama3:70b"])              # None: which one?
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["match_model", "normalise"]

_PREFIXES = ("registry.ollama.ai/", "library/")


def normalise(name: str) -> str:
    """A model name as Ollama compares it: lower case, no default registry prefix."""
    name = name.strip().lower()
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name


def match_model(wanted: str, names: Iterable[str]) -> str | None:
    """The installed name (from ``names``) that ``wanted`` means, or None; see the module's rule."""
    installed = list(names)
    by_key = {normalise(name): name for name in installed}
    key = normalise(wanted)
    if not key:
        return None
    if key in by_key:
        return by_key[key]
    if ":" in key:
        # "llama3:latest" also finds an entry listed without a tag.
        family, tag = key.rsplit(":", 1)
        return by_key.get(family) if tag == "latest" else None
    if f"{key}:latest" in by_key:
        return by_key[f"{key}:latest"]
    tags = [name for k, name in by_key.items() if k.split(":", 1)[0] == key]
    return tags[0] if len(tags) == 1 else None
