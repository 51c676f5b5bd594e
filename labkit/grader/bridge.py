"""The learner's side of the grading boundary: answer the tester's calls with plain data.

The grader runs its tests in a separate process (``labkit.grader.tester``). When a test
calls one of the notebook's functions, the call arrives here as JSON, runs in the notebook's
kernel, and what it returned or raised goes back as JSON: plain values as they are, an
exception as its class names, message and public attributes, any other object as its type
name, a snapshot of its public attributes and a handle the tester can pass back or call
methods on. No test code ever comes here, only names and values.

Nothing here is trusted by the grader: a notebook can replace any of it, and then only
sends itself wrong answers. It uses the standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import math
import os
import pathlib
from collections.abc import Iterator
from typing import Any

__all__ = ["SHARED_SETTINGS", "encode", "serve"]


# The settings that say which runtime and models a notebook uses. A notebook may change
# them (use_ollama_dialect() points LABKIT_BASE_URL at an Ollama-dialect runtime); a test
# then uses the same runtime as the notebook.
SHARED_SETTINGS = (
    "LABKIT_BASE_URL",
    "LABKIT_CHAT_MODEL",
    "LABKIT_EMBED_MODEL_NAME",
    "LABKIT_EMBED_URL",
)

MAX_ITEMS = 200_000  # values in one answer: more is refused rather than sent
DEPTH = 24  # nesting of plain containers
SNAPSHOT_DEPTH = 2  # objects inside objects, then only their handle

_objects: dict[int, Any] = {}  # handle -> object, kept alive so ids are never reused
_handles: dict[int, int] = {}  # id(object) -> handle: the same object, the same handle


class TooLarge(ValueError):
    """The value has more parts than the grader accepts in one answer."""


def serve(request: str, namespace: dict[str, Any]) -> str:
    """Answer one request from the tester (a JSON string) with a JSON string."""
    recorded: list[Any] = []
    try:
        data = json.loads(request)
        op = data["op"]
        if op == "environment":  # where the notebook's model calls go (see remote.py)
            found = {name: os.environ.get(name) for name in SHARED_SETTINGS}
            return json.dumps({"ok": {"$": "dict", "v": [[k, v] for k, v in found.items()]}})
        if op == "lookup":
            found = {}
            for name in data["names"]:
                if name in namespace:
                    found[name] = encode(namespace[name])
            return json.dumps({"ok": {"$": "dict", "v": [[k, v] for k, v in found.items()]}})
        with _environment(data.get("env") or []):
            if op == "next":
                try:
                    value = next(_objects[data["handle"]])
                except StopIteration:
                    return json.dumps({"stop": True, "recorded": recorded})
            elif op == "call":
                target = _target(data["target"], namespace)
                args = [_decode(a, recorded) for a in data["args"]]
                kwargs = {k: _decode(v, recorded) for k, v in data["kwargs"]}
                value = target(*args, **kwargs)
            else:
                raise ValueError(f"unknown request {op!r}")
        answer = {"ok": encode(value)}
    except KeyboardInterrupt:
        raise  # the grader stopped a call that took too long
    except BaseException as exc:  # whatever the notebook raised goes back as data
        try:
            answer = {"raised": encode(exc)}
        except BaseException:  # an exception that cannot even be described
            answer = {"raised": _error(RuntimeError("an exception that could not be sent"))}
    answer["recorded"] = recorded
    try:
        return json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(
            {"raised": _error(TypeError("the value could not be sent")), "recorded": []}
        )


@contextlib.contextmanager
def _environment(changes: list[list[str | None]]) -> Iterator[None]:
    """The test's LABKIT_ settings, for the duration of one call."""
    saved = {}
    for name, value in changes:
        if isinstance(name, str) and name.startswith("LABKIT_"):
            saved[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = str(value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _target(target: dict[str, Any], namespace: dict[str, Any]) -> Any:
    """The callable a request names: a global of the notebook, an object, or its method."""
    if "name" in target:
        if target["name"] not in namespace:
            raise NameError(f"name {target['name']!r} is not defined", name=target["name"])
        return namespace[target["name"]]
    obj = _objects[target["handle"]]
    return getattr(obj, target["attr"]) if "attr" in target else obj


def _decode(value: Any, recorded: list[Any]) -> Any:
    """A value from the tester: plain data, a handle of ours, or a recorder for a callback."""
    if isinstance(value, list):
        return [_decode(v, recorded) for v in value]
    if not isinstance(value, dict):
        return value
    tag, inner = value.get("$"), value.get("v", "")
    if tag == "dict":
        return {_decode(k, recorded): _decode(v, recorded) for k, v in inner}
    if tag in ("tuple", "set", "frozenset"):
        kind = {"tuple": tuple, "set": set, "frozenset": frozenset}[tag]
        return kind(_decode(v, recorded) for v in inner)
    if tag == "bytes":
        return base64.b64decode(inner)
    if tag == "path":
        return pathlib.Path(inner)
    if tag == "float":
        return float(inner)
    if tag == "ellipsis":
        return ...
    if tag == "ref":
        return _objects[value["handle"]]
    if tag == "recorder":
        number = value["id"]

        def recorder(*args: Any, **kwargs: Any) -> None:
            recorded.append([number, encode(list(args)), encode(kwargs)])

        return recorder
    raise ValueError(f"unknown value tag {tag!r}")


def encode(value: Any, depth: int = DEPTH, budget: list[int] | None = None) -> Any:
    """``value`` as JSON-ready data (see the module's docstring for each kind)."""
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(f"the value has more than {MAX_ITEMS} parts")
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"$": "float", "v": repr(number)}
    if isinstance(value, str):
        return str.__str__(value)
    if value is ...:
        return {"$": "ellipsis"}
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        if type(value).__name__ == "ndarray":  # an array stays an array (a test reads .shape)
            dtype = str(value.dtype)
            return {"$": "ndarray", "dtype": dtype, "v": encode(value.tolist(), depth, budget)}
        return encode(value.tolist(), depth, budget)  # a number
    if isinstance(value, BaseException):
        return _error(value, budget)
    if depth <= 0:
        return _object(value, 0, budget)
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, pathlib.PurePath):
        return {"$": "path", "v": str(value)}
    if isinstance(value, dict):
        items = [
            [encode(k, depth - 1, budget), encode(v, depth - 1, budget)]
            for k, v in dict.items(value)
        ]
        return {"$": "dict", "v": items}
    if isinstance(value, list):
        return [encode(v, depth - 1, budget) for v in list.__iter__(value)]
    if isinstance(value, tuple):  # a named tuple too: its items, as a tuple
        return {"$": "tuple", "v": [encode(v, depth - 1, budget) for v in tuple.__iter__(value)]}
    if isinstance(value, (set, frozenset)):
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {"$": tag, "v": [encode(v, depth - 1, budget) for v in set(value)]}
    if isinstance(value, type):
        return {"$": "class", "type": _type_ref(value), "handle": _handle(value)}
    if inspect.ismodule(value):
        return {"$": "module", "name": str(getattr(value, "__name__", ""))}
    if hasattr(type(value), "__next__") and hasattr(type(value), "__iter__"):
        return {"$": "iter", "handle": _handle(value), "type": _type_ref(type(value))}
    if callable(value):
        return {
            "$": "func",
            "handle": _handle(value),
            "module": str(getattr(value, "__module__", None) or ""),
            "qualname": str(getattr(value, "__qualname__", None) or ""),
            "name": str(getattr(value, "__name__", None) or type(value).__name__),
            "signature": _signature(value, budget),
        }
    return _object(value, min(depth, SNAPSHOT_DEPTH), budget)


