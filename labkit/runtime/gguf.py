"""A GGUF header reader: the model metadata ``/api/show`` and ``/api/tags`` report."""

from __future__ import annotations

import asyncio
import contextlib
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GgufInfo",
    "file_type",
    "gguf_info",
    "human_number",
    "read_gguf",
]


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file says about its model (the same source Ollama reads)."""

    kv: dict[str, Any]
    tensors: list[dict[str, Any]]
    parameter_count: int

    @property
    def architecture(self) -> str:
        """The model's architecture, e.g. "llama" or "bert"."""
        return str(self.kv.get("general.architecture", ""))

    def get(self, key: str, default: int = 0) -> int:
        """An integer from the architecture's own keys, e.g. ``get("block_count")``."""
        value = self.kv.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default


_GGUF_CACHE: dict[tuple[str, int, int, bool], GgufInfo] = {}


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}


_GGUF_SCALARS |= {10: "Q", 11: "q", 12: "d"}


_GGUF_STRING, _GGUF_ARRAY = 8, 9


async def gguf_info(path: Path, *, verbose: bool = False) -> GgufInfo:
    """The GGUF metadata of ``path``, read once per file version (off the event loop)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, verbose)
    if key not in _GGUF_CACHE:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, read_gguf, path, verbose)
        if verbose:
            return info  # the full vocabulary is large; keep only the short form around
        _GGUF_CACHE[key] = info
    return _GGUF_CACHE[key]


def read_gguf(path: Path, verbose: bool = False) -> GgufInfo:
    """Read a GGUF header: its key/value metadata and its tensor list.

    Like ``ollama show``, arrays longer than five items (the vocabulary) are left out
    unless ``verbose``. The ``gguf`` package can read this too, but it loads every array
    and takes seconds; this walks the header in milliseconds.
    """
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        pos = 24

        def take(fmt: str) -> Any:
            nonlocal pos
            values = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize("<" + fmt)
            return values[0] if len(values) == 1 else values

        def string() -> str:
            nonlocal pos
            size = take("Q")
            pos += size
            return buf[pos - size : pos].decode("utf-8", "replace")

        def value(kind: int) -> Any:
            nonlocal pos
            if kind == _GGUF_STRING:
                return string()
            if kind != _GGUF_ARRAY:
                return _float32(take("f")) if kind == 6 else take(_GGUF_SCALARS[kind])
            item, count = take("I"), take("Q")
            if count <= 5 or verbose:
                return [value(item) for _ in range(count)]
            if item == _GGUF_STRING:  # skip without decoding: only the lengths matter
                for _ in range(count):
                    size = take("Q")  # (not "pos += take(...)": take() moves pos itself)
                    pos += size
            else:
                pos += count * struct.calcsize("<" + _GGUF_SCALARS[item])
            return []

        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            kv[key] = value(take("I"))
        tensors: list[dict[str, Any]] = []
        parameters = 0
        for _ in range(n_tensors):
            name = string()
            dims = take("I")
            shape = [take("Q") for _ in range(dims)]
            kind, _offset = take("I"), take("Q")
            tensors.append({"name": name, "type": _tensor_type(kind), "shape": shape})
            parameters += math.prod(shape)
    kv["general.parameter_count"] = parameters  # Ollama adds this key too
    return GgufInfo(kv, tensors, parameters)


def _float32(value: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06)."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == struct.pack("<f", value):
            return short
    return value


def _tensor_type(kind: int) -> str:
    import gguf  # only for its table of names; imported here as it pulls in numpy

    try:
        return str(gguf.GGMLQuantizationType(kind).name)
    except ValueError:
        return f"type{kind}"


def file_type(info: GgufInfo) -> str:
    """The quantization level as Ollama names it ("Q4_1", "F16")."""
    import gguf

    with contextlib.suppress(KeyError, ValueError):
        name = str(gguf.LlamaFileType(int(info.kv["general.file_type"])).name)
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return ""


def human_number(count: int) -> str:
    """Ollama's parameter size label: 134515008 → "134.52M"."""
    for limit, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if count >= limit:
            number = count / limit
            return f"{number:.0f}{unit}" if number.is_integer() else f"{number:.{decimals}f}{unit}"
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)
