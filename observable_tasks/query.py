"""Paged, filtered task listings (newest first) for consoles: cursors and matching.

A cursor is opaque to callers: ``"<created score>_<task id>"`` of the last entry a page looked
at. The next page starts strictly after it, so pages never repeat or skip a task that stays
known, whatever is created meanwhile (new tasks are newer: they come before the first page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from observable_tasks.status import TaskStatus
from observable_tasks.task import Task

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
