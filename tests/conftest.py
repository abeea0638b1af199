"""Shared fixtures. Plain helpers live in ``helpers.py`` (``from helpers import ...``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import LiveServer

from observable_tasks import TaskConfig, TaskManager


@pytest.fixture
async def manager() -> AsyncIterator[TaskManager]:
    """A standalone manager (max 10 concurrent), shut down (bounded) after the test."""
    mgr = TaskManager(TaskConfig(max_concurrent_tasks=10, shutdown_timeout=1.0))
    yield mgr
    await mgr.shutdown(timeout=1.0)


@pytest.fixture
async def make_manager() -> AsyncIterator[Callable[..., TaskManager]]:
    """``make_manager(**config_fields, middleware=..., observers=..., clock=...)``.

    Every manager made here is shut down (bounded) after the test.
    """
    made: list[TaskManager] = []

    def make(**kwargs: Any) -> TaskManager:
        extra = {k: kwargs.pop(k) for k in ("middleware", "observers", "clock") if k in kwargs}
        kwargs.setdefault("shutdown_timeout", 1.0)
        mgr = TaskManager(TaskConfig(**kwargs), **extra)
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        await mgr.shutdown(timeout=1.0)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (free port, no persistence) for the test module: its URL."""
    from redis_server import RedisServer, redis_server_available

    if not redis_server_available():
        pytest.skip("redis-server not installed (scripts/setup-tests installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def fresh_redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server for one test alone (stopped after it): its URL."""
    from redis_server import RedisServer, redis_server_available

    if not redis_server_available():
        pytest.skip("redis-server not installed (scripts/setup-tests installs it)")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def live_server() -> Iterator[Callable[[Any], LiveServer]]:
    """``server = live_server(app)``: a real uvicorn on a free loopback port, stopped afterwards.

    ``server.url`` is its base URL. Reusable by any test that needs a real HTTP server.
    """
    started: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


# -- Redis backend: a web-side manager and worker processes on a queue of the test's own -------


@pytest.fixture
def queue() -> str:
    """A queue name of the test's own: tests sharing a redis-server never see each other's."""
    import secrets

    return secrets.token_hex(4)


@pytest.fixture
async def web(queue: str) -> AsyncIterator[Callable[..., TaskManager]]:
    """``web(url, **backend_options)``: a web-side manager on ``queue`` (runs no task)."""
    from observable_tasks.backends.redis import RedisBackend

    made: list[TaskManager] = []

    def factory(url: str, **options: Any) -> TaskManager:
        options.setdefault("lease", 1.0)
        backend = RedisBackend(url, queue=queue, execute=False, **options)
        manager = TaskManager(TaskConfig(shutdown_timeout=1.0), backend=backend)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.shutdown(timeout=1.0)


@pytest.fixture
def workers(tmp_path: Path, queue: str) -> Iterator[Callable[..., Any]]:
    """``workers(url, **options)``: a ready ``observable-tasks worker`` process on ``queue``."""
    from worker_process import WorkerProcess

    made: list[WorkerProcess] = []

    def factory(url: str, **options: Any) -> WorkerProcess:
        options.setdefault("queue", queue)
        worker = WorkerProcess(tmp_path / "workers", url, **options)
        made.append(worker)
        return worker.wait_ready()

    yield factory
    for worker in made:
        worker.stop(timeout=10)


# -- one manager per test on the backend of the parameter: memory, then Redis -----------------


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., TaskManager]]:
    """``make(**config_fields)``: a manager on the parameter's backend (Redis: a real server,
    a queue of the test's own). Shut down after the test; the module's ``GATES`` are cleared."""
    import secrets

    made: list[TaskManager] = []
    queue = secrets.token_hex(4)

    def factory(**config: Any) -> TaskManager:
        config.setdefault("shutdown_timeout", 1.0)
        backend: Any = None
        if request.param == "redis":
            from observable_tasks.backends.redis import RedisBackend

            url = request.getfixturevalue("redis_url")
            backend = RedisBackend(url, queue=queue, lease=2.0)
        manager = TaskManager(TaskConfig(**config), backend=backend)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.shutdown(timeout=1.0)
    getattr(request.module, "GATES", {}).clear()
