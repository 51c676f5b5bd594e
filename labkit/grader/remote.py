"""The tester's side of the grading boundary: learner names as stand-ins made of plain data.

A test reads ``call_model(url, "Hi")`` or ``except ModelCallError``. In the tester process
these names are stand-ins: calling one sends the call to the learner's kernel (see
``labkit.grader.bridge``) and turns the answer back into values built here, from data only.
A learner's ``str`` subclass arrives as a ``str``, its dict as a ``dict``; its exception as
an instance of a class made here with the same name and bases; any other object as a
stand-in holding a snapshot of its public attributes. Nothing of the learner's runs in this
process, so no ``__eq__``, ``__bool__`` or ``__len__`` of theirs can answer a test.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import inspect
import json
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from labkit.grader.bridge import SHARED_SETTINGS

__all__ = ["Boundary", "RemoteError", "RemoteFunction", "RemoteIterator", "RemoteObject"]


MAX_ANSWER = 32 * 1024 * 1024  # characters of one answer from the kernel

# Modules whose functions and classes, named by the learner's notebook, are the same code
# here: the test gets its own copy (``find_runtime``, ``Path``, ``json``), never the learner's.
_UNSAFE = {"__main__", "__hello__", "__phello__", "antigravity", "this", "idlelib", "turtledemo"}
_UNSAFE |= {"tkinter", "turtle", "ensurepip", "venv", "lib2to3", "pydoc"}
_TRUSTED_ROOTS = frozenset(sys.stdlib_module_names) - _UNSAFE
_TRUSTED_ROOTS |= {"labkit", "requests", "numpy", "jsonschema", "openai", "httpx", "urllib3"}


_ALIASES = {("np", "numpy"), ("plt", "matplotlib.pyplot"), ("pd", "pandas")}


class RemoteError(Exception):
    """The grader could not get an answer from the notebook's kernel."""


