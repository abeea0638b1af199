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
