"""The seam telemetry (and users) attach to: task middleware and lifecycle observers.

A *middleware* wraps one task's execution: ``async def mw(task, call_next) -> result``. It runs in
the task's own context, so whatever it makes current (a span, log bindings) is current while the
task function runs. Middleware cannot change a task's outcome: only the function decides it, and a
middleware that raises in its own code is reported (log + ``TaskManager.internal_errors``), never
turned into a failed task.

An *observer* hears about events outside execution (created, cancelled while pending, progress,
evicted, the event loop's lag and stalls, abandoned sync threads). Its hooks are plain synchronous
methods and are failsafe in the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from observable_tasks.errors import TaskTimeoutError
from observable_tasks.status import TaskStatus

if TYPE_CHECKING:
    from observable_tasks.task import Task

__all__ = [
    "CallNext",
    "TaskMiddleware",
    "TaskObserver",
    "OBSERVER_HOOKS",
    "ErrorReporter",
    "outcome_status",
    "guard",
    "build_chain",
]

CallNext = Callable[[], Awaitable[Any]]
"""Runs the rest of the chain (and finally the task function); returns its result."""

TaskMiddleware = Callable[["Task", CallNext], Awaitable[Any]]
"""``async def mw(task, call_next)``: wrap one task's execution."""

ErrorReporter = Callable[[str, BaseException], None]
"""Receives ``(component, exception)`` for a failure inside telemetry or user hooks."""


class TaskObserver:
    """Lifecycle hooks for events that happen outside execution. Override the ones you need.

    Hooks are called synchronously. ``on_created`` runs in the creator's context (inside the
    request that created the task), which is where a tracer starts its "send" span.
    ``on_created`` and ``on_progress`` run in the caller's thread, which is a worker thread
    when a sync task creates tasks or reports progress: keep hooks thread-safe.
    """

    def on_submit(self, task: Task) -> None:
        """A task is about to be stored: add to ``task.headers`` what must travel with it
        (the tracer's W3C context). Runs in the creator's context, before ``on_created``."""

    def on_created(self, task: Task) -> None:
        """A task was accepted (still PENDING): stored by the backend (on Redis: written)."""

    def on_cancelled_pending(self, task: Task) -> None:
        """A PENDING task was cancelled (``cancel_task`` or shutdown): before it ever started,
        or while it waited for its next attempt. ``task.next_attempt_at`` is still set when it
        waited for a planned time."""

    def on_due(self, task: Task) -> None:
        """A task that waited for its planned time (``delay=``/``eta=``, a retry's backoff) may
        start now: from here it waits for a slot (memory backend; on Redis this happens in
        Redis)."""

    def on_progress(self, task: Task, progress: float) -> None:
        """``update_task_progress`` set a new value."""

    def on_evicted(self, task: Task) -> None:
        """A finished task left history (TTL, ``max_task_history`` or history disabled)."""

    def on_internal_error(self, component: str, error: BaseException) -> None:
        """A middleware, observer or callback raised; the task was not affected."""

    def on_loop_lag(self, lag: float) -> None:
        """The loop watchdog's heartbeat ran ``lag`` seconds late (on the loop, every beat)."""

    def on_loop_stall(self, task: Task | None, seconds: float) -> None:
        """The loop has been blocked for ``seconds`` (past ``loop_stall_threshold``) while
        ``task`` was running (``None``: no task of this manager). Once per stall, called from
        the watchdog's thread while the loop is still blocked."""

    def on_threads_abandoned(self, change: int) -> None:
        """``+1``: a sync task's thread was abandoned (its task timed out or was cancelled);
        ``-1``: such a thread's function returned at last. From the loop or a worker thread."""

    def observes(self, hook: str) -> bool:
        """Whether ``hook`` does anything here: asked once, when the observer is added.

        By default, the hooks a subclass overrides. The manager never calls the others, so an
        observer costs nothing on events it ignores.
        """
        return getattr(type(self), hook, None) is not getattr(TaskObserver, hook, None)


OBSERVER_HOOKS = (
    "on_submit",
    "on_created",
    "on_cancelled_pending",
    "on_due",
    "on_progress",
    "on_evicted",
    "on_internal_error",
    "on_loop_lag",
    "on_loop_stall",
    "on_threads_abandoned",
)
"""The hook names of :class:`TaskObserver`."""


def outcome_status(error: BaseException | None) -> TaskStatus:
    """The final status an execution ends with, given what ``call_next`` raised (or ``None``)."""
    if error is None:
        return TaskStatus.COMPLETED
    if isinstance(error, TaskTimeoutError):
        return TaskStatus.TIMEOUT
    if isinstance(error, asyncio.CancelledError):
        return TaskStatus.CANCELLED
    return TaskStatus.FAILED


def guard(middleware: TaskMiddleware, name: str, report: ErrorReporter) -> TaskMiddleware:
    """Wrap ``middleware`` so that its own failures can never change the task's outcome.

    - raises before calling ``call_next``: reported, and the rest of the chain still runs;
    - returns without calling ``call_next``: reported, and the rest of the chain still runs;
    - raises something other than what ``call_next`` raised, swallows the exception
      ``call_next`` raised, or returns something other than its result: reported, and the true
      outcome is restored.
    """

    async def guarded(task: Task, call_next: CallNext) -> Any:
        called = finished = False
        result: Any = None
        error: BaseException | None = None

        async def next_once() -> Any:
            nonlocal called, finished, result, error
            if called:
                raise RuntimeError(f"middleware {name} called call_next twice")
            called = True
            try:
                result = await call_next()
            except BaseException as exc:
                error = exc
                raise
            finally:
                finished = True
            return result

        try:
            returned = await middleware(task, next_once)
        except BaseException as exc:
            if finished and exc is error:
                raise
            if isinstance(exc, asyncio.CancelledError):
                if not called:
                    raise  # a real cancellation that arrived before execution
                # Cancelled while the middleware finished its own work: the function's outcome
                # already stands, and a late cancel is no middleware failure.
            else:
                report(name, exc)
        else:
            if not called:
                report(name, RuntimeError(f"middleware {name} did not call call_next"))
            elif error is not None:
                report(
                    name,
                    RuntimeError(
                        f"middleware {name} swallowed the task's {type(error).__name__} "
                        "(it is re-raised: middleware cannot change the outcome)"
                    ),
                )
            elif returned is not result:
                report(
                    name,
                    RuntimeError(
                        f"middleware {name} did not return call_next()'s result "
                        "(the task keeps its own result)"
                    ),
                )
        if not called:
            return await call_next()
        if error is not None:
            raise error
        return result

    return guarded


def build_chain(
    middleware: list[TaskMiddleware], innermost: Callable[[Task], Awaitable[Any]]
) -> Callable[[Task], Awaitable[Any]]:
    """Compose ``middleware`` (first = outermost) around ``innermost`` into one callable."""
    chain = innermost
    for mw in reversed(middleware):
        chain = _link(mw, chain)
    return chain


def _link(
    mw: TaskMiddleware, rest: Callable[[Task], Awaitable[Any]]
) -> Callable[[Task], Awaitable[Any]]:
    def run(task: Task) -> Awaitable[Any]:
        return mw(task, lambda: rest(task))

    return run
