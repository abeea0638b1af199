"""One middleware for all telemetry: every part's ``begin``, the task, every part's ``end``.

Tracing, metrics and logs are *parts*: two plain synchronous hooks around an execution instead of
three nested async middlewares. Nesting cost a guarded coroutine per part per task for nothing the
parts need; the pipeline calls the hooks in order (tracing first, so its span is current for the
others; ends in reverse, so logs still see the span) and keeps each part failsafe on its own: a
part that raises is reported under its name and skipped, the task and the other parts go on.

A part still works alone as an ordinary middleware (``manager.add_middleware(TaskTracer())``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from observable_tasks.middleware import OBSERVER_HOOKS, CallNext, ErrorReporter, TaskObserver
from observable_tasks.status import TaskStatus

if TYPE_CHECKING:
    from observable_tasks.task import Task

__all__ = ["AttemptAbandoned", "TelemetryPart", "TelemetryPipeline"]

_SKIPPED = object()  # the state of a part whose begin() raised: its end() is not called
_RUNNING = TaskStatus.RUNNING
_COMPLETED = TaskStatus.COMPLETED
_CANCELLED = TaskStatus.CANCELLED
_FORCED = asyncio.CancelledError("cancelled by shutdown after ignoring its cancellation")


class AttemptAbandoned(Exception):
    """What the parts' ``end`` gets for an execution that ended without an outcome.

    On the Redis backend: an attempt handed back to the queue at shutdown, or one whose lease
    another worker took over. The task is not finished: nothing is counted as its outcome.
    """


_ABANDONED = AttemptAbandoned("the attempt ended without an outcome (released or taken over)")


def _outcome(task: Task, raised: BaseException | None) -> BaseException | None:
    """What the parts are told the execution ended with, from the task's *final* status.

    The manager records the outcome before the middleware sees it, so the status is the truth:
    a task shutdown force-cancelled after it ignored its cancellation is CANCELLED even if it
    returned later; a result that could not be stored makes a FAILED task out of a return.
    """
    status = task.status
    if status is _COMPLETED:
        return None
    if status is _RUNNING:
        return _ABANDONED
    if status is _CANCELLED:
        return raised if isinstance(raised, asyncio.CancelledError) else _FORCED
    return task.error if task.error is not None else raised


class TelemetryPart(TaskObserver):
    """A kind of telemetry: observer hooks plus ``begin``/``end`` around each execution."""

    #: Component name in error reports and ``telemetry_errors_total{component}``.
    name = "telemetry"

    def begin(self, task: Task) -> Any:
        """Called in the task's own context before the function runs; returns a state."""

    def end(self, task: Task, state: Any, error: BaseException | None, elapsed: float) -> None:
        """Called after the function, with what ``begin`` returned, what the function raised
        (``None`` when it returned) and the seconds it ran."""

    async def __call__(self, task: Task, call_next: CallNext) -> Any:
        """The part alone, as a middleware (the pipeline does not use this)."""
        state = self.begin(task)
        start = time.perf_counter()
        try:
            result = await call_next()
        except BaseException as exc:
            self.end(task, state, _outcome(task, exc), time.perf_counter() - start)
            raise
        self.end(task, state, _outcome(task, None), time.perf_counter() - start)
        return result


class TelemetryPipeline(TaskObserver):
    """The middleware and observer :func:`~observable_tasks.telemetry.instrument` installs.

    It keeps by itself every guarantee :func:`~observable_tasks.middleware.guard` enforces
    (``call_next`` called exactly once, its result returned and its exception re-raised
    unchanged, failures of its own reported, never raised), so it is installed unguarded.
    """

    def __init__(self, parts: Sequence[TelemetryPart], report: ErrorReporter) -> None:
        self.parts = tuple(parts)
        self._report = report
        self._reversed = self.parts[::-1]
        # Observer hooks each part really defines (the inherited no-ops are not called per task).
        self._hooks: dict[str, tuple[tuple[str, Callable[..., None]], ...]] = {
            hook: tuple(
                (f"{type(p).__name__}.{hook}", getattr(p, hook))
                for p in self.parts
                if p.observes(hook)
            )
            for hook in OBSERVER_HOOKS
        }

    def observes(self, hook: str) -> bool:
        return bool(self._hooks[hook])  # the manager skips hooks no part wants

    async def __call__(self, task: Task, call_next: CallNext) -> Any:
        states: list[Any] = []
        for part in self.parts:
            try:
                states.append(part.begin(task))
            except Exception as exc:
                self._report(part.name, exc)
                states.append(_SKIPPED)
        error: BaseException | None = None
        start = time.perf_counter()
        try:
            return await call_next()
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - start
            error = _outcome(task, error)
            i = len(states)
            for part in self._reversed:
                i -= 1
                if states[i] is not _SKIPPED:
                    try:
                        part.end(task, states[i], error, elapsed)
                    except Exception as exc:
                        self._report(part.name, exc)

    # -- observer hooks, forwarded (each failure reported as "<Part>.<hook>") -----------------

    def _forward(self, hook: str, *args: Any) -> None:
        for component, method in self._hooks[hook]:
            try:
                method(*args)
            except Exception as exc:
                self._report(component, exc)

    def on_submit(self, task: Task) -> None:
        self._forward("on_submit", task)

    def on_created(self, task: Task) -> None:
        self._forward("on_created", task)

    def on_cancelled_pending(self, task: Task) -> None:
        self._forward("on_cancelled_pending", task)

    def on_due(self, task: Task) -> None:
        self._forward("on_due", task)

    def on_progress(self, task: Task, progress: float) -> None:
        self._forward("on_progress", task, progress)

    def on_evicted(self, task: Task) -> None:
        self._forward("on_evicted", task)

    def on_loop_lag(self, lag: float) -> None:
        self._forward("on_loop_lag", lag)

    def on_loop_stall(self, task: Task | None, seconds: float) -> None:
        self._forward("on_loop_stall", task, seconds)

    def on_threads_abandoned(self, change: int) -> None:
        self._forward("on_threads_abandoned", change)

    def on_internal_error(self, component: str, error: BaseException) -> None:
        for _, method in self._hooks["on_internal_error"]:
            # Reporting must not recurse: a failure here is only in the manager's log line.
            with contextlib.suppress(Exception):
                method(component, error)
