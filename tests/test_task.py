"""The Task record as users read it back: fields, timestamps, summary."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from observable_tasks import Task, TaskManager, TaskStatus


async def _work(x: int) -> dict[str, int]:
    return {"x": x}


async def test_fields_of_a_completed_task(manager: TaskManager) -> None:
    before = datetime.now(timezone.utc)
    task = await manager.create_task(_work, 3, name="my-task", timeout=30)
    assert isinstance(task, Task)
    assert task.status is TaskStatus.RUNNING or task.status is TaskStatus.PENDING
    await manager.wait_for_task(task.id)
    after = datetime.now(timezone.utc)

    assert task.name == "my-task"
    assert task.function == f"{__name__}._work"
    assert task.timeout == 30
    assert task.result == {"x": 3}
    assert task.error is None
    assert task.progress == 0.0
    assert task.is_done
    for stamp in (task.created_at, task.started_at, task.completed_at):
        assert stamp is not None
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == timedelta(0)
        assert before <= stamp <= after
    assert task.started_at is not None
    assert task.completed_at is not None
    assert task.created_at <= task.started_at <= task.completed_at
    assert task.queue_wait is not None
    assert task.queue_wait >= 0
    assert task.duration is not None
    assert task.duration >= 0


async def test_pending_task_has_no_start_or_end(make_manager) -> None:  # type: ignore[no-untyped-def]
    mgr: TaskManager = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    await mgr.create_task(hold)
    pending = await mgr.create_task(hold)
    assert pending.status is TaskStatus.PENDING
    assert pending.started_at is None
    assert pending.completed_at is None
    assert pending.queue_wait is None
    assert pending.duration is None
    assert not pending.is_done
    gate.set()
    await mgr.wait_for_task(pending.id, timeout=5)
    assert pending.is_done


async def test_cancelled_task_has_no_error_and_no_result(manager: TaskManager) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = await manager.create_task(forever)
    await asyncio.wait_for(started.wait(), 5)
    await manager.cancel_task(task.id)
    assert task.status is TaskStatus.CANCELLED
    assert task.error is None
    assert task.result is None


async def test_to_dict_is_json_ready(manager: TaskManager) -> None:
    async def boom() -> None:
        raise KeyError("nope")

    ok = await manager.create_task(_work, 1)
    bad = await manager.create_task(boom)
    await manager.wait_for_task(ok.id)
    await manager.wait_for_task(bad.id)

    ok_dict = json.loads(json.dumps(ok.to_dict()))
    assert ok_dict["id"] == ok.id
    assert ok_dict["name"] == "_work"
    assert ok_dict["status"] == "COMPLETED"
    assert ok_dict["result"] == {"x": 1}
    assert ok_dict["error"] is None
    assert datetime.fromisoformat(ok_dict["created_at"]) == ok.created_at
    assert datetime.fromisoformat(ok_dict["completed_at"]) == ok.completed_at

    bad_dict = bad.to_dict()
    assert bad_dict["status"] == "FAILED"
    assert bad_dict["error"] == str(bad.error)
    assert bad_dict["error_type"] == "KeyError"
    assert bad_dict["result"] is None


async def test_repr_names_the_task(manager: TaskManager) -> None:
    task = await manager.create_task(_work, 1, name="shown")
    await manager.wait_for_task(task.id)
    text = repr(task)
    assert "shown" in text
    assert task.id in text
    assert "COMPLETED" in text
