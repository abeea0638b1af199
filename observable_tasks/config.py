"""TaskConfig: every knob of the task manager, validated when it is made."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from observable_tasks.retry import RetryPolicy

_DEFAULT_RETRY = RetryPolicy()  # frozen: one shared instance is safe

__all__ = ["TaskConfig", "DEFAULT_CONFIG"]

_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Configuration of a :class:`~observable_tasks.TaskManager`.

    Every field of the documented page is here, plus ``shutdown_timeout``. Invalid values raise
    ``ValueError`` naming the field, at construction.
    """

    max_concurrent_tasks: int = 100
    """At most this many tasks run at once; the rest wait as PENDING, first come first served."""
    default_timeout: float | None = None
    """Seconds of execution (not waiting) before a task ends as TIMEOUT. ``None``: no limit."""
    task_result_ttl: float = 3600.0
    """Seconds a finished task stays in history."""
    enable_task_history: bool = True
    """Keep finished tasks findable. ``False`` forgets a task as soon as it finishes."""
    log_level: int | str = logging.INFO
    """Level of the library's own task log events (a name such as ``"INFO"`` or a number)."""
    cleanup_interval: float = 60.0
    """Seconds between sweeps that evict finished tasks older than ``task_result_ttl``."""
    max_task_history: int = 10_000
    """At most this many finished tasks are kept; the oldest are evicted first."""
    shutdown_timeout: float = 30.0
    """On shutdown, seconds running tasks get to finish before they are cancelled."""
    max_sync_threads: int = 32
    """Worker threads for plain ``def`` task functions (the manager's own daemon threads, not
    the loop's default executor). Threads of sync tasks that timed out or were cancelled are
    abandoned: they stop counting here, up to as many again (``2 * max_sync_threads`` threads
    in all); past that, new sync tasks wait for a thread."""
    loop_stall_threshold: float | None = 0.5
    """Seconds the event loop may be blocked before the loop watchdog reports which task was
    running (``on_loop_stall``; the ``loop.stalled`` log event). The watchdog also measures the
    loop's lag (``on_loop_lag``). ``None``: no watchdog."""
    retry: RetryPolicy = _DEFAULT_RETRY
    """The retry policy of tasks created without ``retry=``. The default retries no exception
    by itself; a task may still ``raise Retry()`` for up to 3 attempts in all."""

    def __post_init__(self) -> None:
        _positive_int("max_concurrent_tasks", self.max_concurrent_tasks)
        if self.default_timeout is not None:
            _positive_number("default_timeout", self.default_timeout)
        _positive_number("task_result_ttl", self.task_result_ttl)
        _positive_number("cleanup_interval", self.cleanup_interval)
        _positive_int("max_task_history", self.max_task_history, allow_zero=True)
        _positive_number("shutdown_timeout", self.shutdown_timeout, allow_zero=True)
        _positive_int("max_sync_threads", self.max_sync_threads)
        if self.loop_stall_threshold is not None:
            _positive_number("loop_stall_threshold", self.loop_stall_threshold)
        if not isinstance(self.enable_task_history, bool):
            raise ValueError(
                f"enable_task_history must be True or False, got {self.enable_task_history!r}"
            )
        if isinstance(self.retry, dict):  # TaskConfig(**config.to_dict()) round-trips
            object.__setattr__(self, "retry", RetryPolicy.from_dict(self.retry))
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {self.retry!r}")
        # Normalise "info" / 20 to the int logging uses, rejecting unknown names.
        object.__setattr__(self, "log_level", _level("log_level", self.log_level))

    @property
    def log_level_no(self) -> int:
        """``log_level`` as a ``logging`` number."""
        assert isinstance(self.log_level, int)
        return self.log_level

    def replace(self, **changes: Any) -> TaskConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (as nexios-contrib's ``TaskConfig.to_dict``), JSON-ready."""
        fields = dataclasses.asdict(self)
        fields["retry"] = self.retry.to_dict()
        return fields


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _positive_number(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "finite and >= 0" if allow_zero else "finite and > 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _level(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a logging level name or number, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        return value
    if isinstance(value, str) and value.upper() in _LEVELS:
        level = logging.getLevelName(value.upper())
        assert isinstance(level, int)
        return level
    raise ValueError(f"{name} must be one of {sorted(_LEVELS)} or a number, got {value!r}")


DEFAULT_CONFIG = TaskConfig()
"""The configuration a manager gets when none is given (nexios-contrib exports it too)."""
