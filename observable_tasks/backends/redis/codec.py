"""What crosses processes: values as bytes (JSON by default) and functions as import paths.

A task record is read by other processes, so arguments and results are serialized (JSON unless
another :class:`Serializer` is plugged in) and functions travel as ``module:qualname``. A worker
turns such a reference back into a function only through a :class:`FunctionPolicy`: functions
this process registered, or modules the process's own settings allow. A name written into a
record (``os:system``) is never imported or run just because the record says so.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "FunctionNotAllowedError",
    "FunctionPolicy",
    "JsonSerializer",
    "SerializationError",
    "Serializer",
    "encode_payload",
    "function_ref",
]

_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes stored in Redis, and back."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class SerializationError(TypeError):
    """A value (argument, result, error details) cannot be serialized; the message names it."""


class JsonSerializer:
    """Compact UTF-8 JSON; NaN/inf are refused (``allow_nan=False``); tuples come back as lists."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(
            value, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        ).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


def _dumps(serializer: Serializer, value: Any, what: str) -> bytes:
    try:
        return serializer.dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"{what} cannot be serialized: {exc}") from exc


def encode_payload(
    args: Sequence[Any], kwargs: Mapping[str, Any], serializer: Serializer, *, task: str = "task"
) -> bytes:
    """``[args, kwargs]`` as bytes; on failure the error names the argument that cannot be."""
    try:
        return serializer.dumps([list(args), dict(kwargs)])
    except (TypeError, ValueError, OverflowError):
        pass
    for i, arg in enumerate(args):
        _dumps(serializer, arg, f"positional argument {i} of {task} ({type(arg).__name__})")
    for name, arg in kwargs.items():
        _dumps(serializer, arg, f"argument {name!r} of {task} ({type(arg).__name__})")
    return _dumps(serializer, [list(args), dict(kwargs)], f"the arguments of {task}")


def encode_value(value: Any, serializer: Serializer, what: str) -> bytes:
    """Serialize one value (a result, error details); the error message starts with ``what``."""
    return _dumps(serializer, value, what)


def _why_not_portable(func: Any) -> str | None:
    if isinstance(func, functools.partial):
        return "it is a functools.partial (pass the arguments to create_task instead)"
    if inspect.ismethod(func) and not inspect.isclass(func.__self__):
        return "it is a method bound to an instance (the instance does not travel)"
    if not (inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func)):
        return f"it is a {type(func).__name__} object, not a module-level function"
    qualname = getattr(func, "__qualname__", "")
    if func.__name__ == "<lambda>":
        return "it is a lambda (define it with def at module level)"
    if "<locals>" in qualname:
        return (
            "it is defined inside another function (move it to module level; a decorator "
            "must keep the function's name with functools.wraps)"
        )
    if func.__module__ in (None, "__main__"):
        return "it is defined in __main__ (other processes cannot import it; move it to a module)"
    return None


def function_ref(func: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function another process can import, else a clear TypeError."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    why = _why_not_portable(func)
    name = getattr(func, "__qualname__", repr(func))
    if why is not None:
        raise TypeError(f"{name} cannot run in another process: {why}")
    ref = f"{func.__module__}:{func.__qualname__}"
    try:
        found = _walk(sys.modules[func.__module__], func.__qualname__)
    except (KeyError, AttributeError):
        found = None
    if not _same(found, func):
        raise TypeError(
            f"{name} cannot run in another process: {ref} does not lead back to it "
            "(decorated without functools.wraps, or rebound under another name?)"
        )
    return ref


def _same(found: Any, func: Any) -> bool:
    if found is func:
        return True
    # a classmethod fetched again is a new bound-method object around the same function
    return inspect.ismethod(found) and inspect.ismethod(func) and found == func


def _walk(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class FunctionNotAllowedError(LookupError):
    """A record names a function this process is not allowed to run (the task is FAILED)."""

    code = "FUNCTION_NOT_ALLOWED"


class FunctionPolicy:
    """Allow-list from ``module:qualname`` back to a function, fed only by this process.

    Allowed are the functions registered here (``register``, called for what ``create_task`` is
    given) and functions *defined* in the modules/packages of ``allow_modules`` (``"myapp"``
    allows ``myapp.tasks:send``). Nothing else is imported: a reference outside the list raises
    :class:`FunctionNotAllowedError` before any import happens.
    """

    def __init__(
        self,
        allow_modules: Iterable[str] = (),
        functions: Iterable[Callable[..., Any]] = (),
    ) -> None:
        self._modules = tuple(m.strip() for m in allow_modules if m.strip())
        self._functions: dict[str, Callable[..., Any]] = {}
        for func in functions:
            self.register(func)

    def register(self, func: Callable[..., Any]) -> str:
        """Allow ``func``; returns its reference (TypeError if it cannot cross processes)."""
        ref = function_ref(func)
        self._functions[ref] = func
        return ref

    def _module_allowed(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self._modules)

    def allows(self, ref: str) -> bool:
        """Whether ``resolve(ref)`` may look the reference up (it may still not exist)."""
        if ref in self._functions:
            return True
        return bool(_REF.match(ref)) and self._module_allowed(ref.partition(":")[0])

    def resolve(self, ref: str) -> Callable[..., Any]:
        """The function ``ref`` names, if allowed; else :class:`FunctionNotAllowedError`."""
        func = self._functions.get(ref)
        if func is not None:
            return func
        if not self.allows(ref):
            raise FunctionNotAllowedError(
                f"function {ref!r} is not allowed in this worker: it was not registered here "
                f"and its module is not in the allow list {list(self._modules)!r}"
            )
        module_name, _, qualname = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
            obj = module
            for part in qualname.split("."):
                obj = getattr(obj, part)
                if isinstance(obj, types.ModuleType):
                    raise FunctionNotAllowedError(f"{ref!r} goes through module {obj.__name__}")
        except (ImportError, AttributeError) as exc:
            raise FunctionNotAllowedError(f"function {ref!r} cannot be found: {exc}") from exc
        defined_in = getattr(obj, "__module__", None)
        if not callable(obj) or not isinstance(defined_in, str):
            raise FunctionNotAllowedError(f"{ref!r} is not a function")
        if not self._module_allowed(defined_in):
            # e.g. "myapp:run" after "from subprocess import run" in myapp
            raise FunctionNotAllowedError(
                f"{ref!r} is defined in {defined_in}, which is not in the allow list"
            )
        result: Callable[..., Any] = obj
        return result
