"""A randomised workload must leave telemetry that tells the exact truth about it."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import structlog
from opentelemetry.trace import StatusCode
from telemetry_kit import hex_id, instrumented

from observable_tasks import TaskConfig, TaskStatus, update_task_progress
from observable_tasks.telemetry import names

KINDS = ("ok", "fail", "timeout", "progress", "cancel_running", "cancel_pending")
EXPECTED = {
    "ok": TaskStatus.COMPLETED,
    "progress": TaskStatus.COMPLETED,
    "fail": TaskStatus.FAILED,
    "timeout": TaskStatus.TIMEOUT,
    "cancel_running": TaskStatus.CANCELLED,
    "cancel_pending": TaskStatus.CANCELLED,
}

user_log = structlog.get_logger("user")


async def job(kind: str, started: asyncio.Event, task_id: str) -> str:
    user_log.info("user.inside", kind=kind)
    started.set()
    if kind == "fail":
        raise KeyError(kind)
    if kind == "progress":
        for value in (20.0, 40.0, 60.0, 80.0, 100.0):
            await update_task_progress(task_id, value)
    if kind in ("timeout", "cancel_running"):
        await asyncio.Event().wait()  # only a timeout or a cancel ends this
    return kind


async def test_randomised_workload_is_reported_truthfully() -> None:
    rng = random.Random(20261129)
    kinds = [rng.choice(KINDS) for _ in range(300)]
    with instrumented(TaskConfig(max_concurrent_tasks=8)) as kit:
        manager = kit.manager
        created = []
        for kind in kinds:
            started = asyncio.Event()
            timeout = 0.05 if kind == "timeout" else None
            task = await manager.create_task(job, kind, started, timeout=timeout)
            created.append((kind, task, started))
            if kind == "cancel_pending":
                assert await manager.cancel_task(task.id)

        async def cancel_when_running(task_id: str, started: asyncio.Event) -> None:
            await started.wait()
            assert await manager.cancel_task(task_id)

        await asyncio.gather(
            *(cancel_when_running(t.id, s) for k, t, s in created if k == "cancel_running")
        )
        await asyncio.gather(*(manager.wait_for_task(t.id) for _, t, _ in created))

        # Every task ended as its kind dictates (a cancel_pending task may have started first).
        for kind, task, _ in created:
            assert task.status is EXPECTED[kind], (kind, task)
        truth = Counter(task.status.value.lower() for _, task, _ in created)
        started_tasks = [t for _, t, _ in created if t.started_at is not None]
        fn = created[0][1].function

        # Counters per status equal the true outcomes; gauges are back to 0.
        assert kit.sample(names.TASKS_CREATED + "_total", task=fn) == len(kinds)
        for status in names.FINISHED_STATUSES:
            finished = kit.sample(names.TASKS_FINISHED + "_total", task=fn, status=status)
            assert finished == truth.get(status, 0), status
        assert kit.sample(names.TASKS_RUNNING, task=fn) == 0
        assert kit.sample(names.TASKS_PENDING, task=fn) == 0
        assert (
            kit.sample(names.TASK_ERRORS + "_total", task=fn, error_type="KeyError")
            == truth["failed"]
        )
        assert (
            kit.sample(names.TASK_ERRORS + "_total", task=fn, error_type="TaskTimeoutError")
            == truth["timeout"]
        )
        # Histograms count exactly the executions.
        durations = sum(
            kit.sample(names.TASK_DURATION + "_count", task=fn, status=s)
            for s in names.FINISHED_STATUSES
        )
        assert durations == len(started_tasks)
        assert kit.sample(names.TASK_QUEUE_WAIT + "_count", task=fn) == len(started_tasks)

        # Exactly one process span per started task, with the right status and parent.
        sends = {s.attributes[names.ATTR.MESSAGE_ID]: s for s in kit.send_spans()}
        processes: dict[Any, list[Any]] = {}
        for span in kit.process_spans():
            processes.setdefault(span.attributes[names.ATTR.MESSAGE_ID], []).append(span)
        assert len(sends) == len(kinds)
        assert set(processes) == {t.id for t in started_tasks}
        trace_of: dict[str, str] = {}
        for task in started_tasks:
            (span,) = processes[task.id]
            send = sends[task.id]
            assert span.parent is not None
            assert span.parent.span_id == send.context.span_id
            assert span.context.trace_id == send.context.trace_id
            assert span.attributes[names.ATTR.TASK_STATUS] == task.status.value.lower()
            if task.status in (TaskStatus.FAILED, TaskStatus.TIMEOUT):
                assert span.status.status_code is StatusCode.ERROR
                assert span.attributes[names.ATTR.ERROR_TYPE] in ("KeyError", "TaskTimeoutError")
            else:
                assert span.status.status_code is StatusCode.UNSET
            trace_of[task.id] = hex_id(span.context.trace_id, 32)
        for task_id, send in sends.items():
            trace_of.setdefault(task_id, hex_id(send.context.trace_id, 32))

        # Every task log line carries its task id and that task's trace id, the user's own too.
        lines = [e for e in kit.events() if "task_id" in e]
        assert {e["task_id"] for e in lines} == {t.id for _, t, _ in created}
        for entry in lines:
            assert entry["trace_id"] == trace_of[entry["task_id"]], entry
        inside = kit.events("user.inside")
        ran = [t for _, t, started in created if started.is_set()]  # the function body ran
        assert len(inside) == len(ran)
        assert all("task_id" in e and "trace_id" in e for e in inside)
        assert len(kit.events("task.completed")) == truth["completed"]
        assert len(kit.events("task.failed")) == truth["failed"]
        assert len(kit.events("task.timeout")) == truth["timeout"]
        assert len(kit.events("task.cancelled")) == truth["cancelled"]
        assert manager.internal_errors == Counter()
        await manager.shutdown()