class RemoteObject:
    """A learner's object as the tester sees it: its type's name and public attributes."""

    _boundary: Boundary
    _handle: int
    _methods: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in self.__dict__.get("_methods", ()):
            return RemoteFunction(self._boundary, {"handle": self._handle, "attr": name}, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({shown})"[:600]


class _RemoteClass(type):
    """The metaclass of stand-in classes: calling one builds the object in the kernel."""

    _boundary: Boundary | None
    _target: dict[str, Any] | None

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        boundary, target = cls.__dict__.get("_boundary"), cls.__dict__.get("_target")
        if boundary is None or target is None:
            raise TypeError(f"{cls.__name__} is the learner's class and cannot be built here")
        return boundary.call(target, args, kwargs)


class RemoteFunction:
    """A learner's function: calling it runs it in the kernel and returns plain data."""

    def __init__(
        self,
        boundary: Boundary,
        target: dict[str, Any],
        name: str,
        signature: inspect.Signature | None = None,
    ) -> None:
        self._boundary = boundary
        self._target = target
        self.__name__ = self.__qualname__ = name
        if signature is not None:
            self.__signature__ = signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._boundary.call(self._target, args, kwargs)

    def __repr__(self) -> str:
        return f"<function {self.__name__}>"


class RemoteIterator:
    """A learner's generator or iterator: each ``next`` asks the kernel for one item."""

    def __init__(self, boundary: Boundary, handle: int, name: str) -> None:
        self._boundary = boundary
        self._handle = handle
        self._name = name

    def __iter__(self) -> RemoteIterator:
        return self

    def __next__(self) -> Any:
        return self._boundary.next(self._handle)

    def __repr__(self) -> str:
        return f"<{self._name} object>"


class Boundary:
    """Turns names, calls and answers into requests to the kernel and values from it."""

    def __init__(self, send: Callable[[dict[str, Any]], str]) -> None:
        self._send = send  # one request to the kernel -> its answer (a JSON string)
        self._env = _labkit_env()  # as the test started: what it changes goes with each call
        self._classes: dict[tuple[str, str], type] = {}
        self._proxies: dict[int, Any] = {}  # handle -> stand-in: ``is`` holds across calls
        self._callbacks: list[Callable[..., Any]] = []

    # ------------------------------------------------------------ requests

    def adopt_environment(self) -> None:
        """Take the notebook's runtime settings (``bridge.SHARED_SETTINGS``) as the test's own.

        Only those few names, and only as text: they say which runtime and models the
        learner's code talks to, so the test's own ``find_runtime()`` finds the same one.
        """
        for name, value in self._pairs_answer({"op": "environment"}):
            if name not in SHARED_SETTINGS:
                continue
            if isinstance(value, str) and len(value) <= 2000:
                os.environ[name] = value
            elif value is None:
                os.environ.pop(name, None)
        self._env = _labkit_env()

    def lookup(self, names: list[str]) -> dict[str, Any]:
        """The values of those of ``names`` that the notebook defines."""
        found = {}
        for name, data in self._pairs_answer({"op": "lookup", "names": names}):
            if not isinstance(name, str) or name not in names:
                continue
            if isinstance(data, dict) and data.get("$") == "module":
                # ``import json`` is the test's own json; a module bound to another name
                # (``json = pickle``) is not followed.
                module = str(data.get("name", ""))
                if module.rsplit(".", 1)[-1] == name or (name, module) in _ALIASES:
                    found[name] = _trusted_module(module) or object.__new__(RemoteObject)
                    continue
            found[name] = self.value(data)
        return found

    def _pairs_answer(self, request: dict[str, Any]) -> list[tuple[Any, Any]]:
        """The (name, data) pairs of the kernel's answer to a lookup-like request, undecoded."""
        text = self._send(request)
        if len(text) > MAX_ANSWER:
            raise RemoteError(f"the notebook's answer was over {MAX_ANSWER // 2**20} MB")
        try:
            answer = json.loads(text)
            pairs = answer["ok"]["v"] if isinstance(answer, dict) else []
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError("the notebook's kernel sent an unreadable answer") from exc
        return _pairs(pairs)

    def call(self, target: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call a learner's function or method with ``args`` in the kernel."""
        self._callbacks = []
        request = {
            "op": "call",
            "target": target,
            "args": [self._out(a) for a in args],
            "kwargs": [[str(k), self._out(v)] for k, v in kwargs.items()],
            "env": self._env_changes(),
        }
        return self._answer(request)

    def _env_changes(self) -> list[list[str | None]]:
        """The LABKIT_ settings the test changed, which the learner's code sees during calls.

        A test may point the learner's code at its own recording proxy this way (as
        ``$LABKIT_EMBED_URL`` does for a second embedding server).
        """
        now = _labkit_env()
        return [
            [k, now.get(k)]
            for k in sorted(set(now) | set(self._env))
            if now.get(k) != self._env.get(k)
        ]

    def next(self, handle: int) -> Any:
        """The next item of a learner's iterator (StopIteration at its end)."""
        self._callbacks = []
        return self._answer({"op": "next", "handle": handle, "env": self._env_changes()})

    def _answer(self, request: dict[str, Any]) -> Any:
        text = self._send(request)
        if len(text) > MAX_ANSWER:
            raise RemoteError(f"the notebook's answer was over {MAX_ANSWER // 2**20} MB")
        try:
            answer = json.loads(text)
        except ValueError as exc:
            raise RemoteError("the notebook's kernel sent an unreadable answer") from exc
        if not isinstance(answer, dict):
            raise RemoteError("the notebook's kernel sent an unreadable answer")
        # Callbacks first: a test reads what its sleep() was given after the call returns.
        recorded = answer.get("recorded")
        for call in recorded if isinstance(recorded, list) else []:
            self._replay(call)
        if answer.get("stop") is True:
            raise StopIteration
        if "raised" in answer:
            error = self.value(answer["raised"])
            if isinstance(error, BaseException):
                raise error
            raise RemoteError("the notebook's kernel sent an unreadable answer")
        return self.value(answer.get("ok"))

    def _replay(self, call: Any) -> None:
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], int)):
            return
        number, args, kwargs = call
        if 0 <= number < len(self._callbacks):
            args, kwargs = self.value(args), self.value(kwargs)
            if isinstance(args, list) and isinstance(kwargs, dict):
                self._callbacks[number](*args, **{str(k): v for k, v in kwargs.items()})

    # ------------------------------------------------------------ values going out

    def _out(self, value: Any, depth: int = 24) -> Any:
        """A value of the test's, as data the kernel can rebuild."""
        if depth <= 0:
            raise TypeError("a value nested this deep cannot be passed to the notebook")
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return (
                value
                if value == value and abs(value) != float("inf")
                else {"$": "float", "v": repr(value)}
            )
        if value is ...:
            return {"$": "ellipsis"}
        if isinstance(value, (bytes, bytearray)):
            return {"$": "bytes", "v": base64.b64encode(bytes(value)).decode()}
        if isinstance(value, pathlib.PurePath):
            return {"$": "path", "v": str(value)}
        if isinstance(value, dict):
            return {
                "$": "dict",
                "v": [[self._out(k, depth - 1), self._out(v, depth - 1)] for k, v in value.items()],
            }
        if isinstance(value, list):
            return [self._out(v, depth - 1) for v in value]
        if isinstance(value, (tuple, set, frozenset)):
            tag = {tuple: "tuple", set: "set", frozenset: "frozenset"}.get(type(value), "tuple")
            return {"$": tag, "v": [self._out(v, depth - 1) for v in value]}
        handle = _handle_of(value)
        if handle is not None:
            return {"$": "ref", "handle": handle}
        if callable(value):  # a callback: the kernel records its calls, replayed here after
            self._callbacks.append(value)
            return {"$": "recorder", "id": len(self._callbacks) - 1}
        raise TypeError(
            f"a {type(value).__name__} cannot be passed to the notebook's code: pass plain "
            "data (str, numbers, lists, dicts, Paths), a URL, or a callback"
        )

    # ------------------------------------------------------------ values coming in

    def value(self, data: Any, depth: int = 64) -> Any:
        """A value from the kernel's answer, built here from data only."""
        if depth <= 0:
            raise RemoteError("the notebook's answer is nested too deeply")
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        if isinstance(data, list):
            return [self.value(v, depth - 1) for v in data]
        if not isinstance(data, dict):
            raise RemoteError("the notebook's kernel sent an unreadable answer")
        tag, inner = data.get("$"), data.get("v")
        if tag == "dict" and isinstance(inner, list):
            pairs = [(self.value(k, depth - 1), self.value(v, depth - 1)) for k, v in _pairs(inner)]
            return {k: v for k, v in pairs if _hashable(k)}
        if tag in ("tuple", "set", "frozenset") and isinstance(inner, list):
            items = [self.value(v, depth - 1) for v in inner]
            if tag == "tuple":
                return tuple(items)
            items = [i for i in items if _hashable(i)]
            return set(items) if tag == "set" else frozenset(items)
        if tag == "bytes" and isinstance(inner, str):
            return base64.b64decode(inner)
        if tag == "path" and isinstance(inner, str):
            return pathlib.Path(inner)
        if tag == "float" and inner in ("nan", "inf", "-inf"):
            return float(inner)
        if tag == "ellipsis":
            return ...
        if tag == "ndarray":
            return _array(self.value(inner, depth - 1), data.get("dtype"))
        if tag == "exc":
            return self._exception(data)
        if tag == "class":
            return self._class(data.get("type"), data.get("handle"))
        if tag == "module":  # a module under another name stays the learner's (see lookup)
            return object.__new__(RemoteObject)
        if tag == "func":
            return self._function(data)
        if tag == "iter":
            return self._proxy(
                data, lambda h: RemoteIterator(self, h, _type_name(data.get("type")))
            )
        if tag == "obj":
            return self._object(data, depth)
        raise RemoteError(f"the notebook's kernel sent an unknown kind of value ({tag!r})")

    def _proxy(self, data: dict[str, Any], make: Callable[[int], Any]) -> Any:
        handle = data.get("handle")
        if not isinstance(handle, int):
            raise RemoteError("the notebook's kernel sent an unreadable answer")
        if handle not in self._proxies:
            self._proxies[handle] = make(handle)
        return self._proxies[handle]

    def _function(self, data: dict[str, Any]) -> Any:
        # Always the learner's function, run in the kernel, even one named like labkit's:
        # a name bound to a function of ours (exec, Popen) would run it here on their data.
        name = str(data.get("name", "function"))[:100]
        signature = self._signature(data.get("signature"))
        return self._proxy(data, lambda h: RemoteFunction(self, {"handle": h}, name, signature))

    def _signature(self, params: Any) -> inspect.Signature | None:
        if not isinstance(params, list):
            return None
        try:
            built = []
            for entry in params:
                name, kind = str(entry[0]), inspect._ParameterKind(int(entry[1]))
                default = self.value(entry[2]) if len(entry) > 2 else inspect.Parameter.empty
                built.append(inspect.Parameter(name, kind, default=default))
            return inspect.Signature(built)
        except (ValueError, TypeError, IndexError, RemoteError):
            return None

    def _object(self, data: dict[str, Any], depth: int) -> Any:
        found = self._class(data.get("type"))
        cls: type[RemoteObject] = found if issubclass(found, RemoteObject) else RemoteObject

        def make(handle: int) -> Any:
            obj: Any = object.__new__(cls)
            obj.__dict__.update(_boundary=self, _handle=handle, _methods=frozenset())
            return obj

        obj: Any = self._proxy(data, make)
        # The same object seen again may have changed: its attributes are the newest ones.
        obj.__dict__["_methods"] = frozenset(str(m) for m in data.get("methods") or [])
        for name, value in _pairs(data.get("attrs") or []):
            if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
                obj.__dict__[name] = self.value(value, depth - 1)
        return obj

    def _exception(self, data: dict[str, Any]) -> BaseException:
        cls: Any = self._class(data.get("type"))
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = self._stand_in(data.get("type"), (Exception,))
        args = self.value(data.get("args") or [])
        message = str(data.get("message", ""))[:10_000]
        error: BaseException
        try:
            error = cls.__new__(cls)
            error.args = tuple(args) if isinstance(args, list) else (message,)
        except Exception:  # a built-in class that cannot be made this way
            cls = self._stand_in(data.get("type"), (Exception,))
            error = cls.__new__(cls)
            error.args = (message,)
        error.__dict__["_remote_message"] = message
        for name, value in _pairs(data.get("attrs") or []):
            if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
                try:
                    setattr(error, name, self.value(value))
                except (AttributeError, TypeError):
                    continue  # a read-only attribute of a real class keeps its own value
        return error

    def _class(self, ref: Any, handle: Any = None) -> type:
        """An exception class of ours if trusted, else a stand-in (calls build in the kernel).

        Only exception classes are ever ours: ``except ValueError`` must catch the learner's
        ValueError, and building an exception runs nothing of consequence. Any other class
        the learner names is a stand-in, so a name bound to ``subprocess.Popen`` runs nothing.
        """
        module, qualname = _ref_names(ref)
        real = _trusted_attribute(module, qualname)
        if isinstance(real, type) and issubclass(real, Exception):
            return real
        bases = (
            tuple(self._class(b) for b in (ref.get("bases") or [])[:8])
            if isinstance(ref, dict)
            else ()
        )
        errors = tuple(b for b in bases if issubclass(b, BaseException))
        cls = self._stand_in(ref, errors or (RemoteObject,))
        if isinstance(handle, int):
            type.__setattr__(cls, "_target", {"handle": handle})
        return cls

    def _stand_in(self, ref: Any, bases: tuple[type, ...]) -> type:
        module, qualname = _ref_names(ref)
        key = (module, qualname)
        if key not in self._classes:
            if any(issubclass(b, BaseException) for b in bases):
                bases = tuple(b for b in bases if issubclass(b, BaseException)) or (Exception,)
            namespace = {"__module__": module, "__qualname__": qualname, "_boundary": self}
            namespace["_target"] = None
            if any(issubclass(b, BaseException) for b in bases):
                namespace["__str__"] = _remote_str
            name = qualname.rsplit(".", 1)[-1] or "object"
            try:
                cls = _RemoteClass(name, bases, namespace)
            except TypeError:  # bases that cannot be combined here
                fallback = (
                    (Exception,)
                    if any(issubclass(b, BaseException) for b in bases)
                    else (RemoteObject,)
                )
                cls = _RemoteClass(name, fallback, namespace)
            self._classes[key] = cls
        return self._classes[key]


