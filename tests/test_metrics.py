"""Prometheus metrics: bounded labels, gauges computed at scrape time, failsafe counting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from telemetry_kit import instrumented

from observable_tasks import TaskConfig, TaskManager, TaskObserver
from observable_tasks.telemetry import LabelLimiter, TaskMetrics, instrument, names

TOTAL = "_total"


async def noop() -> None:
    return None


async def other() -> None:
    return None


async def third() -> None:
    return None


async def fourth() -> None:
    return None


async def test_labels_use_the_function_not_the_display_name() -> None:
    with instrumented() as kit:
        for i in range(5):
            task = await kit.manager.create_task(noop, name=f"process_file_{i}.txt")
            await kit.manager.wait_for_task(task.id)
        text = generate_latest(kit.registry).decode()
        assert "process_file_" not in text
        assert task.id not in text
        fn = task.function
        assert fn == "test_metrics.noop"
        assert kit.sample(names.TASKS_FINISHED + TOTAL, task=fn, status="completed") == 5
        # Every status is pre-created at 0, so rate() sees the first increase.
        assert (
            kit.registry.get_sample_value(
                names.metric_name(names.TASKS_FINISHED + TOTAL), {"task": fn, "status": "timeout"}
            )
            == 0.0
        )
        assert kit.sample(names.TASK_LAST_SUCCESS, task=fn) > 1.7e9


async def test_label_cap_folds_the_excess_and_counts_it() -> None:
    with instrumented(max_task_labels=2) as kit:
        for fn in (noop, other, third, fourth):
            task = await kit.manager.create_task(fn)
            await kit.manager.wait_for_task(task.id)
        created = names.TASKS_CREATED + TOTAL
        assert kit.sample(created, task="test_metrics.noop") == 1
        assert kit.sample(created, task="test_metrics.other") == 1
        assert kit.sample(created, task=names.OVERFLOW_VALUE) == 2
        assert kit.sample(created, task="test_metrics.third") == 0
        assert kit.sample(names.LABEL_OVERFLOW + TOTAL, label="task") >= 2


async def test_running_pending_and_limit_are_read_at_scrape_time() -> None:
    with instrumented(TaskConfig(max_concurrent_tasks=2)) as kit:
        gate = asyncio.Event()
        started = asyncio.Event()

        async def blocked() -> None:
            started.set()
            await gate.wait()

        tasks = [await kit.manager.create_task(blocked) for _ in range(5)]
        await started.wait()
        fn = tasks[0].function
        assert kit.sample(names.TASKS_RUNNING, task=fn) == 2
        assert kit.sample(names.TASKS_PENDING, task=fn) == 3
        assert kit.sample(names.TASKS_CONCURRENCY_LIMIT) == 2
        gate.set()
        await asyncio.gather(*(kit.manager.wait_for_task(t.id) for t in tasks))
        assert kit.sample(names.TASKS_RUNNING, task=fn) == 0
        assert kit.sample(names.TASKS_PENDING, task=fn) == 0
        assert kit.sample(names.TASK_QUEUE_WAIT + "_count", task=fn) == 5


async def test_two_managers_share_one_registry_without_duplicate_errors() -> None:
    registry = CollectorRegistry()
    first = TaskManager(TaskConfig(max_concurrent_tasks=3))
    second = TaskManager(TaskConfig(max_concurrent_tasks=4))
    instrument(first, registry=registry, tracing=False, logs=False)
    instrument(second, registry=registry, tracing=False, logs=False)
    for manager in (first, second):
        task = await manager.create_task(noop)
        await manager.wait_for_task(task.id)
    value = registry.get_sample_value
    limit = names.metric_name(names.TASKS_CONCURRENCY_LIMIT)
    assert value(limit) == 7
    created = names.metric_name(names.TASKS_CREATED + TOTAL)
    assert value(created, {"task": "test_metrics.noop"}) == 2


async def test_failures_in_telemetry_are_counted_and_never_fail_the_task() -> None:
    class Broken(TaskObserver):
        def on_created(self, task: object) -> None:
            raise RuntimeError("observer bug")

    async def broken_middleware(task: object, call_next: object) -> None:
        raise RuntimeError("middleware bug")

    with instrumented() as kit:
        kit.manager.add_observer(Broken())
        kit.manager.add_middleware(broken_middleware, name="broken")
        task = await kit.manager.create_task(noop)
        await kit.manager.wait_for_task(task.id)
        assert task.status.value == "COMPLETED"
        errors = names.TELEMETRY_ERRORS + TOTAL
        assert kit.sample(errors, component="Broken.on_created") == 1
        assert kit.sample(errors, component="broken") == 1
        assert kit.manager.internal_errors["broken"] == 1


async def test_errors_by_type_and_durations_by_status() -> None:
    async def fails() -> None:
        raise LookupError("x")

    async def slow() -> None:
        await asyncio.sleep(5)

    with instrumented() as kit:
        for fn, timeout in ((fails, None), (fails, None), (slow, 0.05)):
            task = await kit.manager.create_task(fn, timeout=timeout)
            await kit.manager.wait_for_task(task.id)
        f = "test_metrics.test_errors_by_type_and_durations_by_status.<locals>.fails"
        s = "test_metrics.test_errors_by_type_and_durations_by_status.<locals>.slow"
        assert kit.sample(names.TASK_ERRORS + TOTAL, task=f, error_type="LookupError") == 2
        assert kit.sample(names.TASK_ERRORS + TOTAL, task=s, error_type="TaskTimeoutError") == 1
        assert kit.sample(names.TASK_DURATION + "_count", task=s, status="timeout") == 1
        assert kit.sample(names.TASK_DURATION + "_sum", task=s, status="timeout") >= 0.04


def test_every_metric_in_names_is_exported() -> None:
    registry = CollectorRegistry()
    TaskMetrics(registry)
    manager = TaskManager()
    metrics = TaskMetrics(registry)
    metrics.attach(manager)
    families = {m.name for m in registry.collect()}
    for suffix in names.METRICS:
        assert names.metric_name(suffix) in families, suffix


async def test_known_series_start_at_zero() -> None:
    with instrumented() as kit:
        task = await kit.manager.create_task(noop)
        await kit.manager.wait_for_task(task.id)
        value = kit.registry.get_sample_value
        errors = names.metric_name(names.TASK_ERRORS + TOTAL)
        assert value(errors, {"task": task.function, "error_type": "TaskTimeoutError"}) == 0.0
        telemetry = names.metric_name(names.TELEMETRY_ERRORS + TOTAL)
        for component in ("tracing", "metrics", "logs"):
            assert value(telemetry, {"component": component}) == 0.0


def test_demo_concurrency_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from observable_tasks.demo import create_app

    monkeypatch.setenv("DEMO_MAX_CONCURRENT_TASKS", "3")
    app = create_app(registry=CollectorRegistry(), tracing=False, logs=False)
    assert app.state["task_manager"].config.max_concurrent_tasks == 3


def _distinct_functions(count: int, *, fail: bool = False) -> list[Callable[[], Awaitable[None]]]:
    """``count`` task functions with distinct qualified names (as distinct labels), each with
    its own code object (call shapes are cached per code object)."""
    body = "raise LookupError('x')" if fail else "return None"
    made = []
    for i in range(count):
        scope: dict[str, Any] = {}
        name = f"generated_{'failing' if fail else 'ok'}_{i}"
        exec(f"async def {name}():\n    {body}\n", scope)
        made.append(scope[name])
    return made


async def test_overflow_counts_distinct_folded_values_not_lookups() -> None:
    overflow = names.LABEL_OVERFLOW + TOTAL
    with instrumented(max_task_labels=5) as kit:
        ok, failing = _distinct_functions(20), _distinct_functions(10, fail=True)
        for _ in range(3):  # the same functions again: nothing new is folded
            for fn in ok + failing:
                task = await kit.manager.create_task(fn)
                await kit.manager.wait_for_task(task.id)
        gate = asyncio.Event()

        async def blocked() -> None:
            await gate.wait()

        running = await kit.manager.create_task(blocked)
        for _ in range(5):  # scrapes fold running tasks' labels again
            generate_latest(kit.registry)
        gate.set()
        await kit.manager.wait_for_task(running.id)
        # 31 distinct functions, 5 admitted: 26 folded, each counted once.
        assert kit.sample(overflow, label="task") == 26
        assert kit.sample(names.TASKS_CREATED + TOTAL, task=names.OVERFLOW_VALUE) == 26 * 3 - 2
        assert kit.sample(overflow, label="error_type") == 0


def test_overflow_memory_is_capped_and_the_count_then_saturates() -> None:
    registry = CollectorRegistry()
    counter = Counter("overflow", "test", ["label"], registry=registry)
    limiter = LabelLimiter("task", 2, counter, remember_folded=3)
    assert LabelLimiter("task", 4, counter).remember_folded == 40
    values = [f"v{i}" for i in range(10)]
    assert [limiter(v) for v in values] == ["v0", "v1"] + [names.OVERFLOW_VALUE] * 8
    assert [limiter(v) for v in values][:2] == ["v0", "v1"]
    assert limiter.folded == 3
    assert registry.get_sample_value("overflow_total", {"label": "task"}) == 3
