"""Telemetry over the Redis backend: one trace per task across managers that share only Redis,
outcomes counted once where they ran, queue gauges read from Redis at scrape time."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from redis_server import redis_server_available
from telemetry_kit import captured_structlog

from observable_tasks import TaskConfig, TaskManager, TaskStatus
from observable_tasks.backends.redis import RedisBackend
from observable_tasks.telemetry import instrument, names

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="needs redis-server")


async def add(a: int, b: int) -> int:
    return a + b


async def broken() -> None:
    raise KeyError("missing")


class Side:
    """One "process": a manager with its own registry and spans, sharing only Redis."""

    def __init__(self, url: str, queue: str, *, execute: bool) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = CollectorRegistry()
        backend = RedisBackend(url, queue=queue, execute=execute, lease=2.0, allow=[__name__])
        self.manager = TaskManager(TaskConfig(max_concurrent_tasks=4), backend=backend)
        instrument(self.manager, tracer_provider=self.provider, registry=self.registry)

    def sample(self, suffix: str, **labels: str) -> float:
        value = self.registry.get_sample_value(names.metric_name(suffix), labels)
        return 0.0 if value is None else value


@pytest.fixture
async def sides(redis_url: str) -> AsyncIterator[dict[str, Side]]:
    queue = secrets.token_hex(4)
    with captured_structlog():
        web = Side(redis_url, queue, execute=False)
        worker = Side(redis_url, queue, execute=True)
        yield {"web": web, "worker": worker}
        for side in (web, worker):
            await side.manager.shutdown(timeout=1.0)


async def test_one_trace_across_the_two_sides(sides: dict[str, Side]) -> None:
    web, worker = sides["web"], sides["worker"]
    await web.manager.start()
    task = await web.manager.create_task(add, 2, 3)
    await worker.manager.start()
    done = await web.manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.COMPLETED
    assert done.result == 5
    (send,) = [s for s in web.exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    (process,) = [s for s in worker.exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert not [s for s in web.exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert (process.attributes or {})[names.ATTR.TASK_STATUS] == "completed"

    fn = f"{__name__}.add"
    # Created where created, finished where it ran: each exactly once.
    assert web.sample(names.TASKS_CREATED + "_total", task=fn) == 1
    assert worker.sample(names.TASKS_CREATED + "_total", task=fn) == 0
    finished = names.TASKS_FINISHED + "_total"
    assert worker.sample(finished, task=fn, status="completed") == 1
    assert web.sample(finished, task=fn, status="completed") == 0


async def test_failures_are_counted_where_they_ran(sides: dict[str, Side]) -> None:
    web, worker = sides["web"], sides["worker"]
    await worker.manager.start()
    await web.manager.start()
    task = await web.manager.create_task(broken)
    done = await web.manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.FAILED
    assert "missing" in str(done.error)
    fn = f"{__name__}.broken"
    assert worker.sample(names.TASK_ERRORS + "_total", task=fn, error_type="KeyError") == 1
    assert worker.sample(names.TASKS_FINISHED + "_total", task=fn, status="failed") == 1


async def test_queue_gauges_are_read_from_redis_at_scrape_time(sides: dict[str, Side]) -> None:
    web, worker = sides["web"], sides["worker"]
    await web.manager.start()
    tasks = [await web.manager.create_task(add, i, i) for i in range(3)]
    labels: dict[str, Any] = {"queue": web.manager.backend.keys.queue}  # type: ignore[union-attr]
    assert web.sample(names.QUEUE_UP, **labels) == 1
    assert web.sample(names.QUEUE_PENDING, **labels) == 3
    assert web.sample(names.QUEUE_SCHEDULED, **labels) == 0
    later = await web.manager.create_task(add, 1, 2, delay=600)
    assert web.sample(names.QUEUE_PENDING, **labels) == 4  # a planned task waits too ...
    assert web.sample(names.QUEUE_SCHEDULED, **labels) == 1  # ... for its time, not a worker
    assert await web.manager.cancel_task(later.id)
    assert web.sample(names.QUEUE_SCHEDULED, **labels) == 0
    assert web.sample(names.QUEUE_WORKERS, **labels) == 0
    assert web.sample(names.QUEUE_OLDEST_AGE, **labels) >= 0
    # A web-only process contributes no capacity.
    assert web.sample(names.TASKS_CONCURRENCY_LIMIT) == 0

    await worker.manager.start()
    for task in tasks:
        await web.manager.wait_for_task(task.id, timeout=10)
    assert web.sample(names.QUEUE_PENDING, **labels) == 0
    assert web.sample(names.QUEUE_RUNNING, **labels) == 0
    assert web.sample(names.QUEUE_WORKERS, **labels) == 1
    assert worker.sample(names.TASKS_CONCURRENCY_LIMIT) == 4
    await asyncio.sleep(0)


async def test_a_pending_task_cancelled_is_counted_and_logged_where_it_was_cancelled(
    redis_url: str,
) -> None:
    queue = secrets.token_hex(4)
    with captured_structlog() as logs:
        web = Side(redis_url, queue, execute=False)  # no worker: the task stays queued
        await web.manager.start()
        task = await web.manager.create_task(add, 1, 1)
        later = await web.manager.create_task(add, 2, 2, delay=600)
        assert await web.manager.cancel_task(task.id)
        assert await web.manager.cancel_task(later.id)
        fn = f"{__name__}.add"
        assert web.sample(names.TASKS_FINISHED + "_total", task=fn, status="cancelled") == 2
        lines = [e for e in logs.entries if e["event"] == "task.cancelled"]
        assert sorted(e["task_id"] for e in lines) == sorted([task.id, later.id])
        assert all(e["was_running"] is False for e in lines)
        assert not await web.manager.cancel_task(task.id)  # once
        assert web.sample(names.TASKS_FINISHED + "_total", task=fn, status="cancelled") == 2
        await web.manager.shutdown(timeout=1.0)
