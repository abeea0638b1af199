"""TaskManager: creates, limits, times out, cancels, remembers and forgets background tasks.

It knows nothing of telemetry: tracing, metrics and logs attach as middleware and observers
(:mod:`observable_tasks.middleware`), exactly as a user's own would.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from observable_tasks.config import TaskConfig
from observable_tasks.creating import TaskCreation
from observable_tasks.current import remember_manager
from observable_tasks.errors import TaskManagerClosedError, TaskNotFoundError
from observable_tasks.feed import EventHub
from observable_tasks.job import _ended_cancelled, _Job, check_progress, check_timeout
from observable_tasks.middleware import (
    OBSERVER_HOOKS,
    TaskMiddleware,
    TaskObserver,
    guard,
)
from observable_tasks.notify import HookDispatch
from observable_tasks.query import TaskQueries
from observable_tasks.scheduler import MemoryScheduler
from observable_tasks.status import TaskStatus
from observable_tasks.task import Task
from observable_tasks.threads import SyncThreads
from observable_tasks.watchdog import LoopWatchdog

if TYPE_CHECKING:
    from observable_tasks.backends.redis.backend import RedisBackend

__all__ = ["TaskManager", "TaskCallback", "check_progress", "check_timeout"]

logger = logging.getLogger("observable_tasks")

TaskCallback = Callable[[Task], Awaitable[None] | None]
"""Called with the task once it reaches a final status (sync or async)."""


class _State(enum.Enum):
    IDLE = "idle"  # usable, started lazily by the first task
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class TaskManager(TaskCreation, TaskQueries, HookDispatch, MemoryScheduler):
    """Runs background tasks with a concurrency limit, timeouts, cancellation and history.

    ``TaskManager(config)`` works standalone (no app needed); ``setup_tasks(app)`` makes one and
    ties it to the app's lifespan. Methods are meant to be called on the event loop the manager
    runs on, except :meth:`submit`, :meth:`create_task` and :meth:`update_progress`, which are
    also safe from other threads (e.g. a sync task running in a worker thread).
    """

    # Slots for what every task reads: an instance dict past 30 names loses CPython's fast
    # attribute access for all of them (the parts' classes still give instances a __dict__).
    __slots__ = (
        "_accepting", "_chain", "_clock", "_config", "_default_attempts", "_default_timeout",
        "_delayed", "_history", "_history_limit", "_hub", "_jobs", "_keys", "_listeners",
        "_loop", "_max_concurrent", "_middleware", "_pending", "_remote", "_result_ttl",
        "_running", "_tasks", "_threads",
    )  # fmt: skip

    def __init__(
        self,
        app: Any = None,
        config: TaskConfig | None = None,
        *,
        middleware: Iterable[TaskMiddleware] = (),
        observers: Iterable[TaskObserver] = (),
        clock: Callable[[], float] = time.monotonic,
        backend: Any = None,
    ) -> None:
        # TaskManager(config), TaskManager(config=...), nexios-contrib's TaskManager(app, config).
        if isinstance(app, TaskConfig):
            if config is not None:
                raise TypeError("TaskManager() got two configs: pass TaskManager(app, config)")
            app, config = None, app
        if config is not None and not isinstance(config, TaskConfig):
            raise TypeError(f"config must be a TaskConfig, got {type(config).__name__}")
        if app is not None and not callable(app):  # an app is an ASGI callable
            raise TypeError(
                "TaskManager(app, config) takes the app (or a TaskConfig first), "
                f"got {type(app).__name__}: config must be a TaskConfig"
            )
        self.app = app
        """The app given as ``TaskManager(app, config)`` (nexios-contrib's form), else ``None``.

        With an app, :meth:`start` registers :meth:`shutdown` as its shutdown hook, as
        nexios-contrib does; ``setup_tasks(app)`` ties the manager to the app by itself.
        """
        self._shutdown_hooked = False
        self.config = config if config is not None else TaskConfig()  # see the property
        self._hub = EventHub()  # task events for live views (memory backend; Redis has its own)
        # Where tasks live when not in this process (None: here, the memory backend). Imported
        # lazily: the memory backend needs no Redis client.
        self._remote: RedisBackend | None = None
        if backend is not None and backend != "memory":
            from observable_tasks.backends import resolve_backend

            self._remote = resolve_backend(backend)
            if self._remote is not None:
                self._remote.bind(self)
        self._clock = clock
        self._middleware: list[tuple[str, TaskMiddleware]] = []
        self._chain: Callable[[Task], Awaitable[Any]] | None = None
        # Per hook, (component name, bound method) of the observers that want it.
        self._listeners: dict[str, list[tuple[str, Callable[..., Any]]]] = {
            hook: [] for hook in OBSERVER_HOOKS
        }
        self._tasks: dict[str, Task] = {}  # every known task, in creation order
        self._jobs: dict[str, _Job] = {}  # execution state of tasks not finished yet
        self._pending: collections.deque[_Job] = collections.deque()
        self._delayed: dict[str, _Job] = {}  # PENDING until a planned time (delay, retry)
        self._keys: dict[str, str] = {}  # idempotency key -> its unfinished task's id
        self._key_lock = threading.Lock()  # creates with a key may come from several threads
        self._running = 0  # how many jobs are RUNNING (they are in _jobs, like pending ones)
        self._history: collections.deque[Task] = collections.deque()  # finished, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _State.IDLE
        self._accepting = True  # mirrors _state, read on every create (see _set_state)
        self._cleanup_handle: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # Sync functions' threads (started on demand) and the loop watchdog (started by _bind).
        self._threads = SyncThreads(self.config.max_sync_threads, on_abandoned=self._abandoned)
        stall = self.config.loop_stall_threshold
        self._watchdog = LoopWatchdog(self, stall) if stall is not None else None
        self.internal_errors: collections.Counter[str] = collections.Counter()
        """Failures inside middleware, observers and callbacks, by component name."""
        for mw in middleware:
            self.add_middleware(mw)
        for obs in observers:
            self.add_observer(obs)
        remember_manager(self, as_default=False)

    @property
    def config(self) -> TaskConfig:
        """The manager's :class:`TaskConfig` (frozen; assign a new one to change it)."""
        return self._config

    @config.setter
    def config(self, config: TaskConfig) -> None:
        self._config = config
        # Read for every task: plain attributes, not two lookups each time.
        self._max_concurrent = config.max_concurrent_tasks
        self._default_timeout = config.default_timeout
        self._default_attempts = config.retry.max_attempts
        self._history_limit = config.max_task_history if config.enable_task_history else 0
        self._result_ttl = config.task_result_ttl

    # -- extension points ---------------------------------------------------------------------

    def add_middleware(
        self, middleware: TaskMiddleware, *, name: str | None = None, guarded: bool = True
    ) -> None:
        """Add a task middleware; the first added is the outermost.

        Each middleware is wrapped by :func:`~observable_tasks.middleware.guard`, so that it
        cannot change a task's outcome. ``guarded=False`` skips that wrapper (a coroutine and
        a closure per task): only for middleware that keeps every guarantee of ``guard`` by
        itself, as the built-in :class:`~observable_tasks.telemetry.TelemetryPipeline` does.
        """
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {middleware!r}")
        label = name or getattr(middleware, "__name__", None) or type(middleware).__name__
        if guarded:
            middleware = guard(middleware, label, self.report_internal_error)
        self._middleware.append((label, middleware))
        self._chain = None

    def add_observer(self, observer: TaskObserver) -> None:
        """Add a lifecycle observer (created, cancelled while pending, progress, evicted)."""
        for hook in OBSERVER_HOOKS:
            method = getattr(observer, hook, None)  # observers need not define every hook
            if method is None:
                continue
            if isinstance(observer, TaskObserver) and not observer.observes(hook):
                continue
            self._listeners[hook].append((f"{type(observer).__name__}.{hook}", method))

    @property
    def middleware_names(self) -> list[str]:
        """Names of the installed middleware, outermost first."""
        return [name for name, _ in self._middleware]

    # Creating tasks: creating.py; console queries: query.py; failsafe hooks: notify.py; the
    # memory backend's scheduling: scheduler.py.

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_accepting(self) -> bool:
        """False while shutting down and after shutdown (until :meth:`start`)."""
        return self._accepting

    def _set_state(self, state: _State) -> None:
        self._state = state
        self._accepting = state in (_State.IDLE, _State.RUNNING)

    async def start(self) -> None:
        """Bind to the running event loop and start the history sweeper (also after a shutdown)."""
        loop = asyncio.get_running_loop()
        if self._state is _State.RUNNING and self._loop is loop:
            return
        if self._state is _State.CLOSING:
            raise TaskManagerClosedError("cannot start a TaskManager while it is shutting down")
        self._bind(loop)
        self._set_state(_State.RUNNING)
        if self._remote is not None:
            try:
                await self._remote.start()
            except BaseException:
                self._set_state(_State.CLOSED)
                raise
        if self.app is not None and not self._shutdown_hooked:
            on_shutdown = getattr(self.app, "on_shutdown", None)
            if callable(on_shutdown):
                on_shutdown(self.shutdown)
                self._shutdown_hooked = True

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting tasks, cancel pending ones, give running ones ``timeout`` seconds
        (default ``config.shutdown_timeout``) to finish, then cancel the rest.

        Every task ends in a final status. The manager can be started again afterwards.
        """
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._set_state(_State.CLOSING)
        try:
            if self._remote is not None:
                # The queue's pending tasks are the cluster's: they stay. Ours finish or go back.
                grace = self.config.shutdown_timeout if timeout is None else timeout
                await self._remote.shutdown(grace)
            if self._cleanup_handle is not None:
                self._cleanup_handle.cancel()
                self._cleanup_handle = None
            for job in [*self._pending, *self._delayed.values()]:
                self._cancel_pending(job)
            grace = self.config.shutdown_timeout if timeout is None else timeout
            running = {job.aio: job for job in self._running_jobs() if job.aio is not None}
            if running:
                _, late = await asyncio.wait(running, timeout=grace)
                for aio in late:
                    job = running[aio]
                    if job.entered:
                        aio.cancel()
                    else:  # see cancel_task: never cancel a task before its first step
                        job.cancel_requested = True
                if late:
                    # Cancelled tasks normally unwind at once; one that ignores cancellation is
                    # marked CANCELLED anyway so that shutdown always ends.
                    await asyncio.wait(late, timeout=max(1.0, grace))
                    for job in self._running_jobs():
                        if job.aio in late or not job.entered:
                            self._finish(job, forced=True)
            if self._background:
                await asyncio.wait(list(self._background), timeout=max(1.0, grace))
        finally:
            self._set_state(_State.CLOSED)
            if self._watchdog is not None:
                self._watchdog.stop()

    # -- reading ------------------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Every known task by id (read-only; nexios-contrib exposes ``manager.tasks`` too).

        On Redis: a snapshot read from Redis (blocking briefly), as :meth:`list_tasks`.
        """
        if self._remote is not None:
            return types.MappingProxyType({t.id: t for t in self._remote.list_tasks(None)})
        return types.MappingProxyType(self._tasks)

    def get_task(self, task_id: str) -> Task | None:
        """The task with this id, or ``None`` if unknown or evicted.

        On the Redis backend this is a short blocking read (it is called without ``await`` on
        the page); prefer :meth:`aget_task` in async code under load.
        """
        if self._remote is not None:
            return self._remote.get_task(task_id)
        return self._tasks.get(task_id)

    async def aget_task(self, task_id: str) -> Task | None:
        """:meth:`get_task` that never blocks the event loop (any backend)."""
        if self._remote is not None:
            return await self._remote.aget_task(task_id)
        return self._tasks.get(task_id)

    async def alist_tasks(self, status: TaskStatus | str | None = None) -> list[Task]:
        """:meth:`list_tasks` that never blocks the event loop (any backend)."""
        if self._remote is not None:
            return await self._remote.alist_tasks(None if status is None else TaskStatus(status))
        return self.list_tasks(status)

    def list_tasks(self, status: TaskStatus | str | None = None) -> list[Task]:
        """All known tasks in creation order, optionally only those with ``status``.

        On the Redis backend: a short blocking read (see :meth:`alist_tasks`).
        """
        if self._remote is not None:
            return self._remote.list_tasks(None if status is None else TaskStatus(status))
        tasks = list(self._tasks.values())
        if status is None:
            return tasks
        wanted = TaskStatus(status)
        return [task for task in tasks if task.status is wanted]

    @property
    def running_count(self) -> int:
        """Tasks executing now (in this process)."""
        if self._remote is not None:
            return len(self.running_tasks())
        return self._running

    @property
    def pending_count(self) -> int:
        """Tasks waiting in this process: for a slot, for their start time or to retry (on
        Redis they wait in the queue: see the ``queue_pending`` gauge)."""
        return len(self._pending) + len(self._delayed)

    @property
    def abandoned_threads(self) -> int:
        """Threads still running sync functions whose tasks timed out or were cancelled."""
        return self._threads.abandoned

    def running_tasks(self) -> list[Task]:
        """Tasks executing now (in this process)."""
        if self._remote is not None:
            worker = self._remote.worker
            return worker.running() if worker is not None else []
        return [job.task for job in self._running_jobs()]

    def pending_tasks(self) -> list[Task]:
        """Tasks waiting for a slot (first in line first), then those waiting for their start
        time or their next attempt (soonest first)."""
        planned = sorted(
            (job.task for job in list(self._delayed.values())),
            key=lambda task: task._next_wall or 0.0,
        )
        return [job.task for job in list(self._pending)] + planned

    # -- acting on tasks ----------------------------------------------------------------------

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task has a final status and return it.

        Does not raise because the task failed (read ``task.status``/``task.error``). Raises
        :class:`TaskNotFoundError` for an unknown id and ``TimeoutError`` if ``timeout`` seconds
        pass first (the task itself is not affected).
        """
        if timeout is not None:
            check_timeout(timeout, "wait_for_task() timeout")
        if self._remote is not None:
            return await self._remote.wait(task_id, timeout)
        job = self._jobs.get(task_id)
        if job is None:  # finished (or unknown): inlined _finished(), the common case when
            task = self._tasks.get(task_id)  # waiting for a batch one task after another
            if task is None:
                raise TaskNotFoundError(task_id)
            return task
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if job.waiters is None:
            job.waiters = []
        job.waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"task {task_id} did not finish within {timeout:g}s (it keeps running)"
            ) from None
        finally:
            if job.waiters is not None and waiter in job.waiters:
                job.waiters.remove(waiter)
        return job.task

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a pending or running task; True if it ended CANCELLED.

        A pending task is cancelled at once. A running one receives ``CancelledError`` and this
        waits until it has unwound. Finished or unknown tasks: False. On Redis this works from
        any process: the process running the task cancels it.
        """
        if self._remote is not None:
            return await self._remote.cancel(task_id)
        job = self._jobs.get(task_id)
        if job is None:
            return False
        if job.task.status is TaskStatus.PENDING:
            self._cancel_pending(job)
            return True
        aio = job.aio
        if job.task.status is not TaskStatus.RUNNING or aio is None:
            return False
        if not job.entered:
            # Not stepped into yet: cancelling the asyncio task now would skip the middleware
            # (no span, no metrics, no log). Let it enter; _execute sees the request instead.
            job.cancel_requested = True
        else:
            aio.cancel()
        if asyncio.current_task() is aio:
            return True  # a task cancelling itself: it unwinds at its next await
        await asyncio.wait({aio})
        return _ended_cancelled(job.task)

    def update_progress(self, task_id: str, progress: float) -> None:
        """Set a task's progress (0-100). Safe from any thread.

        ``ValueError`` for NaN or a value outside 0-100; :class:`TaskNotFoundError` for an
        unknown id. Updates to a task that already finished are ignored.
        """
        check_progress(progress)
        if self._remote is not None:
            # Only the process running a task reports its progress; elsewhere it is ignored.
            if not self._remote.progress(task_id, float(progress)) and (
                self._remote.get_task(task_id) is None
            ):
                raise TaskNotFoundError(task_id)
            return
        job = self._jobs.get(task_id)
        if job is None or job.task.is_done:
            self._finished(task_id)  # unknown ids raise; late updates to finished tasks are no-ops
            return
        job.task.progress = float(progress)
        self._notify("on_progress", job.task, float(progress))
        if self._hub.subscribers:
            self._hub.publish("progress", job.task)

    def add_callback(self, task: Task | str, callback: TaskCallback) -> None:
        """Call ``callback(task)`` once the task finishes (at once if it already has).

        Async callbacks run as background tasks. A callback that raises is logged and counted,
        and changes nothing about the task.
        """
        task_id = task.id if isinstance(task, Task) else task
        if self._remote is not None:
            if not callable(callback):
                raise TypeError(f"callback must be callable, got {callback!r}")
            waiting = asyncio.ensure_future(self._call_when_done(task_id, callback))
            self._background.add(waiting)
            waiting.add_done_callback(self._callback_done)
            return
        job = self._jobs.get(task_id)
        found = job.task if job is not None else self._finished(task_id)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if job is None or found.is_done:
            self._run_callback(callback, found)
        else:
            if job.callbacks is None:
                job.callbacks = []
            job.callbacks.append(callback)

    async def _call_when_done(self, task_id: str, callback: TaskCallback) -> None:
        finished = await self.wait_for_task(task_id)
        self._run_callback(callback, finished)

    def remove_callback(self, task: Task | str, callback: TaskCallback) -> bool:
        """Remove a callback added with :meth:`add_callback`; False if it was not there."""
        job = self._jobs.get(task.id if isinstance(task, Task) else task)
        if job is None or job.callbacks is None or callback not in job.callbacks:
            return False
        job.callbacks.remove(callback)
        return True

    def cleanup(self) -> int:
        """Evict finished tasks older than ``task_result_ttl`` now; returns how many.

        On Redis, records expire by themselves (their TTL); this schedules the sweep of their
        index entries and returns 0.
        """
        if self._remote is not None:
            self._remote.schedule_sweep()
            return 0
        cutoff = self._clock() - self.config.task_result_ttl
        history = self._history
        evicted = 0
        while history and (history[0]._mono_finished or 0.0) <= cutoff:
            self._forget(history.popleft())
            evicted += 1
        return evicted

    # -- internals ----------------------------------------------------------------------------

    def _finished(self, task_id: str) -> Task:
        """A known task that has no execution state left (it finished); else NotFound."""
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    @property
    def backend(self) -> RedisBackend | None:
        """The Redis backend in use, or ``None`` for the memory backend (the default)."""
        return self._remote

    def __repr__(self) -> str:
        return (
            f"<TaskManager {self._state.value} running={self._running} "
            f"pending={len(self._pending)} known={len(self._tasks)}>"
        )
