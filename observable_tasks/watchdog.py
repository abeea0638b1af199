"""The loop watchdog: how late the event loop runs, and which task blocked it.

A task that blocks the loop (``time.sleep`` in an ``async def``) delays everything else: innocent
tasks time out while the blocker completes. Two small pieces make that visible:

- a *heartbeat* on the loop (``call_later`` every ``interval``) measures how late it runs
  (lag = actual - scheduled) and hands each measurement to the owner, on the loop;
- a *watcher* daemon thread wakes every ``interval`` and, when the pending heartbeat is more
  than ``threshold`` seconds overdue, reads which asyncio task the loop is running right now
  (``asyncio.current_task(loop)`` from another thread is a plain lookup) and reports it once
  per stall, while the loop is still blocked: a loop that never comes back is reported too.

Cheap when idle (two wake-ups per ``interval``), and never keeps a process alive (daemon).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from observable_tasks.task import Task

__all__ = ["LoopWatchdog", "log_stall"]

logger = logging.getLogger("observable_tasks")


class _Owner(Protocol):
    def _loop_lag(self, lag: float) -> None: ...

    def _loop_stalled(self, running: asyncio.Task[object] | None, seconds: float) -> None: ...


class LoopWatchdog:
    """Heartbeat plus watcher thread for one loop at a time; holds its owner weakly."""

    def __init__(self, owner: _Owner, threshold: float, interval: float | None = None) -> None:
        self.threshold = threshold
        # Half the threshold (a stall is seen within 1.5 thresholds), 10-250 ms: cheap when idle.
        self.interval = interval if interval is not None else max(0.01, min(0.25, threshold / 2))
        self._owner = weakref.ref(owner)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None  # monotonic time the pending heartbeat is due
        self._reported: float | None = None  # the ``_due`` of the stall last reported
        self._paused = False  # the watcher saw the loop not running: the next lag is no lag
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        """The watcher thread (of the loop watched last)."""

    @property
    def active(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` (call on its thread); a previous loop is no longer watched."""
        self.stop()
        self._loop = loop
        self._stop = stop = threading.Event()
        self._schedule()
        self.thread = threading.Thread(
            target=self._watch, args=(loop, stop), name="observable-tasks-watchdog", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop the heartbeat; the watcher thread exits at its next wake-up (never joined)."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        due = self._due
        owner = self._owner()
        if due is None or owner is None:
            self.stop()
            return
        lag = max(0.0, time.monotonic() - due)  # the loop may run a timer a hair early
        self._schedule()
        if self._paused:  # late because the loop was not running, not because it was blocked
            self._paused = False
            return
        owner._loop_lag(lag)

    def _watch(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        resumed = 0.0  # when the loop was last seen running again after a pause
        paused = False
        while not stop.wait(self.interval):
            if loop.is_closed() or self._owner() is None:
                return
            if not loop.is_running():  # e.g. between two run_until_complete calls:
                paused = self._paused = True  # a loop that is not running is not blocked
                continue
            if paused:
                paused, resumed = False, time.monotonic()
            due = self._due
            if due is None or due == self._reported:
                continue  # nothing pending, or this stall was reported already
            overdue = time.monotonic() - max(due, resumed)
            if overdue < self.threshold:
                continue
            try:
                running = asyncio.current_task(loop)
            except Exception:  # pragma: no cover - never let the watcher die
                running = None
            if self._due != due or stop.is_set():
                continue  # the loop moved on meanwhile: do not blame whatever runs now
            self._reported = due
            owner = self._owner()
            if owner is not None:
                owner._loop_stalled(running, overdue)


def log_stall(task: Task | None, seconds: float) -> None:
    """The core's own report of a stall, when no observer takes it (stdlib logging)."""
    if task is None:
        logger.warning("observable_tasks: the event loop has been blocked for %.3fs", seconds)
    else:
        logger.warning(
            "observable_tasks: the event loop has been blocked for %.3fs by task %s (%s, %s)",
            seconds,
            task.id,
            task.name,
            task.function,
        )
