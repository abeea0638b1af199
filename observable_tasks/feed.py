"""Task events for live views (the console's stream): what happened to which task, fanned out
to any number of subscribers, each with a bounded queue of its own.

A publisher never waits: a subscriber that lags loses its oldest events (and learns how many
through :attr:`TaskEvent.dropped` of the next one it reads). Progress events coalesce: a
progress event for a task whose previous event in the queue is also its progress is not queued
twice (the ``Task`` object is live, the reader sees its latest progress anyway).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from observable_tasks.task import Task

__all__ = ["EVENT_KINDS", "EventHub", "Subscription", "TaskEvent"]

EVENT_KINDS = ("created", "started", "progress", "retrying", "finished")
"""The kinds of :class:`TaskEvent` (``retrying``: an attempt failed and the task is PENDING
until its next attempt)."""


@dataclass
class TaskEvent:
    """One thing that happened to a task: ``kind`` is one of :data:`EVENT_KINDS`.

    ``id`` orders events (on Redis the events stream's entry id, usable as ``Last-Event-ID``;
    in memory a per-process counter). ``task`` is the task as read when the event was handed
    out (its status may already be newer than ``kind`` says). ``dropped``: how many events this
    subscriber lost just before this one because it lagged.
    """

    id: str
    kind: str
    task: Task
    dropped: int = 0


class Subscription:
    """One subscriber's bounded queue (see :class:`EventHub`)."""

    def __init__(self, hub: EventHub, maxlen: int, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._queue: collections.deque[TaskEvent] = collections.deque()
        self._maxlen = maxlen
        self._loop = loop
        self._ready = asyncio.Event()
        self._dropped = 0
        self.closed = False

    def put(self, event: TaskEvent) -> None:
        queue = self._queue
        if (
            event.kind == "progress"
            and queue
            and queue[-1].kind == "progress"
            and queue[-1].task is event.task
        ):
            return  # coalesced: the queued one shows the latest progress too
        if len(queue) >= self._maxlen:
            queue.popleft()
            self._dropped += 1
        queue.append(event)
        if threading.get_ident() == self._hub.loop_thread:
            self._ready.set()
        else:  # published from a worker thread (a sync task reporting progress)
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> TaskEvent:
        """The next event (waits for one)."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        event = self._queue.popleft()
        if self._dropped:
            event.dropped, self._dropped = self._dropped, 0
        return event

    def get_nowait(self) -> TaskEvent | None:
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub.unsubscribe(self)


class EventHub:
    """Fans task events out to subscribers; publishing costs nothing without subscribers.

    ``on_first``/``on_last`` are called when the first subscriber arrives and the last leaves
    (the Redis backend starts and stops its stream reader there).
    """

    def __init__(
        self,
        on_first: Callable[[], None] | None = None,
        on_last: Callable[[], None] | None = None,
    ) -> None:
        self.subscribers: list[Subscription] = []
        self.loop_thread: int | None = None
        self._on_first = on_first
        self._on_last = on_last
        self._seq = 0

    def subscribe(self, maxlen: int = 1000) -> Subscription:
        """A new subscriber's queue (call on the event loop)."""
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen!r}")
        loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        sub = Subscription(self, maxlen, loop)
        self.subscribers = [*self.subscribers, sub]  # copy-on-write: publishers iterate freely
        if len(self.subscribers) == 1 and self._on_first is not None:
            self._on_first()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers = [s for s in self.subscribers if s is not sub]
            if not self.subscribers and self._on_last is not None:
                self._on_last()

    def publish(self, kind: str, task: Task, event_id: str | None = None) -> None:
        """Queue an event for every subscriber (never blocks, never raises for a lagging one)."""
        subscribers = self.subscribers
        if not subscribers:
            return
        if event_id is None:
            self._seq += 1
            event_id = str(self._seq)
        for sub in subscribers:
            sub.put(TaskEvent(event_id, kind, task))


async def iterate(sub: Subscription) -> AsyncGenerator[TaskEvent, None]:
    """Events of ``sub`` until the consumer stops iterating (then it unsubscribes)."""
    try:
        while True:
            yield await sub.get()
    finally:
        sub.close()
