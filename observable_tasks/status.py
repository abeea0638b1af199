"""Task statuses and the one function that moves a task between them."""

from __future__ import annotations

import enum

__all__ = ["TaskStatus", "InvalidTransition", "check_transition"]


class TaskStatus(str, enum.Enum):
    """Where a task is in its life.

    Values are the upper-case names, as nexios-contrib ships them (``TaskStatus.COMPLETED ==
    "COMPLETED"``), so clients comparing ``task.status.value`` keep working. Looking a status up
    by value ignores case (``TaskStatus("completed")``). Telemetry uses lower-case label values
    (Prometheus convention) through ``observable_tasks.telemetry.names.STATUS_LABELS``.
    """

    PENDING = "PENDING"
    """Created, waiting for a concurrency slot, for its start time (``delay=``/``eta=``) or
    for its next attempt (a retry)."""
    RUNNING = "RUNNING"
    """Executing now."""
    COMPLETED = "COMPLETED"
    """The function returned; ``task.result`` holds its return value."""
    FAILED = "FAILED"
    """The function raised; ``task.error`` holds the exception."""
    CANCELLED = "CANCELLED"
    """Cancelled by ``cancel_task`` or by shutdown, before or during execution."""
    TIMEOUT = "TIMEOUT"
    """Execution took longer than the task's timeout."""

    @property
    def is_terminal(self) -> bool:
        """True for the four final statuses."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        # "completed" (this library's values before 0.2, and metric labels) finds COMPLETED.
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMEOUT}
)

#: Every allowed edge. Terminal states have none: they are final.
_EDGES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: _TERMINAL | {TaskStatus.PENDING},  # back to PENDING: a retry
}


class InvalidTransition(RuntimeError):
    """An attempt to move a task along an edge the life cycle does not have."""


def check_transition(current: TaskStatus, new: TaskStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> new`` is an allowed edge."""
    if new not in _EDGES.get(current, frozenset()):
        raise InvalidTransition(f"a task cannot go from {current.value} to {new.value}")
