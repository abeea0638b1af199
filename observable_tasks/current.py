"""Which task is running here, and which manager a bare ``create_task`` call should use."""

from __future__ import annotations

import contextvars
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from observable_tasks.manager import TaskManager
    from observable_tasks.task import Task

__all__ = ["current_task", "current_manager", "remember_manager", "last_manager", "all_managers"]

#: Set by the manager inside each task's own context while it runs (and in threads it runs in).
current_var: contextvars.ContextVar[tuple[TaskManager, Task] | None] = contextvars.ContextVar(
    "observable_tasks_current", default=None
)

_managers: weakref.WeakSet[TaskManager] = weakref.WeakSet()
_last: weakref.ReferenceType[TaskManager] | None = None


def current_task() -> Task | None:
    """The task whose code is running here, or ``None`` outside any task."""
    entry = current_var.get()
    return entry[1] if entry is not None else None


def current_manager() -> TaskManager | None:
    """The manager of the task running here, or ``None`` outside any task."""
    entry = current_var.get()
    return entry[0] if entry is not None else None


def remember_manager(manager: TaskManager, *, as_default: bool) -> None:
    """Register a manager; ``as_default`` makes it the fallback for bare ``create_task``."""
    global _last
    _managers.add(manager)
    if as_default:
        _last = weakref.ref(manager)


def last_manager() -> TaskManager | None:
    """The manager most recently set up with ``setup_tasks``, if it is still alive."""
    return _last() if _last is not None else None


def all_managers() -> list[TaskManager]:
    """Every live manager (to find which one owns a task id)."""
    return list(_managers)
