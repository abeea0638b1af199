"""observable-tasks: background tasks for Nexios apps that you can see.

The documented ``nexios_contrib.tasks`` API (``setup_tasks``, ``create_task``, ``TaskDependency``,
``TaskManager``, ``TaskConfig``, ``TaskStatus``, ``Task``, ``TaskError``, ``update_task_progress``)
with tracing, Prometheus metrics and structured logs per task.
"""

from observable_tasks.config import DEFAULT_CONFIG, TaskConfig
from observable_tasks.current import current_task
from observable_tasks.errors import (
    NoTaskManagerError,
    TaskError,
    TaskManagerClosedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from observable_tasks.integration import (
    TaskDependency,
    create_task,
    get_task_manager,
    setup_tasks,
    update_task_progress,
)
from observable_tasks.manager import TaskCallback, TaskManager
from observable_tasks.middleware import CallNext, TaskMiddleware, TaskObserver, outcome_status
from observable_tasks.retry import Retry, RetryPolicy
from observable_tasks.status import TaskStatus
from observable_tasks.task import Task

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CONFIG",
    "CallNext",
    "NoTaskManagerError",
    "Retry",
    "RetryPolicy",
    "Task",
    "TaskCallback",
    "TaskConfig",
    "TaskDependency",
    "TaskError",
    "TaskManager",
    "TaskManagerClosedError",
    "TaskMiddleware",
    "TaskNotFoundError",
    "TaskObserver",
    "TaskStatus",
    "TaskTimeoutError",
    "create_task",
    "current_task",
    "get_task_manager",
    "outcome_status",
    "setup_tasks",
    "update_task_progress",
]