def _object(value: Any, depth: int, budget: list[int]) -> dict[str, Any]:
    """Any other object: its type, a handle, and (while depth lasts) its public attributes."""
    attrs: list[list[Any]] = []
    methods: list[str] = []
    if depth > 0:
        try:
            names = sorted(n for n in dir(value) if isinstance(n, str) and not n.startswith("_"))
        except Exception:  # a broken __dir__ leaves an object without attributes
            names = []
        for name in names[:200]:
            try:
                attr = getattr(value, name)
            except Exception:  # a property that fails is simply not shown
                continue
            if callable(attr) and not isinstance(attr, type):
                methods.append(name)
            else:
                attrs.append([name, encode(attr, depth - 1, budget)])
    return {
        "$": "obj",
        "handle": _handle(value),
        "type": _type_ref(type(value)),
        "attrs": attrs,
        "methods": methods,
    }


def _error(exc: BaseException, budget: list[int] | None = None) -> dict[str, Any]:
    """An exception: its class, message, arguments and public attributes."""
    budget = budget if budget is not None else [MAX_ITEMS]
    try:
        message = str(exc)
    except Exception:  # a __str__ that fails
        message = ""
    attrs = []
    for name in sorted(getattr(exc, "__dict__", {}) or {}):
        if isinstance(name, str) and not name.startswith("_"):
            try:
                attrs.append([name, encode(getattr(exc, name), SNAPSHOT_DEPTH, budget)])
            except Exception:  # an attribute that cannot be sent is left out
                continue
    try:
        args = [encode(a, SNAPSHOT_DEPTH, budget) for a in tuple(exc.args)[:20]]
    except Exception:
        args = [message]
    return {
        "$": "exc",
        "type": _type_ref(type(exc)),
        "message": message[:10_000],
        "args": args,
        "attrs": attrs,
    }


def _type_ref(cls: type) -> dict[str, Any]:
    """A class by module and qualified name, with its bases (object left out)."""
    bases = [_type_ref(b) for b in cls.__bases__ if b is not object][:8]
    return {"module": str(cls.__module__), "qualname": str(cls.__qualname__), "bases": bases}


def _signature(func: Any, budget: list[int]) -> list[list[Any]] | None:
    """Parameters as [name, kind, default?]: a test may read a function's defaults."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = []
    for p in signature.parameters.values():
        entry: list[Any] = [p.name, int(p.kind)]
        if p.default is not inspect.Parameter.empty:
            try:
                entry.append(encode(p.default, SNAPSHOT_DEPTH, budget))
            except Exception:
                entry.append(None)
        params.append(entry)
    return params


def _handle(value: Any) -> int:
    """The handle of an object the tester may refer to later."""
    key = id(value)
    if key in _handles and _objects.get(_handles[key]) is value:
        return _handles[key]
    number = len(_objects) + 1
    _objects[number] = value
    _handles[key] = number
    return number
