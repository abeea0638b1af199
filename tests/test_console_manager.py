"""The manager API a console reads (query_tasks, count_tasks, list_workers, task_events), as
one contract over both backends: memory and Redis (a real redis-server started here)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from observable_tasks import (
    RetryPolicy,
    TaskManager,
    TaskStatus,
    current_task,
    update_task_progress,
)
from observable_tasks.feed import EVENT_KINDS, TaskEvent

GATES: dict[str, asyncio.Event] = {}
# Retries and delayed starts: both backends.
RETRYING_BACKENDS = pytest.mark.parametrize("make", ["memory", "redis"], indirect=True)


async def double(value: int) -> int:
    return value * 2


async def fail(message: str) -> None:
    raise ValueError(message)


async def flaky(message: str) -> str:
    task = current_task()
    if task is None or task.attempts <= 1:
        raise ValueError(message)
    return "second time lucky"


async def report(task_id: str, gate: str) -> str:
    await update_task_progress(task_id, 40.0)
    await GATES[gate].wait()
    return "done"


async def _finished(manager: TaskManager, n: int, *, prefix: str = "job") -> list[str]:
    ids = []
    for i in range(n):
        task = await manager.create_task(double, i, name=f"{prefix}-{i}")
        ids.append(task.id)
    for task_id in ids:
        await manager.wait_for_task(task_id, timeout=10)
    return ids


async def test_pages_cover_every_task_once_newest_first(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    ids = await _finished(manager, 23)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await manager.query_tasks(cursor=cursor, limit=5)
        seen += [task.id for task in page]
        pages += 1
        if cursor is None:
            break
        # tasks created between pages come before the first page: no repeat, no skip
        await manager.create_task(double, 0, name="later")
    assert seen == ids[::-1]
    assert pages == 5
    first, _ = await manager.query_tasks(limit=1)
    assert first[0].name == "later"


async def test_filters_and_search(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    ids = await _finished(manager, 4, prefix="Resize-Image")
    bad = await manager.create_task(fail, "no", name="broken")
    await manager.wait_for_task(bad.id, timeout=10)

    failed, cursor = await manager.query_tasks(status="failed")
    assert [t.id for t in failed] == [bad.id]
    assert cursor is None
    by_function, _ = await manager.query_tasks(function=f"{__name__}.double")
    assert {t.id for t in by_function} == set(ids)
    assert (await manager.query_tasks(function="double"))[0] == []  # exact, not a substring
    named, _ = await manager.query_tasks(search="resize-IMAGE-2")
    assert [t.name for t in named] == ["Resize-Image-2"]
    by_id, _ = await manager.query_tasks(search=ids[1][:8].upper())
    assert [t.id for t in by_id] == [ids[1]]
    mixed, _ = await manager.query_tasks(status=TaskStatus.COMPLETED, search="resize", limit=2)
    assert len(mixed) == 2
    with pytest.raises(ValueError, match="BOGUS"):
        await manager.query_tasks(status="BOGUS")
    with pytest.raises(ValueError, match="limit"):
        await manager.query_tasks(limit=0)
    with pytest.raises(ValueError, match="cursor"):
        await manager.query_tasks(cursor="<script>")


async def test_counts(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    await _finished(manager, 3)
    bad = await manager.create_task(fail, "no")
    await manager.wait_for_task(bad.id, timeout=10)
    gate = GATES.setdefault("c", asyncio.Event())
    events = manager.task_events()
    running = await manager.create_task(report, gate="c")
    async for event in events:
        if event.kind == "progress" and event.task.id == running.id:
            break
    counts = await manager.count_tasks()
    assert counts == {
        TaskStatus.PENDING: 0,
        TaskStatus.RUNNING: 1,
        TaskStatus.COMPLETED: 3,
        TaskStatus.FAILED: 1,
        TaskStatus.CANCELLED: 0,
        TaskStatus.TIMEOUT: 0,
    }
    gate.set()
    await manager.wait_for_task(running.id, timeout=10)
    await events.aclose()


async def test_workers(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    await _finished(manager, 1)
    workers = await manager.list_workers()
    assert len(workers) == 1
    assert workers[0]["alive"] is True
    assert isinstance(workers[0]["id"], str)
    assert workers[0]["last_seen"] > 0


async def test_events_of_a_task(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    gate = GATES.setdefault("e", asyncio.Event())
    events = manager.task_events()
    task = await manager.create_task(report, gate="e")
    got: list[TaskEvent] = []
    async for event in events:
        if event.task.id != task.id:
            continue
        got.append(event)
        if event.kind == "progress":
            assert event.task.progress == 40.0
            gate.set()
        if event.kind == "finished":
            break
    await events.aclose()
    assert [e.kind for e in got] == ["created", "started", "progress", "finished"]
    assert got[-1].task.status is TaskStatus.COMPLETED
    ids = [e.id for e in got]
    assert len(set(ids)) == 4


@RETRYING_BACKENDS
async def test_events_of_a_retried_task(make: Callable[..., TaskManager]) -> None:
    assert "retrying" in EVENT_KINDS
    manager = make()
    await manager.start()
    events = manager.task_events()
    policy = RetryPolicy(max_attempts=3, on=(ValueError,), backoff=0.3, jitter=False)
    task = await manager.create_task(flaky, "once", retry=policy)
    got: list[tuple[str, TaskStatus, int]] = []
    waiting = None

    async def read() -> None:
        nonlocal waiting
        async for event in events:
            if event.task.id != task.id:
                continue
            got.append((event.kind, event.task.status, event.task.attempts))
            if event.kind == "retrying":  # read at once: the second attempt is 0.3 s away
                waiting = (event.task.next_attempt_at, event.task.error)
            if event.kind == "finished":
                break

    await asyncio.wait_for(read(), 10)  # (asyncio.timeout is Python 3.11+)
    await events.aclose()
    assert [kind for kind, _, _ in got] == ["created", "started", "retrying", "started", "finished"]
    assert got[2][1:] == (TaskStatus.PENDING, 1)
    assert got[-1][1:] == (TaskStatus.COMPLETED, 2)
    assert waiting is not None
    next_at, error = waiting
    assert next_at is not None
    assert isinstance(error, ValueError)


@RETRYING_BACKENDS
async def test_a_delayed_task_is_pending_with_its_start_time(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    task = await manager.create_task(double, 1, name="later", delay=30, key="nightly")
    page, _ = await manager.query_tasks(status="PENDING")
    assert [t.id for t in page] == [task.id]
    read = page[0]
    assert read.next_attempt_at is not None
    assert read.attempts == 0
    assert read.key == "nightly"
    assert (await manager.count_tasks())[TaskStatus.PENDING] == 1
    assert await manager.cancel_task(task.id)


async def test_a_lagging_subscriber_loses_the_oldest(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    events = manager.task_events(maxlen=3)
    ids = await _finished(manager, 5)
    if manager.backend is not None:  # Redis: events arrive through the stream reader
        last = None
        async for event in events:
            last = event
            if event.task.id == ids[-1] and event.kind == "finished":
                break
        assert last is not None
        await events.aclose()
        return
    first = await events.__anext__()
    assert first.dropped == 5 * 3 - 3  # created, started, finished per task; 3 kept
    kept = [first, await events.__anext__(), await events.__anext__()]
    assert [(e.kind, e.task.id) for e in kept] == [("finished", i) for i in ids[2:]]
    assert kept[1].dropped == 0
    await events.aclose()


async def test_redis_replays_after_last_event_id(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    if manager.backend is None:
        pytest.skip("Last-Event-ID replay is a Redis feature (the memory backend keeps none)")
    events = manager.task_events()
    a = await manager.create_task(double, 1, name="a")
    first = await events.__anext__()
    assert first.task.id == a.id
    assert first.kind == "created"
    await events.aclose()
    await manager.wait_for_task(a.id, timeout=10)
    replay = manager.task_events(last_event_id=first.id)
    kinds = []
    async for event in replay:
        kinds.append(event.kind)
        if event.kind == "finished":
            break
    await replay.aclose()
    assert kinds == ["started", "finished"]
    with pytest.raises(ValueError, match="stream entry id"):
        manager.task_events(last_event_id="nope")


async def test_redis_filtered_pages_do_bounded_work(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    backend = manager.backend
    if backend is None:
        pytest.skip("the scan budget is the Redis backend's")
    ids = await _finished(manager, 7, prefix="x")
    from observable_tasks.query import matcher

    match = matcher(None, None, "x-1")
    assert match is not None
    found: list[str] = []
    cursor = None
    calls = 0
    while True:
        page, cursor = await backend.query_tasks(match, cursor, 5, scan=2)
        found += [t.id for t in page]
        calls += 1
        if cursor is None:
            break
    assert found == [ids[1]]
    assert calls > 1  # each call looked at a bounded part of the index
