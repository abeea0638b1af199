"""The demo on a real redis-server, in this process: what its embedded worker runs, and web-only.

Another process's manager (here: a second ``TaskManager`` that executes nothing) writes task
records into the demo's queue. The demo's worker runs the demo's own functions for it (setup_tasks
allows the module that called it), and refuses everything else, whatever the record names:
``os.system`` never runs, nor a standard-library function that is not listed. With
``DEMO_NO_WORKER=1`` (``--no-worker``) the demo executes nothing: a separate executing manager
runs its tasks, and the demo reads their results.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LiveServer
from redis_server import redis_server_available

from observable_tasks import TaskConfig, TaskManager, TaskStatus, demo
from observable_tasks.backends.redis import RedisBackend

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed"),
]


@pytest.fixture
def redis_url(fresh_redis_url: str) -> str:
    return fresh_redis_url  # a redis-server of the test's own: these tests count what it holds


@pytest.fixture
async def other_process(redis_url: str) -> AsyncIterator[TaskManager]:
    """A manager of "another process" on the same Redis that runs nothing itself."""
    manager = TaskManager(
        TaskConfig(shutdown_timeout=1), backend=RedisBackend(redis_url, execute=False)
    )
    await manager.start()
    try:
        yield manager
    finally:
        await manager.shutdown()


def demo_app(redis_url: str, data: Path, **options: Any) -> Any:
    config = TaskConfig(max_concurrent_tasks=10, default_timeout=60, shutdown_timeout=1)
    return demo.create_app(config, time_scale=0.01, data_dir=data, backend=redis_url, **options)


async def test_the_demo_worker_runs_demo_functions_only(
    redis_url: str, other_process: TaskManager, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    with LiveServer(demo_app(redis_url, tmp_path / "data")) as live:
        evil = await other_process.create_task(os.system, f"touch {marker}")
        stdlib = await other_process.create_task(json.dumps, [1, 2])
        own = await other_process.create_task(demo.process_data, data={"from": "elsewhere"})
        for task in (evil, stdlib, own):
            await other_process.wait_for_task(task.id, timeout=15)
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            ran = (await client.get(f"/status/{own.id}")).json()
            assert ran["status"] == "COMPLETED"
            assert ran["result"] == {"status": "completed", "data": {"from": "elsewhere"}}
            for refused in (evil, stdlib):
                status = (await client.get(f"/status/{refused.id}")).json()
                assert status["status"] == "FAILED", status
                assert "not allowed" in status["error"]
                result = await client.get(f"/task-result/{refused.id}")
                assert result.status_code == 500
                assert result.json()["code"] == "FUNCTION_NOT_ALLOWED"
            listed = {t["id"] for t in (await client.get("/tasks")).json()}
            assert listed == {evil.id, stdlib.id, own.id}
    assert not marker.exists()  # os.system never ran


async def test_no_worker_demo_executes_nothing(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_NO_WORKER", "1")
    app = demo_app(redis_url, tmp_path / "data")
    manager = app.state["task_manager"]
    assert manager.backend is not None
    assert manager.backend.execute is False
    with LiveServer(app) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            created = await client.post("/process", json={"n": 1})
            task_id = created.json()["task_id"]
            # Nobody runs it yet: it waits in the queue, visible as PENDING.
            assert (await client.get(f"/status/{task_id}")).json()["status"] == "PENDING"
            assert manager.backend.worker is None
            worker = TaskManager(
                TaskConfig(shutdown_timeout=1),
                backend=RedisBackend(redis_url, allow=["observable_tasks.demo"]),
            )
            await worker.start()
            try:
                done = await worker.wait_for_task(task_id, timeout=15)
                assert done.status is TaskStatus.COMPLETED
            finally:
                await worker.shutdown()
            status = (await client.get(f"/status/{task_id}")).json()
            assert status["status"] == "COMPLETED"
            assert status["result"] == {"status": "completed", "data": {"n": 1}}
