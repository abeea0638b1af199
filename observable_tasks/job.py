"""One task's execution state (the call it makes included), and the checks of its inputs.

Private to the manager and the backends that execute tasks (the memory scheduler, the Redis
worker): users only ever see :class:`~observable_tasks.task.Task`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from observable_tasks.invocation import CallShape, Invocation
from observable_tasks.status import TaskStatus
from observable_tasks.task import Task

if TYPE_CHECKING:
    from observable_tasks.manager import TaskCallback
    from observable_tasks.retry import RetryPolicy

__all__ = ["check_progress", "check_timeout"]

_NO_KWARGS: dict[str, Any] = {}  # shared, never mutated (Invocation.start copies to inject)


def check_progress(progress: object) -> None:
    """``ValueError`` unless ``progress`` is a number from 0 to 100 (NaN is rejected)."""
    if isinstance(progress, bool) or not isinstance(progress, (int, float)):
        raise ValueError(f"progress must be a number from 0 to 100, got {progress!r}")
    if not (0.0 <= progress <= 100.0):  # written this way so that NaN fails too
        raise ValueError(f"progress must be from 0 to 100, got {progress!r}")


def check_timeout(timeout: object, what: str = "timeout") -> None:
    """``ValueError`` unless ``timeout`` is a finite number of seconds > 0.

    NaN must never reach the event loop: a NaN timer poisons its heap ordering, so that other
    tasks' timers fire late.
    """
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {timeout!r}")


def _ended_cancelled(task: Task) -> bool:
    # A function of its own: mypy would keep the status narrowed across the await otherwise.
    return task.status is TaskStatus.CANCELLED


def _spent(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this task's function already ran")


class _Job(Invocation):
    """Execution-side state of one task (and the call it makes), private to the manager."""

    __slots__ = (
        "aio",
        "callbacks",
        "cancel_requested",
        "entered",
        "error",
        "has_outcome",
        "policy",
        "result",
        "task",
        "timed_out",
        "timer",
        "waiters",
    )

    def __init__(
        self,
        task: Task,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shape: CallShape,
        policy: RetryPolicy | None,
    ) -> None:
        # Invocation's fields set here rather than through super().__init__: this is per task.
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.shape = shape
        self.task = task
        self.policy = policy  # None: the manager's config.retry (looked up only on a failure)
        self.timer: asyncio.TimerHandle | None = None  # a planned start (delay, retry)
        self.aio: asyncio.Task[None] | None = None
        # Allocated on first use: most tasks have neither (memory per task matters).
        self.waiters: list[asyncio.Future[None]] | None = None
        self.callbacks: list[TaskCallback] | None = None
        self.timed_out = False
        self.entered = False
        self.cancel_requested = False
        self.has_outcome = False
        self.result: Any = None
        self.error: BaseException | None = None

    def again(self) -> None:
        """Reset the per-attempt state for another attempt (a retry)."""
        self.timed_out = self.entered = self.cancel_requested = self.has_outcome = False
        self.result = self.error = None

    def record(self, result: Any = None, error: BaseException | None = None) -> None:
        self.has_outcome = True
        self.result = result
        self.error = error
