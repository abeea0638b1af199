"""``observable-tasks console --backend URL`` (a real process, a real redis-server) and the
demo's console at /console."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from helpers import LiveServer, free_port
from server_process import ServerProcess

from observable_tasks import TaskConfig, TaskManager


async def double(value: int) -> int:
    return value * 2


class _Guarded(ServerProcess):
    def _answers(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.url + self.ready_path).status_code == 401
        except httpx.TransportError:
            return False


async def test_console_command_serves_a_redis_queue(redis_url: str, tmp_path: Path) -> None:
    from observable_tasks.backends.redis import RedisBackend

    queue = secrets.token_hex(4)
    manager = TaskManager(
        TaskConfig(shutdown_timeout=1.0), backend=RedisBackend(redis_url, queue=queue)
    )
    await manager.start()
    try:
        task = await manager.create_task(double, 21, name="answer")
        await manager.wait_for_task(task.id, timeout=10)
        port = free_port()
        argv = [sys.executable, "-m", "observable_tasks.cli", "console", "--backend", redis_url]
        argv += ["--port", str(port), "--queue", queue, "--read-only"]
        env = {**os.environ, "OBSERVABLE_TASKS_CONSOLE_AUTH": "ops:pa55"}
        server = _Guarded(argv, port=port, env=env, log_dir=tmp_path, ready_path="/console/")
        await asyncio.to_thread(server.start)  # waits for it to answer: not on the loop
        try:
            await _check_console(server, task.id)
        finally:
            await asyncio.to_thread(server.stop)
    finally:
        await manager.shutdown(timeout=1.0)


async def _check_console(server: ServerProcess, task_id: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get("/console/api/tasks")).status_code == 401
        body = (await client.get("/console/api/tasks", auth=("ops", "pa55"))).json()
        assert [t["id"] for t in body["tasks"]] == [task_id]
        assert body["tasks"][0]["status"] == "COMPLETED"
        home = await client.get("/", auth=("ops", "pa55"))
        assert home.status_code in (302, 307)
        assert home.headers["location"] == "/console/"
        page = await client.get("/console/", auth=("ops", "pa55"))
        assert 'name="console-read-only" content="1"' in page.text
        assert "pa55" not in server.stdout() + server.stderr()


def test_console_command_refuses_the_memory_backend() -> None:
    from observable_tasks import cli

    with pytest.raises(SystemExit, match="needs a Redis --backend"):
        cli.main(["console", "--backend", "memory"])


def test_the_demo_mounts_the_console_with_jaeger_links(tmp_path: Path) -> None:
    from observable_tasks.demo import create_app

    app = create_app(time_scale=0.01, data_dir=tmp_path, telemetry=False, backend="memory")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        made = client.post("/simulate", json={"outcome": "complete"}).json()
        view = client.get(f"/console/api/tasks/{made['task_id']}")
        assert view.status_code == 200
        assert 'name="console-trace" content="1"' in client.get("/console/").text
