"""Telemetry of retries and delayed starts: a span per attempt in one trace, the retries
counter, the task.retrying log line, delayed tasks in the pending gauge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from telemetry_kit import instrumented

from observable_tasks import RetryPolicy, TaskConfig, TaskManager, TaskStatus
from observable_tasks.telemetry import TaskMetrics, TelemetryPipeline, names
from observable_tasks.telemetry.names import ATTR, LOG_EVENTS, RETRYING

POLICY = RetryPolicy(max_attempts=3, on=ConnectionError, backoff=0.05, jitter=False)


def flaky_function(failures: int) -> object:
    attempts = 0

    async def sync_orders() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= failures:
            raise ConnectionError(f"broker gone on attempt {attempts}")
        return "synced"

    return sync_orders


async def test_one_span_per_attempt_in_the_task_trace_and_the_story_is_told() -> None:
    with instrumented() as kit:
        task = await kit.manager.create_task(flaky_function(2), retry=POLICY)
        done = await kit.manager.wait_for_task(task.id, timeout=10)
        assert done.status is TaskStatus.COMPLETED
        (send,) = kit.send_spans()
        attempts = sorted(kit.process_spans(), key=lambda s: s.attributes[ATTR.TASK_ATTEMPT])
        assert [s.attributes[ATTR.TASK_ATTEMPT] for s in attempts] == [1, 2, 3]
        assert all(s.kind is SpanKind.CONSUMER for s in attempts)
        assert {s.context.trace_id for s in attempts} == {send.context.trace_id}
        assert all(
            s.parent is not None and s.parent.span_id == send.context.span_id for s in attempts
        )
        for failed in attempts[:2]:
            assert failed.status.status_code is StatusCode.ERROR
            assert failed.attributes[ATTR.TASK_STATUS] == RETRYING
            assert failed.attributes[ATTR.ERROR_TYPE] == "ConnectionError"
            assert failed.attributes[ATTR.TASK_RETRY_DELAY] >= 0
            assert failed.attributes[ATTR.TASK_MAX_ATTEMPTS] == 3
            (event,) = [e for e in failed.events if e.name == "exception"]
            assert "broker gone" in event.attributes["exception.message"]
        last = attempts[2]
        assert last.status.status_code is StatusCode.UNSET
        assert last.attributes[ATTR.TASK_STATUS] == "completed"
        # the attempts follow each other: the next starts after the one before ended
        assert attempts[0].end_time <= attempts[1].start_time <= attempts[1].end_time
        assert attempts[1].end_time <= attempts[2].start_time


async def test_a_task_that_gives_up_ends_its_last_span_failed() -> None:
    with instrumented() as kit:
        task = await kit.manager.create_task(flaky_function(99), retry=POLICY)
        await kit.manager.wait_for_task(task.id, timeout=10)
        statuses = sorted(
            (s.attributes[ATTR.TASK_ATTEMPT], s.attributes[ATTR.TASK_STATUS])
            for s in kit.process_spans()
        )
        assert statuses == [(1, RETRYING), (2, RETRYING), (3, "failed")]


async def test_retries_counter_and_outcome_counted_once() -> None:
    with instrumented() as kit:
        task = await kit.manager.create_task(flaky_function(2), retry=POLICY)
        await kit.manager.wait_for_task(task.id, timeout=10)
        fn = task.function
        assert kit.sample(names.TASK_RETRIES + "_total", task=fn) == 2
        assert kit.sample(names.TASKS_FINISHED + "_total", task=fn, status="completed") == 1
        assert kit.sample(names.TASKS_FINISHED + "_total", task=fn, status="failed") == 0
        assert kit.sample(names.TASK_DURATION + "_count", task=fn, status="completed") == 1
        assert kit.sample(names.TASKS_CREATED + "_total", task=fn) == 1
        exposed = generate_latest(kit.registry).decode()
        assert f'{names.metric_name(names.TASK_RETRIES)}_total{{task="{fn}"}} 2.0' in exposed


async def test_task_retrying_log_lines_carry_attempt_delay_and_error_type() -> None:
    with instrumented(log_started=True) as kit:  # task.started is DEBUG by default
        task = await kit.manager.create_task(flaky_function(2), retry=POLICY)
        await kit.manager.wait_for_task(task.id, timeout=10)
        retrying = kit.events(LOG_EVENTS["retrying"])
        assert [e["attempt"] for e in retrying] == [1, 2]
        for line in retrying:
            assert line["log_level"] == "warning"
            assert line["task_id"] == task.id
            assert line["error_type"] == "ConnectionError"
            assert line["max_attempts"] == 3
            assert 0 <= line["delay_s"] <= 0.1
            assert line["next_attempt_at"] is not None
            assert "trace_id" in line
        assert kit.events(LOG_EVENTS["failed"]) == []  # a retried attempt is no failure
        (completed,) = kit.events(LOG_EVENTS["completed"])
        assert completed["attempt"] == 3
        started = kit.events(LOG_EVENTS["started"])
        assert [e.get("attempt") for e in started] == [None, 2, 3]


async def test_a_delayed_task_counts_as_pending_and_its_creation_says_when() -> None:
    with instrumented(TaskConfig(max_concurrent_tasks=2)) as kit:

        async def later() -> None:
            return None

        task = await kit.manager.create_task(later, delay=30, key="nightly")
        scraped = generate_latest(kit.registry).decode()
        pending = names.metric_name(names.TASKS_PENDING)
        assert f'{pending}{{task="{task.function}"}} 1.0' in scraped
        (created,) = kit.events(LOG_EVENTS["created"])
        assert created["delay_s"] == 30
        assert created["key"] == "nightly"
        (send,) = kit.send_spans()
        assert send.attributes[ATTR.TASK_KEY] == "nightly"
        assert await kit.manager.cancel_task(task.id)
        scraped = generate_latest(kit.registry).decode()
        assert f'{pending}{{task="{task.function}"}} 0.0' in scraped
        assert kit.process_spans() == []  # it never ran


async def test_a_retry_waits_as_pending_in_the_gauge_without_a_slot() -> None:
    with instrumented(TaskConfig(max_concurrent_tasks=1)) as kit:
        slow_policy = RetryPolicy(max_attempts=2, on=ConnectionError, backoff=30, jitter=False)
        events = kit.manager.task_events()
        task = await kit.manager.create_task(flaky_function(1), retry=slow_policy)
        async for event in events:
            if event.kind == "retrying":
                break
        await events.aclose()
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 1)
        assert kit.manager.running_count == 0
        assert kit.manager.pending_count == 1
        scraped = generate_latest(kit.registry).decode()
        pending = names.metric_name(names.TASKS_PENDING)
        assert f'{pending}{{task="{task.function}"}} 1.0' in scraped

        async def other() -> str:
            return "ran"

        done = await kit.manager.create_task(other)  # the slot is free meanwhile
        assert (await kit.manager.wait_for_task(done.id, timeout=5)).result == "ran"
        assert await kit.manager.cancel_task(task.id)


def gauges(registry: Any, function: str) -> tuple[float, float]:
    def value(suffix: str) -> float:
        sample = registry.get_sample_value(names.metric_name(suffix), {"task": function})
        return 0.0 if sample is None else float(sample)

    return value(names.TASKS_PENDING), value(names.TASKS_SCHEDULED)


@pytest.mark.parametrize("multiprocess", [False, True], ids=["scrape-time", "multiprocess"])
async def test_scheduled_is_the_part_of_pending_that_waits_for_a_planned_time(
    multiprocess: bool,
) -> None:
    registry = CollectorRegistry()
    manager = TaskManager(TaskConfig(max_concurrent_tasks=1, shutdown_timeout=1))
    metrics = TaskMetrics(registry, multiprocess=multiprocess)
    metrics.attach(manager)
    pipeline = TelemetryPipeline([metrics], report=manager.report_internal_error)
    manager.add_observer(pipeline)
    manager.add_middleware(pipeline, guarded=False)
    gate = asyncio.Event()
    retry = RetryPolicy(max_attempts=2, on=ConnectionError, backoff=0.2, jitter=False)

    entered = asyncio.Event()

    async def hold() -> None:
        entered.set()
        await gate.wait()

    async def once_down(failed: list[int]) -> None:
        if not failed:
            failed.append(1)
            raise ConnectionError("down once")

    blocker = await manager.create_task(hold)
    await entered.wait()  # running (in multiprocess mode, off the pending gauge once it runs)
    queued = await manager.create_task(hold)  # waits for the slot: backlog
    planned = await manager.create_task(hold, delay=60)  # waits for its time: no backlog
    fn = blocker.function
    assert gauges(registry, fn) == (2, 1)
    assert await manager.cancel_task(planned.id)
    assert gauges(registry, fn) == (1, 0)
    gate.set()
    await manager.wait_for_task(queued.id, timeout=5)
    assert gauges(registry, fn) == (0, 0)

    events = manager.task_events()
    flaky = await manager.create_task(once_down, [], retry=retry)
    async for event in events:
        if event.kind == "retrying":
            break
    assert gauges(registry, flaky.function) == (1, 1)  # waiting for its next attempt
    due = await manager.create_task(hold, delay=0.05)
    done = await manager.wait_for_task(flaky.id, timeout=5)
    assert done.status is TaskStatus.COMPLETED
    await manager.wait_for_task(due.id, timeout=5)
    assert gauges(registry, flaky.function) == (0, 0)
    assert gauges(registry, fn) == (0, 0)  # the delayed one became due, then ran
    await events.aclose()
    await manager.shutdown()
