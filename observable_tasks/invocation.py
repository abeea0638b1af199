"""What to run for a task: the callable and its arguments, checked at creation.

Kept apart from :class:`~observable_tasks.task.Task` so that a task record never needs the Python
callable (a cross-process backend refers to functions by import path instead).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Any, cast

from observable_tasks.threads import SyncThreads

__all__ = ["CallShape", "Invocation", "check_call", "prepare", "function_name", "reject_coroutine"]

# Caches keyed by what identifies a plain function: its code object (shared by every closure
# made from one ``def``: per-request closures hit the cache) *and* its names and defaults, which
# generated functions (``types.FunctionType(template.__code__, globals, "job_7", defaults)``)
# change while sharing the code object.
_FunctionKey = tuple[types.CodeType, str, str, str, int, int]
_SIGNATURES: dict[_FunctionKey, inspect.Signature] = {}
_CHECKED: dict[tuple[Any, ...], CallShape] = {}  # see check_call for its two kinds of keys
_MAX_CACHED = 4096


def _function_key(func: types.FunctionType) -> _FunctionKey:
    defaults, kwdefaults = func.__defaults__, func.__kwdefaults__
    return (
        func.__code__,
        func.__module__,
        func.__qualname__,
        func.__name__,
        len(defaults) if defaults else 0,
        len(kwdefaults) if kwdefaults else 0,
    )


class CallShape:
    """What checking a call found out: shared by every call of the same shape (cached)."""

    __slots__ = ("is_async", "name", "short_name", "wants_task_id")

    def __init__(self, is_async: bool, wants_task_id: bool, name: str) -> None:
        self.is_async = is_async
        """Await the function's coroutine (else it runs in a worker thread)."""
        self.wants_task_id = wants_task_id
        """The function has a ``task_id`` parameter the caller did not fill: inject it."""
        self.name = name
        """``module.qualname`` of the function (see :func:`function_name`)."""
        self.short_name = name.rpartition(".")[2]
        """The last part of :attr:`name`: a task's name when ``name=`` is not given."""


class Invocation:
    """A callable with its arguments, checked against its signature, ready to run once.

    The manager's per-task execution state subclasses this (one object per task, not two).
    """

    __slots__ = ("args", "func", "kwargs", "shape")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shape: CallShape,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.shape = shape

    @property
    def is_async(self) -> bool:
        return self.shape.is_async

    @property
    def wants_task_id(self) -> bool:
        return self.shape.wants_task_id

    @property
    def name(self) -> str:
        return self.shape.name

    def start(self, task_id: str, threads: SyncThreads | None = None) -> Awaitable[Any]:
        """Call the function and return what to await for its result.

        An async function's own coroutine is returned as is (no wrapper: this is the hot path);
        a sync function runs in a worker thread of ``threads`` (default: one shared pool).
        """
        shape, kwargs = self.shape, self.kwargs
        if shape.wants_task_id:
            kwargs = {**kwargs, "task_id": task_id}
        if shape.is_async:
            if kwargs:
                return self.func(*self.args, **kwargs)  # type: ignore[no-any-return]
            return self.func(*self.args)  # type: ignore[no-any-return]  # cheaper call
        if threads is None:
            threads = _shared_threads()
        return threads.run(self.func, self.args, kwargs)


_SHARED: list[SyncThreads] = []


