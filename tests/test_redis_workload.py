"""Telemetry truth across "processes": a randomised workload (success, failure, timeout, cancel,
progress) created through two web-only managers and run by two executing managers that share
only Redis. Counters summed over the executing side equal the true outcomes, every CONSUMER
span has its task's PRODUCER span as parent, and every task log line carries its task's id and
trace id. (Real worker processes: test_redis_faults.py.)"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import Counter
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from redis_server import redis_server_available
from telemetry_kit import captured_structlog, hex_id

from observable_tasks import TaskConfig, TaskManager, TaskStatus, update_task_progress
from observable_tasks.backends.redis import RedisBackend
from observable_tasks.telemetry import instrument, names

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="needs redis-server")

KINDS = ("ok", "fail", "timeout", "progress", "cancel")
EXPECTED = {
    "ok": TaskStatus.COMPLETED,
    "fail": TaskStatus.FAILED,
    "timeout": TaskStatus.TIMEOUT,
    "progress": TaskStatus.COMPLETED,
    "cancel": TaskStatus.CANCELLED,
}


async def job(kind: str, task_id: str) -> str:
    structlog.get_logger("user").info("user.inside", kind=kind)
    if kind == "fail":
        raise KeyError(kind)
    if kind in ("timeout", "cancel"):
        await asyncio.sleep(30)
    if kind == "progress":
        for step in (25.0, 50.0, 100.0):
            await update_task_progress(task_id, step)
    return kind


def side(url: str, queue: str, provider: TracerProvider, *, execute: bool) -> Any:
    registry = CollectorRegistry()
    backend = RedisBackend(url, queue=queue, execute=execute, lease=5.0, allow=[__name__])
    manager = TaskManager(TaskConfig(max_concurrent_tasks=4), backend=backend)
    instrument(manager, tracer_provider=provider, registry=registry)
    return manager, registry


async def test_randomised_workload_is_reported_truthfully(redis_url: str) -> None:
    rng = random.Random(20261201)
    queue = secrets.token_hex(4)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with captured_structlog() as logs:
        webs = [side(redis_url, queue, provider, execute=False) for _ in range(2)]
        workers = [side(redis_url, queue, provider, execute=True) for _ in range(2)]
        everyone = [m for m, _ in webs + workers]
        try:
            for manager in everyone:
                await manager.start()
            created = []
            for i in range(60):
                kind = rng.choice(KINDS)
                web, _ = webs[i % 2]
                timeout = 0.2 if kind == "timeout" else None
                task = await web.create_task(job, kind, timeout=timeout)
                created.append((kind, task))
            for i, (kind, task) in enumerate(created):
                if kind == "cancel":
                    # Cancel from the other web process: wait until it runs, then cancel.
                    other, _ = webs[(i + 1) % 2]
                    for _ in range(1000):
                        seen = await other.aget_task(task.id)
                        if seen is not None and seen.status is TaskStatus.RUNNING:
                            break
                        await asyncio.sleep(0.01)
                    assert await other.cancel_task(task.id), task
            finals = [await webs[0][0].wait_for_task(t.id, timeout=20) for _, t in created]
            for (kind, _), final in zip(created, finals, strict=True):
                assert final.status is EXPECTED[kind], (kind, final, final.error)
        finally:
            for manager in everyone:
                await manager.shutdown(timeout=2.0)

    truth = Counter(names.STATUS_LABELS[f.status.value] for f in finals)
    fn = f"{__name__}.job"

    def total(registries: list[Any], suffix: str, **labels: str) -> float:
        metric = names.metric_name(suffix)
        return sum(r.get_sample_value(metric, {"task": fn, **labels}) or 0 for r in registries)

    web_regs = [r for _, r in webs]
    worker_regs = [r for _, r in workers]
    assert total(web_regs, names.TASKS_CREATED + "_total") == len(created)
    assert total(worker_regs, names.TASKS_CREATED + "_total") == 0
    for status in names.FINISHED_STATUSES:
        counted = total(worker_regs, names.TASKS_FINISHED + "_total", status=status)
        assert counted == truth.get(status, 0), status
        assert total(web_regs, names.TASKS_FINISHED + "_total", status=status) == 0
    assert (
        total(worker_regs, names.TASK_ERRORS + "_total", error_type="KeyError") == truth["failed"]
    )
    # Both workers took part (a lone worker would hide a lost-update or double-count bug).
    ran_on = [total([r], names.TASK_QUEUE_WAIT + "_count") for r in worker_regs]
    assert all(n > 0 for n in ran_on), ran_on

    spans = exporter.get_finished_spans()
    sends = {s.attributes[names.ATTR.MESSAGE_ID]: s for s in spans if s.kind is SpanKind.PRODUCER}
    processes = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert len(sends) == len(created)
    assert len(processes) == len(created)  # one per attempt; no task ran twice here
    for process in processes:
        send = sends[process.attributes[names.ATTR.MESSAGE_ID]]
        assert process.parent is not None
        assert process.parent.span_id == send.context.span_id
        assert process.context.trace_id == send.context.trace_id
        assert process.attributes[names.ATTR.TASK_ATTEMPT] == 1
    trace_of = {tid: hex_id(s.context.trace_id, 32) for tid, s in sends.items()}
    lines = [e for e in logs.entries if "task_id" in e]
    assert {e["task_id"] for e in lines} == {t.id for _, t in created}
    for entry in lines:
        assert entry.get("trace_id") == trace_of[entry["task_id"]], entry
    inside = [e for e in logs.entries if e["event"] == "user.inside"]
    # A cancel may land between the claim and the function's first line: its body never ran.
    bodies = {t.id for k, t in created if k != "cancel"}
    assert bodies <= {e["task_id"] for e in inside}
    assert len(inside) <= len(created)
    assert all(e["trace_id"] == trace_of[e["task_id"]] for e in inside)