def _array(items: Any, dtype: Any) -> Any:
    """A numpy array of numbers (only numeric types: an object array could hold anything)."""
    import numpy

    kind = numpy.dtype(dtype).kind if isinstance(dtype, str) and dtype.isalnum() else "O"
    if kind not in "biufc":
        raise RemoteError(f"the notebook sent an array of type {str(dtype)[:20]!r}, not numbers")
    return numpy.array(items, dtype=dtype)


def _remote_str(self: BaseException) -> str:
    return str(self.__dict__.get("_remote_message", ""))


def _pairs(items: Any) -> list[tuple[Any, Any]]:
    if not isinstance(items, list):
        return []
    return [(i[0], i[1]) for i in items if isinstance(i, list) and len(i) == 2]


def _labkit_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("LABKIT_")}


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _ref_names(ref: Any) -> tuple[str, str]:
    if not isinstance(ref, dict):
        return "__main__", "object"
    return str(ref.get("module", ""))[:200], str(ref.get("qualname", ""))[:200] or "object"


def _type_name(ref: Any) -> str:
    return _ref_names(ref)[1].rsplit(".", 1)[-1]


def _handle_of(value: Any) -> int | None:
    """The kernel handle behind a stand-in, if ``value`` is one."""
    if isinstance(value, _RemoteClass):
        target = value.__dict__.get("_target") or {}
        return target.get("handle") if isinstance(target.get("handle"), int) else None
    if isinstance(value, (RemoteObject, RemoteFunction, RemoteIterator)):
        handle = value.__dict__.get("_handle")
        if handle is None and isinstance(value, RemoteFunction):
            handle = value._target.get("handle") if "attr" not in value._target else None
        return handle if isinstance(handle, int) else None
    return None


def _trusted_module(name: str) -> Any:
    if name.split(".")[0] not in _TRUSTED_ROOTS:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # not installed here, or broken: the learner's copy is not used either
        return None


def _trusted_attribute(module: str, qualname: str) -> Any:
    """``module.qualname`` from the grader's own installed code, or None."""
    if module == "builtins":
        return getattr(builtins, qualname, None) if qualname.isidentifier() else None
    found = _trusted_module(module)
    for part in qualname.split("."):
        if found is None or not part.isidentifier() or part.startswith("__"):
            return None
        found = getattr(found, part, None)
    return found
