"""The Task record: what users read back about a task, and nothing about how it runs."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from observable_tasks.status import TaskStatus

__all__ = ["Task"]


@dataclasses.dataclass(eq=False)
class Task:
    """One background task, kept up to date by its manager while it runs.

    The same object is returned by ``create_task`` and ``get_task``, so a caller holding it sees
    the status, progress and result change.
    """

    id: str
    """Unique id (32 hex characters)."""
    name: str
    """Display name: the ``name=`` given at creation, else the function's name."""
    function: str
    """Qualified name of the function (``module.qualname``): a bounded label for metrics."""
    status: TaskStatus = TaskStatus.PENDING
    created_at: datetime = dataclasses.field(default_factory=lambda: datetime.min)
    """When the task was created (timezone-aware, UTC)."""
    started_at: datetime | None = None
    """When execution began (after any wait for a slot)."""
    completed_at: datetime | None = None
    """When the task reached a final status."""
    result: Any = None
    """The function's return value (COMPLETED only)."""
    error: BaseException | None = None
    """The exception that ended the task: FAILED and TIMEOUT only (a CANCELLED task has none)."""
    progress: float = 0.0
    """0 to 100, set by ``update_task_progress``."""
    timeout: float | None = None
    """Seconds of execution allowed, or ``None``."""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    """Carrier for context that travels with the task (e.g. W3C ``traceparent``)."""
    # Monotonic stamps (seconds) for durations that wall-clock jumps cannot distort.
    _mono_created: float = dataclasses.field(default=0.0, repr=False)
    _mono_started: float | None = dataclasses.field(default=None, repr=False)
    _mono_finished: float | None = dataclasses.field(default=None, repr=False)

    @property
    def is_done(self) -> bool:
        """True once the task has a final status."""
        return self.status.is_terminal

    @property
    def queue_wait(self) -> float | None:
        """Seconds between creation and start, once started."""
        if self._mono_started is None:
            return None
        return self._mono_started - self._mono_created

    @property
    def duration(self) -> float | None:
        """Seconds of execution, once finished after starting."""
        if self._mono_started is None or self._mono_finished is None:
            return None
        return self._mono_finished - self._mono_started

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (the result is included as is)."""
        return {
            "id": self.id,
            "name": self.name,
            "function": self.function,
            "status": self.status.value,
            "progress": self.progress,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "result": self.result,
            "error": str(self.error) if self.error is not None else None,
            "error_type": type(self.error).__name__ if self.error is not None else None,
        }

    def __repr__(self) -> str:
        return f"<Task {self.name!r} id={self.id} status={self.status.value}>"
