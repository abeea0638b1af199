"""The manager's own threads for sync task functions: bounded, daemon, and able to let go.

A Python thread cannot be stopped. When a sync task times out or is cancelled, its task ends at
once but the thread keeps running the function until it returns, which may be never. On the loop's
default executor (``asyncio.to_thread``) such threads fill the pool: sync tasks and even DNS
lookups (``getaddrinfo``) then wait forever, and the process cannot exit, because
``concurrent.futures`` joins its (non-daemon) workers at interpreter exit.

:class:`SyncThreads` is the one idea that fixes this: a thread whose caller gave up is
*abandoned*. It stops counting against the pool's ``size``, so new sync work still gets a thread,
and it is a daemon, so it never keeps the process alive. A hard cap (``max_threads``) bounds the
total, so a stream of hanging tasks cannot grow threads without bound: past it new work waits
for a thread to come back (logged once). An abandoned thread whose function finally returns
rejoins the pool; threads idle for ``idle_timeout`` seconds exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["SyncThreads"]

logger = logging.getLogger("observable_tasks")

_QUEUED, _RUNNING, _ABANDONED, _DROPPED, _DONE = range(5)


class _Work:
    """One call to run in a worker thread, and where its outcome goes."""

    __slots__ = ("args", "ctx", "func", "future", "kwargs", "loop", "state")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.loop = loop
        self.future = future
        self.func = func
        self.args = args
        self.kwargs = kwargs
        # As asyncio.to_thread does: the task's context (span, log bindings, current task)
        # follows into the thread, so create_task/update_task_progress work there.
        self.ctx = contextvars.copy_context()
        self.state = _QUEUED


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile (the thread was abandoned)
        return
    if isinstance(error, StopIteration):  # a Future refuses it (it would end a generator)
        error = RuntimeError(f"the task function raised StopIteration: {error!r}")
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SyncThreads:
    """A small pool of daemon threads: at most ``size`` run work that someone still awaits.

    All counters are guarded by one lock; threads start on demand, so a manager without sync
    tasks has none.
    """

    def __init__(
        self,
        size: int,
        *,
        max_threads: int | None = None,
        idle_timeout: float = 60.0,
        name: str = "observable-tasks-sync",
        on_abandoned: Callable[[int], None] | None = None,
    ) -> None:
        self.size = size
        # Told +1 when a thread is abandoned, -1 when its function returns (lock not held).
        # A bound method is held weakly: idle workers must not keep its owner (a manager) alive.
        self._on_abandoned: Callable[[], Callable[[int], None] | None] | None = None
        if inspect.ismethod(on_abandoned):
            self._on_abandoned = weakref.WeakMethod(on_abandoned)
        elif on_abandoned is not None:
            self._on_abandoned = lambda: on_abandoned
        self.max_threads = max(size, max_threads if max_threads is not None else 2 * size)
        self.idle_timeout = idle_timeout
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[_Work] = collections.deque()
        self._threads = 0  # alive workers
        self._idle = 0  # workers waiting for work
        self._busy = 0  # workers running work someone awaits (counts against size)
        self._abandoned = 0  # workers running work nobody awaits any more
        self._capped = False  # the hard-cap warning was logged

    @property
    def abandoned(self) -> int:
        """Threads still running a function whose task timed out or was cancelled."""
        return self._abandoned

    @property
    def threads(self) -> int:
        """Worker threads alive now (idle, busy and abandoned)."""
        return self._threads

    async def run(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``func(*args, **kwargs)`` in a worker thread; await its result.

        Cancelling the caller abandons the thread (or drops the work if it has not started).
        """
        loop = asyncio.get_running_loop()
        work = _Work(loop, loop.create_future(), func, args, kwargs)
        with self._lock:
            self._queue.append(work)
            self._dispatch()
        try:
            result = await work.future
        except asyncio.CancelledError:
            self._give_up(work)
            raise
        if inspect.isawaitable(result):
            result = await result
        return result

    def _give_up(self, work: _Work) -> None:
        with self._lock:
            if work.state == _QUEUED:
                work.state = _DROPPED  # never started: no thread is spent on it
                self._queue.remove(work)
                return
            if work.state != _RUNNING:
                return
            work.state = _ABANDONED
            self._busy -= 1
            self._abandoned += 1
            self._dispatch()  # its slot is free: queued work may need a new thread
        self._tell(1)

    def _tell(self, change: int) -> None:
        hook = self._on_abandoned() if self._on_abandoned is not None else None
        if hook is not None:
            # Never let it replace the caller's CancelledError, nor kill a worker.
            with contextlib.suppress(Exception):
                hook(change)

    def _dispatch(self) -> None:
        """Wake or start enough workers for the work that may run now (lock held)."""
        runnable = min(len(self._queue), self.size - self._busy)
        if runnable <= 0:
            return
        if self._idle:
            self._wake.notify(min(runnable, self._idle))
        missing = runnable - self._idle
        while missing > 0 and self._threads < self.max_threads:
            self._threads += 1
            self._idle += 1  # counted idle until it takes work (so it is not started twice)
            try:
                threading.Thread(target=self._worker, name=self.name, daemon=True).start()
            except RuntimeError:  # "can't start new thread": the work waits for a running one
                self._threads -= 1
                self._idle -= 1
                logger.exception("observable_tasks: could not start a sync task thread")
                return
            missing -= 1
        if missing > 0 and not self._capped:
            self._capped = True
            logger.warning(
                "observable_tasks: %d sync task threads are still running functions whose tasks "
                "timed out or were cancelled; the cap of %d threads is reached, so new sync "
                "tasks wait for one of them to return",
                self._abandoned,
                self.max_threads,
            )

    def _next(self) -> _Work | None:
        """The next work to run, or None when this worker should exit (lock held)."""
        while True:
            if self._queue and self._busy < self.size:
                work = self._queue.popleft()
                work.state = _RUNNING
                self._busy += 1
                self._idle -= 1
                return work
            # More workers than the pool keeps (abandoned ones came back): this one goes.
            if self._threads - self._abandoned > self.size or not self._wake.wait(
                self.idle_timeout
            ):
                if self._queue and self._busy < self.size:
                    continue  # work arrived just as the wait timed out
                self._idle -= 1
                self._threads -= 1
                return None

    def _worker(self) -> None:
        while True:
            with self._lock:
                work = self._next()
            if work is None:
                return
            result: Any = None
            error: BaseException | None = None
            try:
                result = work.ctx.run(work.func, *work.args, **work.kwargs)
            except BaseException as exc:  # delivered to the awaiting task, as to_thread does
                error = exc
            with self._lock:
                abandoned = work.state == _ABANDONED
                work.state = _DONE  # from now on, a cancelled caller abandons nothing
                if abandoned:
                    self._abandoned -= 1
                    if not self._abandoned:
                        self._capped = False  # recovered: a later episode is logged again
                else:
                    self._busy -= 1
                self._idle += 1  # and takes queued work in _next(), if there is any
            if abandoned:
                self._tell(-1)
            else:
                # A closed loop raises RuntimeError: nobody is left to tell.
                with contextlib.suppress(RuntimeError):
                    work.loop.call_soon_threadsafe(_deliver, work.future, result, error)
            del work, result, error  # no reference cycles through tracebacks while idle
