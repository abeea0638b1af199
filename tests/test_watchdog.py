"""The loop watchdog: lag measured on every heartbeat, stalls reported with the task to blame."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
from helpers import async_wait_until
from telemetry_kit import instrumented

from observable_tasks import Task, TaskConfig, TaskManager, TaskObserver, TaskStatus
from observable_tasks.telemetry import names

MakeManager = Callable[..., TaskManager]


class Recorder(TaskObserver):
    """Records lag measurements (on the loop) and stalls (from the watcher thread)."""

    def __init__(self, big_lag: float = 0.5) -> None:
        self.lags: list[float] = []
        self.stalls: list[tuple[Task | None, float]] = []
        self.stalled = threading.Event()
        self.big_lag = big_lag
        self.lagged = asyncio.Event()  # made on the test's loop

    def on_loop_lag(self, lag: float) -> None:
        self.lags.append(lag)
        if lag >= self.big_lag:
            self.lagged.set()

    def on_loop_stall(self, task: Task | None, seconds: float) -> None:
        self.stalls.append((task, seconds))
        self.stalled.set()


async def blocker() -> str:
    time.sleep(0.6)  # noqa: ASYNC251 - the point: a task that blocks the event loop
    return "done"


async def test_a_blocking_task_is_reported_once_by_name_and_lag_is_measured(
    make_manager: MakeManager,
) -> None:
    rec = Recorder()
    mgr = make_manager(loop_stall_threshold=0.2, observers=[rec])
    await mgr.start()
    task = await mgr.create_task(blocker, name="the-blocker")
    await mgr.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.COMPLETED
    assert rec.stalled.wait(5)
    await asyncio.wait_for(rec.lagged.wait(), 5)  # the beat that ran after the block
    assert len(rec.stalls) == 1
    blamed, seconds = rec.stalls[0]
    assert blamed is task
    assert 0.2 <= seconds < 0.6
    assert max(rec.lags) >= 0.5


async def test_a_blocked_loop_outside_any_task_is_reported_without_a_task(
    make_manager: MakeManager,
) -> None:
    rec = Recorder()
    mgr = make_manager(loop_stall_threshold=0.2, observers=[rec])
    await mgr.start()
    await asyncio.sleep(0)
    time.sleep(0.5)  # noqa: ASYNC251 - the test itself blocks the loop
    assert rec.stalled.wait(5)
    assert [task for task, _ in rec.stalls] == [None]


async def test_a_normal_workload_reports_lag_but_no_stall(make_manager: MakeManager) -> None:
    rec = Recorder()
    mgr = make_manager(loop_stall_threshold=0.2, observers=[rec])

    async def work(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))
        return i

    for _ in range(5):
        tasks = [await mgr.create_task(work, i) for i in range(100)]
        for task in tasks:
            await mgr.wait_for_task(task.id, timeout=5)
        await asyncio.sleep(0.1)  # about time: heartbeats run every 0.1 s here
    assert rec.lags  # measured
    assert all(lag < 0.2 for lag in rec.lags)
    assert rec.stalls == []


async def test_without_observers_a_stall_is_logged_by_the_core(
    make_manager: MakeManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="observable_tasks")
    mgr = make_manager(loop_stall_threshold=0.2)
    task = await mgr.create_task(blocker)
    await mgr.wait_for_task(task.id, timeout=5)
    lines = [
        r.getMessage() for r in caplog.records if "event loop has been blocked" in r.getMessage()
    ]
    assert len(lines) == 1
    assert task.id in lines[0]
    assert "blocker" in lines[0]


async def test_the_watchdog_starts_with_the_manager_and_stops_on_shutdown(
    make_manager: MakeManager,
) -> None:
    mgr = make_manager(loop_stall_threshold=0.2)
    assert mgr._watchdog is not None
    assert mgr._watchdog.thread is None  # nothing until the manager binds to a loop
    await mgr.start()
    watcher = mgr._watchdog.thread
    assert mgr._watchdog.active
    assert watcher is not None
    assert watcher.is_alive()
    assert watcher.daemon
    await mgr.shutdown()
    assert not mgr._watchdog.active
    await async_wait_until(lambda: not watcher.is_alive(), message="watcher exit")
    await mgr.start()  # and again after a restart
    assert mgr._watchdog.active
    assert mgr._watchdog.thread is not watcher
    assert mgr._watchdog.thread.is_alive()


async def test_none_disables_the_watchdog(make_manager: MakeManager) -> None:
    rec = Recorder()
    mgr = make_manager(loop_stall_threshold=None, observers=[rec])
    await mgr.start()
    assert mgr._watchdog is None
    await asyncio.sleep(0.05)
    assert rec.lags == []


def test_a_loop_that_is_not_running_is_not_blocked() -> None:
    rec = Recorder(big_lag=0.2)
    loop = asyncio.new_event_loop()
    try:
        mgr = TaskManager(TaskConfig(loop_stall_threshold=0.2), observers=[rec])
        loop.run_until_complete(mgr.start())
        time.sleep(0.5)  # the loop is not running: no heartbeat can be due
        loop.run_until_complete(asyncio.sleep(0.3))
        assert rec.lags  # beats ran after the pause
        assert all(lag < 0.2 for lag in rec.lags)
        assert rec.stalls == []
        loop.run_until_complete(mgr.shutdown())
    finally:
        loop.close()


# -- telemetry -------------------------------------------------------------------------------


async def test_the_stall_is_a_warning_log_event_and_the_lag_a_histogram() -> None:
    config = TaskConfig(loop_stall_threshold=0.2, shutdown_timeout=1)
    with instrumented(config) as kit:
        task = await kit.manager.create_task(blocker, name="the-blocker")
        await kit.manager.wait_for_task(task.id, timeout=5)
        count = names.EVENT_LOOP_LAG + "_count"
        await async_wait_until(
            lambda: kit.sample(names.EVENT_LOOP_LAG + "_sum") >= 0.5, message="lag observed"
        )
        (event,) = kit.events("loop.stalled")
        assert event["log_level"] == "warning"
        assert event["task_id"] == task.id
        assert event["task_name"] == "the-blocker"
        assert event["task_function"] == task.function
        assert 0.2 <= event["blocked_s"] < 0.6
        # At least one observation past the 0.25 s bucket: the beat delayed by the block.
        assert kit.sample(count) - kit.sample(names.EVENT_LOOP_LAG + "_bucket", le="0.25") >= 1
        await kit.manager.shutdown()
