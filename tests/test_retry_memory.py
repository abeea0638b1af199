"""Retries, delays and keys on the memory backend: what the contract does not cover (threads,
sync functions, callbacks, shutdown)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from observable_tasks import RetryPolicy, Task, TaskConfig, TaskManager, TaskStatus

POLICY = RetryPolicy(max_attempts=3, on=OSError, backoff=0.02, jitter=False)


async def test_a_sync_function_retries_in_its_thread(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    threads: list[str] = []

    def blocking_io() -> str:
        threads.append(threading.current_thread().name)
        if len(threads) < 3:
            raise OSError("disk busy")
        return "written"

    task = await manager.create_task(blocking_io, retry=POLICY)
    done = await manager.wait_for_task(task.id, timeout=10)
    assert (done.status, done.result, done.attempts) == (TaskStatus.COMPLETED, "written", 3)
    assert all(name != threading.main_thread().name for name in threads)


async def test_callbacks_and_waiters_hear_of_the_final_outcome_only(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    heard: list[tuple[TaskStatus, int]] = []
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise OSError(f"attempt {attempts}")

    task = await manager.create_task(flaky, retry=POLICY)
    manager.add_callback(task, lambda t: heard.append((t.status, t.attempts)))
    waiter = asyncio.ensure_future(manager.wait_for_task(task.id, timeout=10))
    done = await waiter
    assert done.status is TaskStatus.FAILED
    assert heard == [(TaskStatus.FAILED, 3)]
    assert str(done.error) == "attempt 3"


async def test_the_same_key_from_many_threads_makes_one_task(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    release = asyncio.Event()

    async def charge(order: str) -> str:
        await release.wait()
        return order

    await manager.start()
    first = manager.submit(charge, "order-7", key="order-7")
    made: list[Task] = []
    barrier = threading.Barrier(8)

    def producer() -> None:
        barrier.wait()
        made.append(manager.submit(charge, "order-7", key="order-7"))

    workers = [threading.Thread(target=producer) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        await asyncio.to_thread(worker.join)
    assert {task.id for task in made} == {first.id}
    assert len(manager.list_tasks()) == 1
    release.set()
    assert (await manager.wait_for_task(first.id, timeout=5)).result == "order-7"


async def test_a_delay_from_another_thread_is_honoured(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    await manager.start()

    async def later() -> str:
        return "on time"

    task = await asyncio.to_thread(manager.submit, later, delay=0.1)
    assert task.status is TaskStatus.PENDING
    done = await manager.wait_for_task(task.id, timeout=5)
    assert done.result == "on time"
    assert done.started_at is not None
    assert (done.started_at - done.created_at).total_seconds() >= 0.1


async def test_shutdown_cancels_delayed_tasks_and_planned_retries() -> None:
    manager = TaskManager(TaskConfig(shutdown_timeout=1.0))
    events = None
    attempts = 0

    async def later() -> None:
        raise AssertionError("must never run")

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("down")

    await manager.start()
    events = manager.task_events()
    delayed = await manager.create_task(later, delay=30)
    retrying = await manager.create_task(
        flaky, retry=RetryPolicy(max_attempts=5, on=OSError, backoff=30, jitter=False)
    )
    async for event in events:
        if event.kind == "retrying":
            break
    await events.aclose()
    await manager.shutdown()
    assert delayed.status is TaskStatus.CANCELLED
    assert retrying.status is TaskStatus.CANCELLED
    assert attempts == 1
    assert manager.pending_count == 0


async def test_pending_tasks_lists_slot_waiters_then_planned_ones_soonest_first(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    await manager.create_task(hold)
    queued = await manager.create_task(hold)
    late = await manager.create_task(hold, delay=60)
    soon = await manager.create_task(hold, delay=30)
    assert [t.id for t in manager.pending_tasks()] == [queued.id, soon.id, late.id]
    assert manager.pending_count == 3
    assert late.next_attempt_at is not None
    assert soon.next_attempt_at is not None
    assert soon.next_attempt_at < late.next_attempt_at
    gate.set()
