"""Exceptions raised by observable_tasks, and the one users raise themselves (TaskError)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "TaskError",
    "TaskNotFoundError",
    "TaskManagerClosedError",
    "TaskTimeoutError",
    "NoTaskManagerError",
]


class TaskError(Exception):
    """An application-level task failure with a machine-readable ``code``.

    Raise it inside a task to fail the task with structured details, or inside a handler and
    register an exception handler for it (``app.add_exception_handler(TaskError, handler)``).
    """

    def __init__(
        self,
        message: str = "Task failed",
        *,
        code: str = "TASK_ERROR",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"TaskError(code={self.code!r}, message={self.message!r}, details={self.details!r})"


class TaskNotFoundError(LookupError):
    """No task with this id is known (never created, or already evicted from history)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r} (never created, or evicted from history)")
        self.task_id = task_id


class TaskManagerClosedError(RuntimeError):
    """The manager is shutting down (or was shut down) and accepts no new tasks."""


class TaskTimeoutError(TimeoutError):
    """A task's execution exceeded its timeout. Stored as ``task.error`` of a TIMEOUT task."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"task exceeded its timeout of {timeout:g}s")
        self.timeout = timeout


class NoTaskManagerError(RuntimeError):
    """``create_task`` found no task manager: call ``setup_tasks(app)`` (or make a TaskManager)."""
