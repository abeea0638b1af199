"""Paged, filtered task listings (newest first) for consoles: cursors and matching.

A cursor is opaque to callers: ``"<created score>_<task id>"`` of the last entry a page looked
at. The next page starts strictly after it, so pages never repeat or skip a task that stays
known, whatever is created meanwhile (new tasks are newer: they come before the first page).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from observable_tasks.feed import TaskEvent, iterate
from observable_tasks.status import TaskStatus
from observable_tasks.task import Task

if TYPE_CHECKING:
    from observable_tasks.backends.redis.backend import RedisBackend
    from observable_tasks.config import TaskConfig
    from observable_tasks.feed import EventHub

__all__ = ["MAX_LIMIT", "Matcher", "decode_cursor", "encode_cursor", "matcher", "query_memory"]

MAX_LIMIT = 500
"""The largest page :meth:`TaskManager.query_tasks` returns."""

Matcher = Callable[[Task], bool]


def encode_cursor(score: float, task_id: str) -> str:
    return f"{score!r}_{task_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(score, id)`` of a cursor; ``ValueError`` for anything else."""
    score, sep, task_id = cursor.partition("_")
    if not sep or not task_id or len(task_id) > 64 or not task_id.isalnum():
        raise ValueError(f"not a task cursor: {cursor[:80]!r}")
    value = float(score)
    if value != value:  # NaN
        raise ValueError(f"not a task cursor: {cursor[:80]!r}")
    return value, task_id


def check_query(status: TaskStatus | str | None, limit: int) -> tuple[TaskStatus | None, int]:
    """The status looked up (``ValueError`` if unknown) and the limit checked (1..MAX_LIMIT)."""
    wanted = None if status is None or status == "" else TaskStatus(status)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return wanted, limit


def matcher(status: TaskStatus | None, function: str | None, search: str | None) -> Matcher | None:
    """A predicate for the filters (``None``: every task matches).

    ``search`` matches a name containing it or an id starting with it, ignoring case.
    """
    needle = (search or "").strip().lower()
    if status is None and not function and not needle:
        return None

    def match(task: Task) -> bool:
        if status is not None and task.status is not status:
            return False
        if function and task.function != function:
            return False
        return not needle or needle in task.name.lower() or task.id.startswith(needle)

    return match


def query_memory(
    tasks: dict[str, Task],
    match: Matcher | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Task], str | None]:
    """One page of ``tasks`` (a dict in creation order), newest first, without copying it."""
    after = decode_cursor(cursor) if cursor else None
    for _ in range(3):
        try:
            return _page(reversed(tasks.values()), match, after, limit)
        except RuntimeError:  # the dict changed size (a task created from another thread)
            continue
    return _page(reversed(list(tasks.values())), match, after, limit)


def _page(
    newest_first: Iterable[Task],
    match: Matcher | None,
    after: tuple[float, str] | None,
    limit: int,
) -> tuple[list[Task], str | None]:
    out: list[Task] = []
    passed = after is None
    score, cid = after if after is not None else (0.0, "")
    for task in newest_first:
        if not passed:
            if task.id == cid:
                passed = True
                continue
            if task._wall_created >= score:
                continue
            passed = True  # the cursor's task was evicted: go by time
        if match is None or match(task):
            if len(out) == limit:
                last = out[-1]
                return out, encode_cursor(last._wall_created, last.id)
            out.append(task)
    return out, None


def count_statuses(statuses: Iterable[Any]) -> dict[TaskStatus, int]:
    """Every status with how many of ``statuses`` have it (zeros included)."""
    counts = dict.fromkeys(TaskStatus, 0)
    for status in statuses:
        counts[status] += 1
    return counts


class TaskQueries:
    """The manager's console methods: pages, counts, workers, events (a mixin of
    :class:`~observable_tasks.manager.TaskManager`; the Redis backend answers them itself)."""

    # Set up by TaskManager.__init__.
    config: TaskConfig
    _remote: RedisBackend | None
    _tasks: dict[str, Task]
    _running: int
    _accepting: bool
    _hub: EventHub

    if TYPE_CHECKING:

        @property
        def pending_count(self) -> int: ...

    async def query_tasks(
        self,
        status: TaskStatus | str | None = None,
        function: str | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], str | None]:
        """One page of tasks, newest first, and the cursor of the next page (``None``: last).

        ``status``: only that status; ``function``: only that function (its qualified name,
        ``task.function``, exactly); ``search``: a name containing it or an id starting with
        it, ignoring case. ``cursor`` comes from the previous call; ``limit`` is 1 to 500.
        Pages cover every task that stays known exactly once, whatever is created meanwhile.
        Cost is per page, not per known task: the memory backend walks its dict from the newest
        end, Redis reads the index with ``ZREVRANGEBYSCORE ... LIMIT`` and the records in one
        pipeline. With filters, Redis looks at most 2,000 index entries per call, so a page may
        hold fewer than ``limit`` tasks while a next cursor is still returned.
        ``ValueError`` for an unknown status, a bad limit or a cursor that is not one.
        """
        wanted, limit = check_query(status, limit)
        match = matcher(wanted, function, search)
        if self._remote is not None:
            return await self._remote.query_tasks(match, cursor, limit)
        return query_memory(self._tasks, match, cursor, limit)

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """How many known tasks have each status (every status present, zeros included).

        Memory: a pass over the known tasks; Redis: their statuses read in pipelined chunks.
        """
        if self._remote is not None:
            return await self._remote.count_tasks()
        return count_statuses([task.status for task in list(self._tasks.values())])

    async def list_workers(self) -> list[dict[str, Any]]:
        """Processes that execute tasks: ``id``, ``last_seen`` (wall seconds), ``alive``...

        Redis: every worker registered in the queue (alive when seen within a lease; plus
        ``running`` for this process' own); memory: this process, with ``running``,
        ``pending`` and ``concurrency``.
        """
        if self._remote is not None:
            return await self._remote.list_workers()
        return [
            {
                "id": f"{socket.gethostname()}-{os.getpid()}",
                "last_seen": time.time(),
                "alive": self._accepting,
                "running": self._running,
                "pending": self.pending_count,
                "concurrency": self.config.max_concurrent_tasks,
            }
        ]

    def task_events(
        self, *, last_event_id: str | None = None, maxlen: int = 1000
    ) -> AsyncGenerator[TaskEvent, None]:
        """``async for event in manager.task_events(): ...``: tasks created, started, making
        progress and finished, as :class:`~observable_tasks.feed.TaskEvent` (kind and Task).

        Call on the event loop: the subscription starts at the call. Each subscriber has a
        queue of ``maxlen`` events; one that lags loses the oldest (``event.dropped`` says how
        many), tasks never wait for it. Progress events of a task coalesce while queued. On
        Redis the events come from the queue's events stream (every process' tasks; the first
        subscriber of a process also gets those of the second before it subscribed); with
        ``last_event_id`` (an earlier ``event.id``) the ones after it that the stream still
        holds are replayed first. Stop iterating (or ``aclose()``) to unsubscribe.
        """
        if self._remote is not None:
            return self._remote.task_events(last_event_id, maxlen)
        return iterate(self._hub.subscribe(maxlen))
