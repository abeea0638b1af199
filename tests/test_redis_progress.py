"""Redis backend: a task's last progress update survives its finish (real redis-server).

A task that reports progress and returns at once used to lose the update: the coalesced progress
write went out after FINISH, which ends the task's fenced writes, so Redis refused it (the demo's
``/process-file`` then showed a COMPLETED task at 93.75%), and the refusal was taken for a lost
lease ("stopping it here"), cancelling the attempt that had just finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, redis_server_available

from observable_tasks import TaskConfig, TaskManager, TaskStatus, update_task_progress
from observable_tasks.backends.redis import Keys, RedisBackend

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed")


async def report_and_return(task_id: str) -> int:
    await update_task_progress(task_id, 50.0)
    await asyncio.sleep(0)
    await update_task_progress(task_id, 100.0)
    return 1


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_last_progress_is_written_before_the_outcome(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TaskManager(
        TaskConfig(max_concurrent_tasks=50, shutdown_timeout=1), backend=RedisBackend(redis_url)
    )
    await manager.start()
    try:
        with caplog.at_level(logging.WARNING, logger="observable_tasks"):
            tasks = [await manager.create_task(report_and_return) for _ in range(200)]
            for task in tasks:
                done = await manager.wait_for_task(task.id, timeout=20)
                assert done.status is TaskStatus.COMPLETED
    finally:
        await manager.shutdown()
    client = redis.Redis.from_url(redis_url)
    try:
        stored = [client.hget(Keys().task(task.id), "progress") for task in tasks]
    finally:
        client.close()
    assert [float(v) if v is not None else None for v in stored] == [100.0] * len(tasks)
    assert not [r for r in caplog.records if "lost its lease" in r.getMessage()]
