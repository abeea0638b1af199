"""The Task record: what users read back about a task, and nothing about how it runs."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from observable_tasks.status import TaskStatus

__all__ = ["Task", "new_task_id"]

# Ids are 128 random bits from the OS (unguessable: they appear in URLs such as /status/{id}).
# One os.urandom call serves a batch of ids: a syscall per task is a large part of creating one.
# list.pop/extend are atomic, so threads share the pool without a lock.
_BATCH = 256
_pool: list[str] = []


def new_task_id() -> str:
    """A new task id: 32 lowercase hex characters (the format of ``uuid4().hex``)."""
    try:
        return _pool.pop()
    except IndexError:
        hexed = os.urandom(16 * _BATCH).hex()
        _pool.extend([hexed[i : i + 32] for i in range(0, len(hexed), 32)])
        return _pool.pop()


def _forget_entropy() -> None:
    # A forked worker must not hand out the same ids as its parent.
    _pool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_entropy)


class Task:
    """One background task, kept up to date by its manager while it runs.

    The same object is returned by ``create_task`` and ``get_task``, so a caller holding it sees
    the status, progress and result change. Times are kept as one wall-clock stamp plus monotonic
    stamps (durations immune to clock jumps); the ``*_at`` datetimes are derived on access.
    """

    __slots__ = (
        "__weakref__",  # the Redis backend keeps the Task objects it handed out, weakly
        "_headers",
        "_mono_created",
        "_mono_finished",
        "_mono_ready",
        "_mono_started",
        "_next_wall",
        "_wall_created",
        "attempts",
        "error",
        "function",
        "id",
        "key",
        "max_attempts",
        "name",
        "progress",
        "result",
        "status",
        "timeout",
    )

    def __init__(
        self,
        id: str,
        name: str,
        function: str,
        timeout: float | None = None,
        wall_created: float = 0.0,
        mono_created: float = 0.0,
        max_attempts: int = 1,
    ) -> None:
        self.id = id
        """Unique id (32 hex characters)."""
        self.name = name
        """Display name: the ``name=`` given at creation, else the function's name."""
        self.function = function
        """Qualified name of the function (``module.qualname``): a bounded label for metrics."""
        self.status = TaskStatus.PENDING
        self.result: Any = None
        """The function's return value (COMPLETED only)."""
        self.error: BaseException | None = None
        """The exception that ended the task: FAILED and TIMEOUT; ``None`` when CANCELLED."""
        self.progress = 0.0
        """0 to 100, set by ``update_task_progress``."""
        self.timeout = timeout
        """Seconds of execution allowed, or ``None``."""
        self.attempts = 0
        """Attempts started so far: 1 once it ran, more after retries (and, on Redis, after a
        lost worker's attempt ran again)."""
        self.max_attempts = max_attempts
        """Attempts its retry policy allows in all (``RetryPolicy.max_attempts``)."""
        self.key: str | None = None
        """The idempotency ``key=`` given at creation, else ``None``."""
        self._next_wall: float | None = None  # wall time of the planned (next) attempt
        self._headers: dict[str, str] | None = None
        self._wall_created = wall_created
        self._mono_created = mono_created
        self._mono_started: float | None = None
        self._mono_finished: float | None = None
        # When it could start: its planned time (delay=/eta=, a retry), else its creation.
        self._mono_ready: float | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Carrier for context that travels with the task (e.g. W3C ``traceparent``)."""
        if self._headers is None:
            self._headers = {}
        return self._headers

    @property
    def created_at(self) -> datetime:
        """When the task was created (timezone-aware, UTC)."""
        return datetime.fromtimestamp(self._wall_created, timezone.utc)

    @property
    def started_at(self) -> datetime | None:
        """When execution began (after any wait for a slot)."""
        return self._wall(self._mono_started)

    @property
    def completed_at(self) -> datetime | None:
        """When the task reached a final status."""
        return self._wall(self._mono_finished)

    def _wall(self, mono: float | None) -> datetime | None:
        if mono is None:
            return None
        wall = self._wall_created + (mono - self._mono_created)
        return datetime.fromtimestamp(wall, timezone.utc)

    @property
    def next_attempt_at(self) -> datetime | None:
        """While PENDING until a planned time (``delay=``/``eta=``, or waiting to retry): when
        the next attempt may start (timezone-aware, UTC). ``None`` otherwise."""
        wall = self._next_wall
        if wall is None:
            return None
        return datetime.fromtimestamp(wall, timezone.utc)

    @property
    def is_done(self) -> bool:
        """True once the task has a final status."""
        return self.status.is_terminal

    @property
    def queue_wait(self) -> float | None:
        """Seconds the latest attempt waited for a slot, once started: from creation (or from
        its planned time: ``delay=``/``eta=``, a retry's backoff) to its start."""
        if self._mono_started is None:
            return None
        ready = self._mono_ready
        return self._mono_started - (self._mono_created if ready is None else ready)

    @property
    def duration(self) -> float | None:
        """Seconds of execution, once finished after starting."""
        if self._mono_started is None or self._mono_finished is None:
            return None
        return self._mono_finished - self._mono_started

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (the result is included as is)."""
        started, completed = self.started_at, self.completed_at
        next_at = self.next_attempt_at
        return {
            "id": self.id,
            "name": self.name,
            "function": self.function,
            "status": self.status.value,
            "progress": self.progress,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "next_attempt_at": next_at.isoformat() if next_at else None,
            "key": self.key,
            "created_at": self.created_at.isoformat(),
            "started_at": started.isoformat() if started else None,
            "completed_at": completed.isoformat() if completed else None,
            "result": self.result,
            "error": str(self.error) if self.error is not None else None,
            "error_type": type(self.error).__name__ if self.error is not None else None,
        }

    def __repr__(self) -> str:
        return f"<Task {self.name!r} id={self.id} status={self.status.value}>"