def _shared_threads() -> SyncThreads:
    # For invocations run outside a manager: never the loop's default executor (see threads.py).
    if not _SHARED:
        _SHARED.append(SyncThreads(32, name="observable-tasks-shared"))
    return _SHARED[0]


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable (unwrapping partials): bounded, fit for a metric label."""
    while isinstance(func, functools.partial):
        func = func.func
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    name = getattr(func, "__name__", None)
    if isinstance(name, str) and name and qualname.rpartition(".")[2] != name:
        # A generated function (types.FunctionType(code, globals, name)) keeps the template's
        # __qualname__ but has a name of its own: that name is the one users gave it.
        qualname = f"{qualname.rpartition('.')[0]}.{name}" if "." in qualname else name
    module = getattr(func, "__module__", None) or type(func).__module__
    return f"{module}.{qualname}" if module else qualname


def prepare(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Invocation:
    """:func:`check_call`, then the checked call as an :class:`Invocation`."""
    shape = check_call(func, args, kwargs)
    return Invocation(cast("Callable[..., Any]", func), args, kwargs, shape)


def check_call(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallShape:
    """Check that ``func(*args, **kwargs)`` is a valid call, without calling it.

    Raises ``TypeError`` with a clear message for a coroutine object, a non-callable, or
    arguments that do not fit the function's signature.
    """
    if isinstance(func, types.FunctionType) and "__wrapped__" not in func.__dict__:
        # Fast path: a call shape (positional count, keyword names) already checked for this
        # function is valid again; binding is the costly part of creating a task. Not for
        # decorated functions: functools.wraps wrappers share one code object between many
        # functions whose signatures and names differ.
        key: tuple[Any, ...]
        if func.__closure__ is None:
            # Module-level (and generated) functions: the function itself is the key. Cheap to
            # hash, and holding it keeps alive nothing that would not live anyway.
            key = (func, len(args), *kwargs)
        else:
            # Closures made per request are new objects sharing one code object and names:
            # key on those (see _function_key), not on the closure, which may hold request data.
            defaults, kwdefaults = func.__defaults__, func.__kwdefaults__
            key = (
                func.__code__, func.__module__, func.__qualname__, func.__name__,
                len(defaults) if defaults else 0, len(kwdefaults) if kwdefaults else 0,
                len(args), *kwargs,
            )  # fmt: skip
        known = _CHECKED.get(key)
        if known is not None:
            return known
        shape = _check(func, args, kwargs)
        if len(_CHECKED) < _MAX_CACHED:
            _CHECKED[key] = shape
        return shape
    return _check(func, args, kwargs)


def _check(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallShape:
    reject_coroutine(func)
    if not callable(func):
        raise TypeError(f"create_task() needs a callable, got {type(func).__name__}: {func!r}")
    if _is_async_generator(func):
        # Calling it makes an async generator, which nothing would iterate: the body would
        # never run, and the task would "complete" with the generator object as its result.
        raise TypeError(
            f"{function_name(func)} is an async generator function, which create_task() cannot "
            "run (its body only runs when iterated): make it an async def that returns a value"
        )
    sig = _signature(func)
    wants_task_id = False
    if sig is not None:
        params = sig.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(k for k in kwargs if k not in params)
            if unknown:
                raise TypeError(
                    f"{function_name(func)}{sig} has no parameter(s) {', '.join(unknown)}; "
                    "create_task() itself only takes name= and timeout="
                )
        wants_task_id = (
            "task_id" in params
            and "task_id" not in kwargs
            and params["task_id"].kind
            in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        try:
            if wants_task_id:
                try:
                    sig.bind(*args, **kwargs, task_id="")
                except TypeError:
                    # task_id was given positionally: the caller chose it, do not inject.
                    sig.bind(*args, **kwargs)
                    wants_task_id = False
            else:
                sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"cannot call {function_name(func)}{sig} with the given arguments: {exc}"
            ) from None
    return CallShape(_is_async(func), wants_task_id, function_name(func))


def reject_coroutine(func: object) -> None:
    """``TypeError`` for a coroutine object (closed first: no "never awaited" warning)."""
    if inspect.iscoroutine(func):
        func.close()  # we will never await it; closing avoids a "never awaited" warning
        raise TypeError(
            "create_task() needs the function, not a coroutine object: "
            "write create_task(work, x) instead of create_task(work(x))"
        )


def _is_async_generator(func: object) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.isasyncgenfunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.isasyncgenfunction(call)


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    # Signatures of plain functions are cached (see _function_key): per-request closures share one.
    code = (
        _function_key(func)
        if isinstance(func, types.FunctionType) and "__wrapped__" not in func.__dict__
        else None
    )
    if code is not None:
        cached = _SIGNATURES.get(code)
        if cached is not None:
            return cached
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None  # some builtins have no signature: let the call itself check
    if code is not None and len(_SIGNATURES) < _MAX_CACHED:
        _SIGNATURES[code] = sig
    return sig
