"""The page's API as one contract, run over both backends: memory and Redis (a real
redis-server started here). What differs by design is tested in test_redis_backend.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from observable_tasks import TaskError, TaskManager, TaskStatus, update_task_progress

# -- task functions: module level, so that they can cross processes -------------------------

GATES: dict[str, asyncio.Event] = {}


async def double(value: int) -> int:
    return value * 2


async def fail(message: str) -> None:
    raise ValueError(message)


async def task_error() -> None:
    raise TaskError(code="INVALID_DATA", message="Data validation failed", details={"n": 1})


async def sleep_for(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


async def wait_gate(gate: str) -> str:
    await GATES[gate].wait()
    return gate


async def report(task_id: str, gate: str) -> str:
    await update_task_progress(task_id, 40.0)
    await GATES[gate].wait()
    return "done"


def sync_double(value: int) -> int:
    return value * 2


# -- helpers (the `make` fixture, one manager per test on each backend, is in conftest.py) --


def gate(name: str) -> str:
    GATES[name] = asyncio.Event()
    return name


# -- the contract -----------------------------------------------------------------------------


async def test_simple_task(make: Callable[..., TaskManager]) -> None:
    manager = make(max_concurrent_tasks=10)
    await manager.start()
    task = await manager.create_task(func=double, value=5, name="test_task")
    await manager.wait_for_task(task.id)
    assert task.result == 10  # the object create_task returned is kept up to date
    assert task.status == TaskStatus.COMPLETED
    assert task.name == "test_task"
    assert task.created_at <= task.started_at <= task.completed_at  # type: ignore[operator]
    found = manager.get_task(task.id)
    assert found is not None
    assert found.result == 10
    assert (await manager.aget_task(task.id)) is not None


async def test_task_failure(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    task = await manager.create_task(func=fail, message="Test error", name="failing_task")
    await manager.wait_for_task(task.id)
    assert task.status == TaskStatus.FAILED
    assert "Test error" in str(task.error)


async def test_task_error_keeps_its_code_and_details(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    task = await manager.create_task(task_error)
    done = await manager.wait_for_task(task.id)
    assert done.status is TaskStatus.FAILED
    assert isinstance(done.error, TaskError)
    assert (done.error.code, done.error.message, done.error.details) == (
        "INVALID_DATA",
        "Data validation failed",
        {"n": 1},
    )


async def test_timeout(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    task = await manager.create_task(sleep_for, 30, timeout=0.1)
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.TIMEOUT
    assert "timeout" in str(done.error)


async def test_list_tasks_by_status(make: Callable[..., TaskManager]) -> None:
    manager = make(max_concurrent_tasks=1)
    await manager.start()
    hold = gate("hold")
    first = await manager.create_task(wait_gate, hold)
    done = await manager.create_task(double, 1)  # waits behind the first
    assert [t.id for t in manager.list_tasks()] == [first.id, done.id]
    GATES[hold].set()
    await manager.wait_for_task(done.id, timeout=10)
    completed = manager.list_tasks(TaskStatus.COMPLETED)
    assert {t.id for t in completed} == {first.id, done.id}
    assert manager.list_tasks("FAILED") == []
    assert {t.id for t in await manager.alist_tasks("COMPLETED")} == {first.id, done.id}


async def test_cancel_pending_and_running(make: Callable[..., TaskManager]) -> None:
    manager = make(max_concurrent_tasks=1)
    await manager.start()
    hold = gate("hold")
    running = await manager.create_task(wait_gate, hold)
    pending = await manager.create_task(double, 2)
    # Wait until the first one runs (the memory backend starts it at once; Redis when claimed).
    for _ in range(500):
        current = manager.get_task(running.id)
        if current is not None and current.status is TaskStatus.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert await manager.cancel_task(pending.id) is True
    assert manager.get_task(pending.id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    assert await manager.cancel_task(running.id) is True
    assert manager.get_task(running.id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    assert await manager.cancel_task(running.id) is False  # finished
    assert await manager.cancel_task("no-such-task") is False


async def test_progress_is_visible_while_running(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    release = gate("release")
    task = await manager.create_task(report, gate=release)
    for _ in range(500):
        seen = manager.get_task(task.id)
        if seen is not None and seen.progress == 40.0:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("progress never showed")
    GATES[release].set()
    await manager.wait_for_task(task.id, timeout=10)
    assert task.status is TaskStatus.COMPLETED


async def test_sync_functions_run_too(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    task = await manager.create_task(sync_double, 21)
    assert (await manager.wait_for_task(task.id, timeout=10)).result == 42


async def test_unknown_ids(make: Callable[..., TaskManager]) -> None:
    from observable_tasks import TaskNotFoundError

    manager = make()
    await manager.start()
    assert manager.get_task("nope") is None
    with pytest.raises(TaskNotFoundError):
        await manager.wait_for_task("nope")


async def test_wait_timeout_leaves_the_task_running(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    hold = gate("hold")
    task = await manager.create_task(wait_gate, hold)
    with pytest.raises(TimeoutError):
        await manager.wait_for_task(task.id, timeout=0.1)
    GATES[hold].set()
    assert (await manager.wait_for_task(task.id, timeout=10)).status is TaskStatus.COMPLETED


async def test_callbacks_run_when_the_task_finishes(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    seen: asyncio.Queue[Any] = asyncio.Queue()
    task = await manager.create_task(double, 4)
    manager.add_callback(task.id, lambda t: seen.put_nowait((t.id, t.status)))
    assert await asyncio.wait_for(seen.get(), 10) == (task.id, TaskStatus.COMPLETED)


async def test_bad_input_raises_at_the_call(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    with pytest.raises(TypeError):
        await manager.create_task(double, 1, 2, 3)
    with pytest.raises(ValueError, match="timeout"):
        await manager.create_task(double, 1, timeout=float("nan"))
    assert manager.list_tasks() == []
