"""Creating tasks: ``submit``/``create_task``, their checks, and the hand-over to a backend.

A mixin of :class:`~observable_tasks.manager.TaskManager` (the facade). ``_submit`` is the memory
backend's per-task hot path: checks, the Task and its execution state, the observers, then
admission (inlined for the common case); ``_submit_remote`` hands a checked task to Redis.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from observable_tasks._awaitable import Done
from observable_tasks.errors import TaskManagerClosedError
from observable_tasks.invocation import check_call
from observable_tasks.job import _NO_KWARGS, _Job, check_timeout
from observable_tasks.retry import RetryPolicy, check_key, start_delay
from observable_tasks.task import Task, new_task_id

if TYPE_CHECKING:
    from observable_tasks.backends.redis.backend import RedisBackend
    from observable_tasks.config import TaskConfig
    from observable_tasks.feed import EventHub

__all__ = ["TaskCreation"]

_get_running_loop = asyncio.events._get_running_loop
_Plan = tuple[RetryPolicy | None, float | None, datetime | None, str | None]
"""``retry``, ``delay``, ``eta`` and ``key`` as given to create_task (not checked yet)."""


class TaskCreation:
    """``submit``/``create_task`` and what they check (see the module doc)."""

    # Set up by TaskManager.__init__.
    config: TaskConfig
    _remote: RedisBackend | None
    _accepting: bool
    _loop: asyncio.AbstractEventLoop | None
    _clock: Callable[[], float]
    _tasks: dict[str, Task]
    _jobs: dict[str, _Job]
    _keys: dict[str, str]
    _key_lock: threading.Lock
    _running: int
    _pending: collections.deque[_Job]
    _listeners: dict[str, list[tuple[str, Callable[..., Any]]]]
    _hub: EventHub
    # The config's values read for every task (TaskManager.config sets them).
    _max_concurrent: int
    _default_timeout: float | None
    _default_attempts: int

    if TYPE_CHECKING:  # provided by TaskManager and its other parts

        def _on_loop_thread(self) -> bool: ...
        def _start(self, job: _Job, now: float | None = None) -> None: ...
        def _admit(self, job: _Job) -> None: ...
        def _plan(self, job: _Job, wait: float) -> None: ...
        def _notify(self, hook: str, task: Task, *args: Any) -> None: ...

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Create a task and schedule it; returns at once. Safe to call from any thread.

        ``name`` is the display name (default: the function's name); ``timeout`` overrides
        ``config.default_timeout``; ``retry`` overrides ``config.retry``. ``delay`` (seconds)
        or ``eta`` (a timezone-aware datetime) start it later: PENDING until then, holding no
        slot. With ``key``, while a task created with the same key is unfinished, that task is
        returned instead of a new one. Other arguments go to ``func`` (pass a function's own
        ``name``/``timeout``/``retry``/``delay``/``eta``/``key`` arguments by position).
        Raises ``TypeError`` for a non-callable, a coroutine object or arguments that do not
        fit ``func``, ``ValueError`` for a bad timeout, delay, eta or key, and
        :class:`TaskManagerClosedError` during shutdown. On Redis the record is written in the
        background (a failure is logged); ``await create_task`` to learn of it. ``key`` is
        refused there (``ValueError``): only ``await create_task(..., key=...)`` can return the
        task holding it.
        """
        plan = None
        if retry is not None or delay is not None or eta is not None or key is not None:
            plan = (retry, delay, eta, key)
        if self._remote is not None:
            if key is not None:  # the holder is only known once Redis answered
                raise ValueError(
                    "submit(key=...) cannot return the task holding the key on the Redis "
                    "backend (Redis decides, across processes); use "
                    "'await manager.create_task(..., key=...)'"
                )
            return self._submit_remote(func, args, kwargs, name, timeout, plan).value
        return self._submit(func, args, kwargs, name, timeout, plan)

    def create_task(
        self,
        func: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> Done[Task]:
        """``await manager.create_task(func, *args, name=..., timeout=..., **kwargs)``.

        ``retry``, ``delay``, ``eta`` and ``key`` as in :meth:`submit`. The task is created
        when this is called (errors are raised right here), so the call also works un-awaited
        from a worker thread: ``manager.create_task(f).result()``. On the Redis backend the
        record is written when awaited (the write is already under way if it is not), and
        :class:`~observable_tasks.backends.TaskBackendError` says so at once when Redis cannot
        be reached; with ``key``, the awaited task is the one that holds the key.
        """
        plan = None
        if retry is not None or delay is not None or eta is not None or key is not None:
            plan = (retry, delay, eta, key)
        if self._remote is not None:
            return self._submit_remote(func, args, kwargs, name, timeout, plan)
        return Done(self._submit(func, args, kwargs, name, timeout, plan))

    def _planned(self, plan: _Plan | None, wall: float) -> tuple[RetryPolicy, float, str | None]:
        """The policy, the seconds until the first attempt and the key, checked."""
        if plan is None:
            return self.config.retry, 0.0, None
        retry, delay, eta, key = plan
        if retry is None:
            retry = self.config.retry
        elif not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        wait = 0.0 if delay is None and eta is None else start_delay(delay, eta, wall)
        if key is not None:
            check_key(key)
        return retry, wait, key

    def _submit_remote(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        timeout: float | None,
        plan: _Plan | None = None,
    ) -> Done[Task]:
        assert self._remote is not None
        shape = check_call(func, args, kwargs)
        if not self._accepting:
            raise TaskManagerClosedError(
                "the TaskManager is shutting down (or shut down) and accepts no new tasks"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if timeout is None:
            timeout = self.config.default_timeout
        else:
            check_timeout(timeout)
        fn = shape.name
        wall = time.time()  # a Redis task's times are wall clock, comparable across machines
        policy, wait, key = self._planned(plan, wall)
        task = Task(new_task_id(), name or shape.short_name, fn, timeout, wall, wall)
        task.max_attempts = policy.max_attempts
        task.key = key
        if wait > 0.0:
            task._next_wall = wall + wait
        fields = self._remote.prepare(task, func, args, kwargs, policy)  # refusals raise here
        if self._listeners["on_submit"]:
            self._notify("on_submit", task)  # e.g. the tracer adds its headers to the record
        return self._remote.enqueue(task, fields, self._created)

    def _created(self, task: Task) -> None:
        # The backend accepted the task: only now is it counted and logged as created.
        if self._listeners["on_created"]:
            self._notify("on_created", task)

    def _register(self, task: Task, job: _Job, key: str | None) -> Task | None:
        """Store a planned task; with a key, under the key lock, unless an unfinished task
        holds the key already: that one is returned (and nothing is stored)."""
        if key is None:
            self._tasks[task.id] = task
            self._jobs[task.id] = job
            return None
        with self._key_lock:
            holder = self._jobs.get(self._keys.get(key, ""))
            if holder is not None:
                return holder.task
            task.key = key
            self._keys[key] = task.id
            self._tasks[task.id] = task
            self._jobs[task.id] = job
        return None

    def _submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        timeout: float | None,
        plan: _Plan | None = None,
    ) -> Task:
        shape = check_call(func, args, kwargs)  # first: it also closes a coroutine object
        if not self._accepting:
            raise TaskManagerClosedError(
                "the TaskManager is shutting down (or shut down) and accepts no new tasks"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if timeout is None:
            timeout = self._default_timeout
        elif (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            check_timeout(timeout)
        wall = time.time()
        wait = 0.0
        if plan is None:  # the usual case: the config's policy, read again only on a failure
            policy = None
            attempts = self._default_attempts
        else:
            policy, wait, key = self._planned(plan, wall)
            attempts = policy.max_attempts
        loop = self._loop
        in_loop = (loop is not None and _get_running_loop() is loop) or self._on_loop_thread()
        fn = shape.name
        task = Task(
            new_task_id(), name or shape.short_name, fn, timeout, wall, self._clock(), attempts
        )
        # No keywords (the usual case): the shared empty dict, so the call's own is freed now.
        job = _Job(task, func, args, kwargs or _NO_KWARGS, shape, policy)
        task_id = task.id
        if plan is None:
            # Single dict stores are atomic, so threads may create tasks without a lock.
            self._tasks[task_id] = task
            self._jobs[task_id] = job
        else:
            if wait > 0.0:
                task._next_wall = wall + wait
            holder = self._register(task, job, key)
            if holder is not None:
                return holder  # unfinished, with the same key: the producer sent it already
        if self._listeners["on_submit"]:
            self._notify("on_submit", task)
        if self._listeners["on_created"]:
            self._notify("on_created", task)
        if self._hub.subscribers:
            self._hub.publish("created", task)
        if wait > 0.0:
            if in_loop:
                self._plan(job, wait)
            else:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._plan, job, wait)
            return task
        if in_loop:
            if self._running < self._max_concurrent and self._accepting:
                # The common case of _admit, inlined (the hot path); it starts as it is created.
                self._start(job, task._mono_created)
            else:
                self._admit(job)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._admit, job)
        return task
