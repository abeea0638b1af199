"""The memory backend's scheduler: FIFO admission under the concurrency limit, execution under
the middleware chain with timeouts, the endings, and history with TTL and size limits.

A mixin of :class:`~observable_tasks.manager.TaskManager` (the facade): its methods are the
per-task hot path, kept as plain methods of the manager (no indirection per task). The Redis
backend executes through the same ``_arm_timeout``/``_invoke``/``_failure`` (see
``backends/redis/worker.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from observable_tasks.current import current_var
from observable_tasks.errors import TaskTimeoutError
from observable_tasks.job import _NO_KWARGS, _Job, _spent
from observable_tasks.middleware import build_chain, outcome_status
from observable_tasks.status import TaskStatus, check_transition
from observable_tasks.task import Task

if TYPE_CHECKING:
    from observable_tasks.config import TaskConfig
    from observable_tasks.feed import EventHub
    from observable_tasks.manager import TaskCallback, _State
    from observable_tasks.middleware import TaskMiddleware
    from observable_tasks.threads import SyncThreads
    from observable_tasks.watchdog import LoopWatchdog

__all__ = ["MemoryScheduler"]

_HAS_TASK_CONTEXT = sys.version_info >= (3, 11)
_get_running_loop = asyncio.events._get_running_loop


class MemoryScheduler:
    """Scheduling state and the internal steps of the memory backend (see the module doc)."""

    # Set up by TaskManager.__init__.
    config: TaskConfig
    _clock: Callable[[], float]
    _loop: asyncio.AbstractEventLoop | None
    _state: _State
    _accepting: bool
    _tasks: dict[str, Task]
    _jobs: dict[str, _Job]
    _pending: collections.deque[_Job]
    _delayed: dict[str, _Job]  # PENDING until a planned time: delay=/eta=, a retry's backoff
    _running: int
    _history: collections.deque[Task]
    _keys: dict[str, str]  # idempotency key -> id of the unfinished task holding it
    _cleanup_handle: asyncio.TimerHandle | None
    _middleware: list[tuple[str, TaskMiddleware]]
    _chain: Callable[[Task], Awaitable[Any]] | None
    _listeners: dict[str, list[tuple[str, Callable[..., Any]]]]
    _threads: SyncThreads
    _watchdog: LoopWatchdog | None
    _hub: EventHub
    # The config's values read for every task (TaskManager.config sets them).
    _max_concurrent: int
    _history_limit: int  # 0: no history kept
    _result_ttl: float

    if TYPE_CHECKING:  # provided by TaskManager

        def cleanup(self) -> int: ...
        def _notify(self, hook: str, task: Task, *args: Any) -> None: ...
        def _run_callback(self, callback: TaskCallback, task: Task) -> None: ...
        def report_internal_error(self, component: str, exc: BaseException) -> None: ...

    # -- scheduling ----------------------------------------------------------------

    def _on_loop_thread(self) -> bool:
        """Bind to the running loop if we may; True when called on the manager's loop."""
        loop = _get_running_loop()  # None outside a loop, where get_running_loop() raises
        if loop is not None and loop is self._loop:
            return True
        bound = self._loop
        if loop is not None and (bound is None or bound.is_closed() or not self._jobs_active()):
            self._bind(loop)
            return True
        if bound is None or bound.is_closed():
            raise RuntimeError(
                "this TaskManager has no running event loop yet: create the first task from "
                "async code (or call 'await manager.start()')"
            )
        return False

    def _running_jobs(self) -> list[_Job]:
        # A snapshot (list() of a dict is atomic): scrapes may call this from other threads.
        running = TaskStatus.RUNNING
        return [job for job in list(self._jobs.values()) if job.task.status is running]

    def _jobs_active(self) -> bool:
        return bool(self._running or self._pending or self._delayed)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._cleanup_handle is not None:
            self._cleanup_handle.cancel()
        self._cleanup_handle = loop.call_later(self.config.cleanup_interval, self._cleanup_tick)
        if self._watchdog is not None:
            self._watchdog.start(loop)

    def _cleanup_tick(self) -> None:
        try:
            self.cleanup()
        except Exception as exc:  # never let the sweeper die
            self.report_internal_error("cleanup", exc)
        if self._state in (_State.IDLE, _State.RUNNING) and self._loop is not None:
            self._cleanup_handle = self._loop.call_later(
                self.config.cleanup_interval, self._cleanup_tick
            )

    def _admit(self, job: _Job) -> None:
        if job.task.status is not TaskStatus.PENDING:
            return  # cancelled before it was admitted
        if not self._accepting:
            self._cancel_pending(job)
        elif self._running < self.config.max_concurrent_tasks:
            self._start(job)
        else:
            self._pending.append(job)

    def _plan(self, job: _Job, wait: float) -> None:
        """Start ``job`` in ``wait`` seconds (on the loop): until then it holds no slot."""
        if job.task.status is not TaskStatus.PENDING:
            return  # cancelled meanwhile (created from another thread)
        assert self._loop is not None
        self._delayed[job.task.id] = job
        job.timer = self._loop.call_later(wait, self._due, job)

    def _due(self, job: _Job) -> None:
        job.timer = None
        task = job.task
        self._delayed.pop(task.id, None)
        if self._listeners["on_due"]:
            self._notify("on_due", task)
        task._next_wall = None
        task._mono_ready = self._clock()  # its wait for a slot starts now
        self._admit(job)

    def _start(self, job: _Job, now: float | None = None) -> None:
        # Only ever called with a PENDING job (see _admit), so PENDING -> RUNNING is valid.
        # ``now``: the clock just read by a caller that starts the task at once (create_task).
        task = job.task
        task.status = TaskStatus.RUNNING
        task._mono_started = self._clock() if now is None else now
        if task.attempts:  # a retry: a fresh attempt state
            job.again()
            task.error = None
        task.attempts += 1
        self._running += 1
        if self._hub.subscribers:
            self._hub.publish("started", task)
        loop = self._loop
        assert loop is not None
        # A fresh context: a task must not inherit whatever the creating request (or the task
        # that freed its slot) had current. Middleware sets up what the task should see.
        ctx = contextvars.Context()
        if _HAS_TASK_CONTEXT:
            job.aio = loop.create_task(self._run(job), context=ctx)  # type: ignore[call-arg]
        else:  # pragma: no cover - Python 3.10
            job.aio = ctx.run(loop.create_task, self._run(job))
        # Nothing may cancel job.aio before its first step (its body, and so _finish, would never
        # run): cancel_task() sets cancel_requested instead, and shutdown() force-finishes.

    async def _run(self, job: _Job) -> None:
        job.entered = True
        task = job.task
        attempt = task.attempts  # after a retry is planned, a later attempt is not ours to end
        current_var.set((self, task))  # type: ignore[arg-type]  # self is a TaskManager
        try:
            if self._middleware:
                chain = self._chain
                if chain is None:
                    chain = self._chain = build_chain(
                        [mw for _, mw in self._middleware], self._execute
                    )
                await chain(task)
            else:
                # No middleware: _execute's work inlined, one coroutine less per task.
                handle = None if task.timeout is None else self._arm_timeout(job)
                try:
                    if job.cancel_requested:  # cancel_task() came before the first step
                        raise asyncio.CancelledError
                    shape = job.shape
                    if shape.is_async and not shape.wants_task_id and not job.kwargs:
                        result = await job.func(*job.args)  # job.start's usual case, inlined
                    else:
                        result = await job.start(task.id, self._threads)
                except BaseException as exc:
                    self._failure(job, exc)
                    raise
                finally:
                    if handle is not None:
                        handle.cancel()
                job.has_outcome = True
                job.result = result
        except (Exception, asyncio.CancelledError) as exc:
            if not job.has_outcome and task.attempts == attempt:
                job.record(error=exc)
        except BaseException as exc:  # KeyboardInterrupt/SystemExit: record, then let it go
            if task.attempts == attempt:
                if not job.has_outcome:
                    job.record(error=exc)
                self._finish(job)
            raise
        if task.attempts == attempt:
            self._finish(job)

    async def _execute(self, task: Task) -> Any:
        """Innermost link of the middleware chain: run the function under its timeout."""
        job = self._jobs[task.id]
        handle = self._arm_timeout(job)
        try:
            result = await self._invoke(job)
        except BaseException as exc:
            error = self._failure(job, exc)
            # The outcome is recorded before the middleware sees it: task.status is final when
            # call_next returns or raises (as on the Redis backend, where this is a write).
            self._finish(job)
            if error is exc:
                raise
            raise error from None
        finally:
            if handle is not None:
                handle.cancel()
        job.record(result)
        self._finish(job)
        return result

    def _arm_timeout(self, job: _Job) -> asyncio.TimerHandle | None:
        timeout = job.task.timeout
        if timeout is None:
            return None
        assert self._loop is not None
        return self._loop.call_later(timeout, self._expire, job)

    def _invoke(self, job: _Job) -> Awaitable[Any]:
        if job.cancel_requested:  # cancel_task() came before the task's first step
            raise asyncio.CancelledError
        return job.start(job.task.id, self._threads)

    def _failure(self, job: _Job, exc: BaseException) -> BaseException:
        """Record what an execution that raised ``exc`` ended with, and return it.

        The cancellation our own timeout caused becomes a :class:`TaskTimeoutError` (and the
        asyncio task is un-cancelled, so that the middleware above sees a plain exception).
        """
        if job.timed_out and isinstance(exc, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and hasattr(current, "uncancel"):
                current.uncancel()
            assert job.task.timeout is not None
            exc = TaskTimeoutError(job.task.timeout)
        job.record(error=exc)
        return exc

    def _expire(self, job: _Job) -> None:
        if job.aio is not None and not job.task.is_done:
            job.timed_out = True
            job.aio.cancel()

    # -- endings -------------------------------------------------------------------

    def _cancel_pending(self, job: _Job) -> None:
        task = job.task
        check_transition(task.status, TaskStatus.CANCELLED)
        if job.timer is not None:  # waiting for its planned time: it never runs (again)
            job.timer.cancel()
            job.timer = None
        if self._delayed.pop(task.id, None) is None:
            with contextlib.suppress(ValueError):  # not admitted yet (created from a thread)
                self._pending.remove(job)
        task.status = TaskStatus.CANCELLED
        task._mono_finished = self._clock()
        self._notify("on_cancelled_pending", task)  # _next_wall still says if it was planned
        task._next_wall = None
        self._settle(job)

    def _finish(self, job: _Job, *, forced: bool = False) -> None:
        task = job.task
        if task.status is not TaskStatus.RUNNING:
            return  # already forced to CANCELLED during shutdown
        # RUNNING may move to any final status: no transition check needed.
        task._mono_finished = self._clock()
        if forced or not job.has_outcome:
            task.status = TaskStatus.CANCELLED
        elif job.error is None:
            task.result = job.result
            task.status = TaskStatus.COMPLETED
        else:
            status = outcome_status(job.error)
            if status is not TaskStatus.CANCELLED:
                policy = job.policy or self.config.retry
                wait = policy.plan(task.attempts, job.error)
                if wait is not None and self._accepting:
                    self._retry_later(job, wait)
                    return
                task.error = job.error
            task.status = status
        self._running -= 1
        self._settle(job)
        if self._pending:
            self._admit_next()

    def _retry_later(self, job: _Job, wait: float) -> None:
        """The attempt failed and its policy plans another in ``wait`` seconds: PENDING until
        then, holding no slot. Middleware sees the status when the attempt's ``call_next``
        raises (telemetry: a retry, not an outcome)."""
        task = job.task
        check_transition(task.status, TaskStatus.PENDING)
        task.status = TaskStatus.PENDING
        task._mono_finished = None  # not finished: no completed_at, no negative duration
        task.error = job.error  # the last attempt's error, readable while it waits
        task._next_wall = time.time() + wait
        self._running -= 1
        self._plan(job, wait)
        if self._hub.subscribers:
            self._hub.publish("retrying", task)
        if self._pending:
            self._admit_next()

    def _admit_next(self) -> None:
        limit = self._max_concurrent
        while self._pending and self._running < limit and self._accepting:
            self._start(self._pending.popleft())

    def _settle(self, job: _Job) -> None:
        """Common ending: wake waiters, run callbacks, file into history (or forget)."""
        task = job.task
        if task.key is not None and self._keys.get(task.key) == task.id:
            del self._keys[task.key]  # the key may be used again
        # Drop references to the function and its arguments as soon as possible.
        job.func, job.args, job.kwargs = _spent, (), _NO_KWARGS
        job.aio = None
        self._jobs.pop(task.id, None)  # only the Task stays in history, not its execution state
        if self._hub.subscribers:
            self._hub.publish("finished", task)
        if job.waiters:
            for waiter in job.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            job.waiters = None
        if job.callbacks:
            for callback in job.callbacks:
                self._run_callback(callback, task)
            job.callbacks = None
        limit = self._history_limit
        if limit == 0:  # no history kept
            self._forget(task)
            return
        history = self._history
        history.append(task)
        while len(history) > limit:
            old = history.popleft()  # _forget(), inlined: once per task with a full history
            if self._tasks.pop(old.id, None) is not None and self._listeners["on_evicted"]:
                self._notify("on_evicted", old)
        # TTL on completion too; checked inline here as this runs for every task.
        if (history[0]._mono_finished or 0.0) <= ((task._mono_finished or 0.0) - self._result_ttl):
            self.cleanup()

    def _forget(self, task: Task) -> None:
        known = self._tasks.pop(task.id, None)
        if known is not None and self._listeners["on_evicted"]:
            self._notify("on_evicted", task)
