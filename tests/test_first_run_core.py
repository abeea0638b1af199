"""Core defects a new user hit first (issue 9): each test failed before its fix."""

from __future__ import annotations

import asyncio
import math
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nexios import NexiosApp
from telemetry_kit import instrumented

import observable_tasks
from observable_tasks import DEFAULT_CONFIG, TaskConfig, TaskManager, TaskStatus
from observable_tasks.telemetry import names

# -- drop-in for nexios-contrib 0.5.0 -------------------------------------------------------


async def double(value: int) -> int:
    return value * 2


async def test_task_manager_takes_nexios_contribs_app_and_config() -> None:
    app = NexiosApp()
    config = TaskConfig(max_concurrent_tasks=3)
    for manager in (
        TaskManager(app, config),
        TaskManager(app=app, config=config),
        TaskManager(config),
        TaskManager(config=config),
    ):
        assert manager.config is config
        task = await manager.create_task(double, 21)
        await manager.wait_for_task(task.id)
        assert task.result == 42
        assert manager.tasks[task.id] is task  # nexios-contrib's manager.tasks
        await manager.shutdown()
    assert TaskManager(app, config).app is app
    assert TaskManager(config).app is None


def test_two_configs_are_refused() -> None:
    with pytest.raises(TypeError, match="two configs"):
        TaskManager(TaskConfig(), TaskConfig())


async def test_a_manager_made_with_an_app_shuts_down_with_it() -> None:
    from nexios.testclient import TestClient

    app = NexiosApp()
    manager = TaskManager(app, TaskConfig(shutdown_timeout=0.1))

    async def start() -> None:
        await manager.start()  # as nexios-contrib's users do in a startup hook

    app.on_startup(start)
    with TestClient(app):
        assert manager.is_accepting
    assert not manager.is_accepting  # start() registered shutdown as the app's hook


def test_default_config_and_to_dict() -> None:
    assert TaskConfig() == DEFAULT_CONFIG
    assert "DEFAULT_CONFIG" in observable_tasks.__all__
    from observable_tasks.config import DEFAULT_CONFIG as from_module

    assert from_module is DEFAULT_CONFIG
    as_dict = TaskConfig(max_concurrent_tasks=7, log_level="DEBUG").to_dict()
    assert as_dict["max_concurrent_tasks"] == 7
    assert as_dict["log_level"] == 10
    assert set(as_dict) >= {
        "max_concurrent_tasks",
        "default_timeout",
        "task_result_ttl",
        "enable_task_history",
        "log_level",
    }
    assert TaskConfig(**as_dict) == TaskConfig(max_concurrent_tasks=7, log_level="DEBUG")


# -- wait_for_task validates its timeout ----------------------------------------------------


@pytest.fixture
async def mgr() -> AsyncIterator[TaskManager]:
    manager = TaskManager(TaskConfig(max_concurrent_tasks=4, shutdown_timeout=0.5))
    yield manager
    await manager.shutdown()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, 0, "5", True])
async def test_wait_for_task_refuses_a_bad_timeout(mgr: TaskManager, bad: Any) -> None:
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    task = await mgr.create_task(blocked)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        await mgr.wait_for_task(task.id, timeout=bad)
    gate.set()
    await mgr.wait_for_task(task.id, timeout=5)


async def test_a_nan_wait_does_not_delay_other_timers(mgr: TaskManager) -> None:
    # Before: timeout=nan was accepted and poisoned the loop's timer heap.
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    task = await mgr.create_task(blocked)
    with pytest.raises(ValueError, match="nan"):
        await mgr.wait_for_task(task.id, timeout=math.nan)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0.02)
    assert loop.time() - start < 1.0
    gate.set()


# -- functions that share one code object ---------------------------------------------------


def _template(value: int) -> int:
    return value


async def test_generated_functions_keep_their_own_name_and_call_check(mgr: TaskManager) -> None:
    one = types.FunctionType(_template.__code__, globals(), "job_one")
    two = types.FunctionType(_template.__code__, globals(), "job_two", (5,))
    first = await mgr.create_task(one, 1)
    second = await mgr.create_task(two)  # takes its default: a call that fits *this* function
    assert (first.name, second.name) == ("job_one", "job_two")
    assert first.function.endswith(".job_one")
    assert second.function.endswith(".job_two")
    with pytest.raises(TypeError, match="job_one"):
        await mgr.create_task(one)  # no default: must be refused at the call, not at run time
    await mgr.wait_for_task(second.id)
    assert second.result == 5


async def test_closures_of_one_def_share_a_name(mgr: TaskManager) -> None:
    def make(k: int) -> Any:
        async def scaled(value: int) -> int:
            return value * k

        return scaled

    tasks = [await mgr.create_task(make(k), 2) for k in range(3)]
    for task in tasks:
        await mgr.wait_for_task(task.id)
    assert [t.result for t in tasks] == [0, 2, 4]
    assert {t.name for t in tasks} == {"scaled"}


# -- async generator functions ----------------------------------------------------------------


async def agen() -> Any:
    yield 1


class AgenCallable:
    async def __call__(self) -> Any:
        yield 1


@pytest.mark.parametrize("func", [agen, AgenCallable()])
async def test_async_generator_functions_are_refused(mgr: TaskManager, func: Any) -> None:
    with pytest.raises(TypeError, match="async generator"):
        await mgr.create_task(func)
    assert mgr.list_tasks() == []


# -- an outcome is counted once, as the final status ----------------------------------------


async def test_a_task_that_swallows_cancellation_at_shutdown_is_counted_once() -> None:
    with instrumented(TaskConfig(max_concurrent_tasks=2), log_started=True) as kit:
        ignored = asyncio.Event()
        release = asyncio.Event()
        ended = asyncio.Event()

        async def stubborn() -> str:
            try:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    ignored.set()
                    await release.wait()  # returns later despite the cancellation
                return "late"
            finally:
                ended.set()

        task = await kit.manager.create_task(stubborn)
        await asyncio.wait_for(kit.manager.shutdown(timeout=0.05), 5)
        assert ignored.is_set()
        assert task.status is TaskStatus.CANCELLED
        release.set()
        await asyncio.wait_for(ended.wait(), 5)
        for _ in range(3):
            await asyncio.sleep(0)  # let the chain unwind

        fn = task.function
        finished = {
            s: kit.sample(names.TASKS_FINISHED + "_total", task=fn, status=s)
            for s in names.FINISHED_STATUSES
        }
        assert finished == {"completed": 0, "failed": 0, "cancelled": 1, "timeout": 0}
        assert kit.sample(names.TASKS_CREATED + "_total", task=fn) == 1
        assert [e["event"] for e in kit.events() if e["event"] != "task.created"] == [
            "task.started",
            "task.cancelled",
        ]
        (process,) = kit.process_spans()
        assert (process.attributes or {})[names.ATTR.TASK_STATUS] == "cancelled"
