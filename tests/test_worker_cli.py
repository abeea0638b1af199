"""``observable-tasks worker``: a dedicated worker process (real redis-server, real processes)."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import free_port, wait_until
from worker_process import APPS, ROOT, WorkerProcess, worker_env

sys.path.insert(0, str(APPS))

import redis_tasks

from observable_tasks import TaskConfig, TaskManager, TaskStatus

pytestmark = pytest.mark.e2e

COMPLETED_LINE = r'^observable_tasks_finished_total\{[^}]*status="completed"[^}]*\} (\S+)'


@pytest.fixture
def queue() -> str:
    return secrets.token_hex(4)


@pytest.fixture
async def web(redis_url: str, queue: str) -> AsyncIterator[TaskManager]:
    """A web-side manager: creates tasks, runs none (execute=False)."""
    from observable_tasks.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, queue=queue, execute=False, lease=1.0)
    manager = TaskManager(TaskConfig(shutdown_timeout=1.0), backend=backend)
    await manager.start()
    yield manager
    await manager.shutdown(timeout=1.0)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "observable_tasks.cli", *args],
        capture_output=True,
        text=True,
        env=env or worker_env(),
        cwd=ROOT,
        timeout=60,
    )


def test_help_shows_every_option_with_its_default() -> None:
    done = _cli("worker", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for option in (
        "--backend", "--concurrency", "--lease", "--queue", "--max-attempts", "--allow",
        "--shutdown-timeout", "--metrics-port", "--log-level",
    ):  # fmt: skip
        assert option in text
    assert text.count("(default:") >= 10
    assert "(default: $OBSERVABLE_TASKS_BACKEND)" in text  # never the URL itself


def test_help_never_shows_the_password_of_the_env_url() -> None:
    done = _cli("worker", "--help", env=worker_env(OBSERVABLE_TASKS_BACKEND="redis://:s3cr3t@h/0"))
    assert done.returncode == 0
    assert "s3cr3t" not in done.stdout + done.stderr


def test_without_a_backend_it_says_how_to_give_one() -> None:
    done = _cli("worker", "redis_tasks")
    assert done.returncode != 0
    assert "--backend" in done.stderr
    assert "OBSERVABLE_TASKS_BACKEND" in done.stderr


def test_a_module_that_cannot_be_imported_is_a_clear_error(redis_url: str) -> None:
    done = _cli("worker", "--backend", redis_url, "no_such_module_here")
    assert done.returncode != 0
    assert "cannot import 'no_such_module_here'" in done.stderr


def test_bad_numbers_are_refused() -> None:
    for option, value in (("--concurrency", "0"), ("--lease", "-1"), ("--lease", "nan")):
        done = _cli("worker", "--backend", "redis://127.0.0.1:1/0", option, value, "redis_tasks")
        assert done.returncode == 2, (option, value)
        assert option in done.stderr


def test_unreachable_redis_exits_non_zero(tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert worker.wait(30) == 1
    assert '"worker_start_failed"' in worker.stdout()


async def test_runs_tasks_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, queue: str, web: TaskManager
) -> None:
    worker = WorkerProcess(tmp_path, redis_url, queue=queue).wait_ready()
    try:
        tasks = [await web.create_task(redis_tasks.add, i, 1) for i in range(20)]
        for task in tasks:
            await web.wait_for_task(task.id, timeout=20)
        assert [t.result for t in tasks] == [i + 1 for i in range(20)]
        assert {t.status for t in tasks} == {TaskStatus.COMPLETED}
    finally:
        worker.signal(signal.SIGTERM)
        code = worker.wait(30)
    assert code == 0, worker.stderr()
    events = [e["event"] for e in worker.events()]
    assert events[-1] == "worker_stopped"
    assert "worker_stopping" in events
    assert any(e.get("task_id") == tasks[0].id for e in worker.events())  # task log lines
    assert worker.stderr().strip() == ""  # JSON on stdout only, no spans printed by default


async def test_backend_from_the_environment(
    tmp_path: Path, redis_url: str, queue: str, web: TaskManager
) -> None:
    env = worker_env(OBSERVABLE_TASKS_BACKEND=redis_url)
    worker = WorkerProcess(tmp_path, None, queue=queue, env=env).wait_ready()
    try:
        task = await web.create_task(redis_tasks.add, 2, 3)
        await web.wait_for_task(task.id, timeout=20)
        assert task.result == 5
    finally:
        assert worker.stop() == 0


async def test_metrics_port_serves_the_workers_counters(
    tmp_path: Path, redis_url: str, queue: str, web: TaskManager
) -> None:
    port = free_port()
    extra = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    worker = WorkerProcess(tmp_path, redis_url, queue=queue, extra=extra).wait_ready()
    try:
        task = await web.create_task(redis_tasks.add, 1, 1)
        await web.wait_for_task(task.id, timeout=20)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body: str = r.read().decode()
            done = re.search(COMPLETED_LINE, body, re.M)
            return body if done and float(done.group(1)) == 1.0 else ""

        wait_until(scrape, timeout=10, message="the completed counter at 1")
    finally:
        assert worker.stop() == 0
