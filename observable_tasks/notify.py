"""Failsafe calls out of the manager: observer hooks, callbacks, internal error reports.

A mixin of :class:`~observable_tasks.manager.TaskManager`. Nothing called from here can change a
task's outcome: an observer, callback or hook that raises is counted in ``internal_errors`` and
logged, never propagated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from observable_tasks.task import Task
from observable_tasks.watchdog import log_stall

if TYPE_CHECKING:
    from observable_tasks.job import _Job
    from observable_tasks.manager import TaskCallback

__all__ = ["HookDispatch"]

logger = logging.getLogger("observable_tasks")


class HookDispatch:
    """Calls observers, callbacks and error hooks, failsafe (see the module doc)."""

    # Set up by TaskManager.__init__.
    _listeners: dict[str, list[tuple[str, Callable[..., Any]]]]
    _jobs: dict[str, _Job]
    _background: set[asyncio.Future[Any]]
    internal_errors: collections.Counter[str]

    def _notify(self, hook: str, task: Task, *args: Any) -> None:
        for component, method in self._listeners[hook]:
            try:
                method(task, *args)
            except Exception as exc:
                self.report_internal_error(component, exc)

    def _emit(self, hook: str, *args: Any) -> None:
        """:meth:`_notify` for hooks without a task argument."""
        for component, method in self._listeners[hook]:
            try:
                method(*args)
            except Exception as exc:
                self.report_internal_error(component, exc)

    def _loop_lag(self, lag: float) -> None:  # the watchdog's heartbeat, on the loop
        if self._listeners["on_loop_lag"]:
            self._emit("on_loop_lag", lag)

    def _loop_stalled(self, running: asyncio.Task[Any] | None, seconds: float) -> None:
        # The watchdog's thread, while the loop is blocked: find the task by its asyncio task.
        found = None
        if running is not None:
            found = next((j.task for j in list(self._jobs.values()) if j.aio is running), None)
        if self._listeners["on_loop_stall"]:
            self._emit("on_loop_stall", found, seconds)
        else:
            log_stall(found, seconds)

    def _abandoned(self, change: int) -> None:  # from SyncThreads: +1 / -1
        if self._listeners["on_threads_abandoned"]:
            self._emit("on_threads_abandoned", change)

    def _run_callback(self, callback: TaskCallback, task: Task) -> None:
        try:
            outcome = callback(task)
            if inspect.isawaitable(outcome):
                bg = asyncio.ensure_future(outcome)
                self._background.add(bg)
                bg.add_done_callback(self._callback_done)
        except Exception as exc:
            self.report_internal_error("callback", exc)

    def _callback_done(self, bg: asyncio.Future[Any]) -> None:
        self._background.discard(bg)
        if not bg.cancelled() and bg.exception() is not None:
            exc = bg.exception()
            assert exc is not None
            self.report_internal_error("callback", exc)

    def report_internal_error(self, component: str, exc: BaseException) -> None:
        """A failure in telemetry or user hooks: count it and log it, never fail the task."""
        self.internal_errors[component] += 1
        for _, hook in self._listeners["on_internal_error"]:
            # Reporting must not recurse: an error in this hook is only in the log line below.
            with contextlib.suppress(Exception):
                hook(component, exc)
        logger.warning(
            "observable_tasks: %s raised %s: %s (the task is not affected)",
            component,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
