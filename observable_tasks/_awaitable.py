"""An already-finished awaitable: lets a call do its work eagerly and still be ``await``-ed."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Done"]


class Done(Generic[T]):
    """Holds a value computed at call time; ``await`` returns it without suspending.

    This is how ``create_task`` and ``update_task_progress`` work both as ``await f(...)`` in
    async code and as plain calls from worker threads, where nothing could await a coroutine.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # pragma: no cover - makes this a generator

    def result(self) -> T:
        """The value, for callers that cannot ``await`` (worker threads)."""
        return self.value
