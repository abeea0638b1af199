"""Sync tasks run on the manager's own daemon threads; threads that cannot be stopped are let go."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import async_wait_until

from observable_tasks import TaskManager, TaskStatus
from observable_tasks.threads import SyncThreads

MakeManager = Callable[..., TaskManager]


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set after the test: lets every hanging sync function of the test return."""
    event = threading.Event()
    yield event
    event.set()


def hang_until(event: threading.Event) -> Callable[[], str]:
    def hang() -> str:
        event.wait(30)
        return "late"

    return hang


async def test_sync_tasks_run_on_the_managers_daemon_threads(make_manager: MakeManager) -> None:
    mgr = make_manager()

    def where() -> tuple[str, bool]:
        thread = threading.current_thread()
        return thread.name, thread.daemon

    task = await mgr.create_task(where)
    await mgr.wait_for_task(task.id, timeout=5)
    assert task.result == ("observable-tasks-sync", True)
    # The loop's default executor was never created (asyncio.to_thread would have).
    assert asyncio.get_running_loop()._default_executor is None  # type: ignore[attr-defined]


async def test_at_most_max_sync_threads_run_at_once(make_manager: MakeManager) -> None:
    mgr = make_manager(max_sync_threads=2)
    lock = threading.Lock()
    gate = threading.Event()
    active = peak = 0

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        gate.wait(10)
        with lock:
            active -= 1

    tasks = [await mgr.create_task(work) for _ in range(5)]
    await async_wait_until(lambda: active == 2, message="two sync tasks running")
    gate.set()
    for task in tasks:
        await mgr.wait_for_task(task.id, timeout=5)
    assert all(t.status is TaskStatus.COMPLETED for t in tasks)
    assert peak == 2
    assert mgr._threads.threads <= 2


async def test_timed_out_threads_are_abandoned_and_new_sync_tasks_still_run(
    make_manager: MakeManager, release: threading.Event
) -> None:
    mgr = make_manager(max_sync_threads=2)
    hung = [await mgr.create_task(hang_until(release), timeout=0.05) for _ in range(2)]
    for task in hung:
        await mgr.wait_for_task(task.id, timeout=5)
    assert [t.status for t in hung] == [TaskStatus.TIMEOUT] * 2
    assert mgr.abandoned_threads == 2

    fresh = await mgr.create_task(lambda: "fresh")  # the pool has room: abandoned do not count
    await mgr.wait_for_task(fresh.id, timeout=5)
    assert fresh.result == "fresh"

    release.set()  # the abandoned functions return; their threads rejoin the pool
    await async_wait_until(lambda: mgr.abandoned_threads == 0, message="threads returned")
    assert mgr._threads.threads <= 2 + 1  # shrinking back to the pool size (one may be exiting)


async def test_a_cancelled_sync_task_abandons_its_thread(
    make_manager: MakeManager, release: threading.Event
) -> None:
    mgr = make_manager(max_sync_threads=1)
    entered = threading.Event()

    def hang() -> None:
        entered.set()
        release.wait(30)

    task = await mgr.create_task(hang)
    assert await asyncio.to_thread(entered.wait, 5)
    assert await mgr.cancel_task(task.id) is True
    assert mgr.abandoned_threads == 1
    fresh = await mgr.create_task(lambda: 7)
    await mgr.wait_for_task(fresh.id, timeout=5)
    assert fresh.result == 7


async def test_sync_work_cancelled_before_it_got_a_thread_never_runs(
    make_manager: MakeManager, release: threading.Event
) -> None:
    mgr = make_manager(max_sync_threads=1)
    ran: list[str] = []
    entered = threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    holder = await mgr.create_task(hold)
    assert await asyncio.to_thread(entered.wait, 5)
    queued = await mgr.create_task(lambda: ran.append("queued"))
    await asyncio.sleep(0)  # let it reach the pool's queue
    assert await mgr.cancel_task(queued.id) is True
    release.set()
    await mgr.wait_for_task(holder.id, timeout=5)
    after = await mgr.create_task(lambda: ran.append("after"))
    await mgr.wait_for_task(after.id, timeout=5)
    assert ran == ["after"]
    assert mgr.abandoned_threads == 0


async def test_past_the_hard_cap_new_sync_work_waits_and_that_is_logged_once(
    make_manager: MakeManager, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = make_manager(max_sync_threads=1)  # so at most 2 threads in all
    caplog.set_level(logging.WARNING, logger="observable_tasks")
    for _ in range(2):  # one after the other: the second needs the thread the first left
        hung = await mgr.create_task(hang_until(release), timeout=0.05)
        await mgr.wait_for_task(hung.id, timeout=5)
        assert hung.status is TaskStatus.TIMEOUT
    assert mgr.abandoned_threads == 2
    assert mgr._threads.threads == 2

    waiting = [await mgr.create_task(lambda i=i: i) for i in range(2)]
    await asyncio.sleep(0.05)  # about time: nothing may run while the cap is reached
    assert all(t.status is TaskStatus.RUNNING for t in waiting)
    capped = [r for r in caplog.records if "cap of 2 threads" in r.getMessage()]
    assert len(capped) == 1

    release.set()  # an abandoned thread comes back and takes the waiting work
    for task in waiting:
        await mgr.wait_for_task(task.id, timeout=5)
    assert [t.result for t in waiting] == [0, 1]
    assert mgr._threads.threads <= 2


async def test_default_executor_and_dns_still_work_with_every_sync_thread_hung(
    make_manager: MakeManager, release: threading.Event
) -> None:
    # Enough hanging threads to fill the default executor (min(32, cpu + 4) workers) had the
    # library used it, as asyncio.to_thread does.
    count = min(32, (os.cpu_count() or 1) + 4)
    mgr = make_manager(max_sync_threads=count)
    hung = [await mgr.create_task(hang_until(release), timeout=0.05) for _ in range(count)]
    for task in hung:
        await mgr.wait_for_task(task.id, timeout=5)
    assert mgr.abandoned_threads == count
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 10)
    fresh = await mgr.create_task(lambda: "ok")
    await mgr.wait_for_task(fresh.id, timeout=5)
    assert fresh.result == "ok"


async def test_shutdown_does_not_wait_for_a_thread_that_never_returns(
    make_manager: MakeManager, release: threading.Event
) -> None:
    mgr = make_manager()
    task = await mgr.create_task(hang_until(release))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await mgr.shutdown(timeout=0.1)
    assert time.monotonic() - started < 3
    assert task.status is TaskStatus.CANCELLED
    assert mgr.abandoned_threads == 1


async def test_the_thread_sees_the_callers_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    pool = SyncThreads(1)
    assert await pool.run(var.get, (), {}) == "caller"

    def boom() -> None:
        raise KeyError("in thread")

    with pytest.raises(KeyError, match="in thread"):
        await pool.run(boom, (), {})


# -- the process exits although a sync task never returns -------------------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading
    from observable_tasks import TaskManager

    def forever():
        threading.Event().wait()

    async def main(mode):
        manager = TaskManager()
        task = await manager.create_task(forever, timeout=0.1 if mode == "timeout" else None)
        if mode == "timeout":
            await manager.wait_for_task(task.id)
            print(task.status.value, manager.abandoned_threads, flush=True)
            await manager.shutdown(timeout=0.1)
        else:
            print("ready", flush=True)
            await asyncio.Event().wait()  # until SIGINT

    asyncio.run(main(sys.argv[1]))
    """
)


def _start(mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str], seconds: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the process did not exit within {seconds}s") from None


def test_process_exits_when_main_returns_with_a_thread_still_hung() -> None:
    proc = _start("timeout")
    out, err = _finish(proc, 20)
    assert proc.returncode == 0, err
    assert out.split() == ["TIMEOUT", "1"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_process_exits_on_sigint_with_a_thread_still_hung() -> None:
    proc = _start("sigint")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.1)  # the task is in its thread now
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, 10)
    assert "KeyboardInterrupt" in err
    assert time.monotonic() - started < 10


# -- telemetry: the abandoned-threads gauge ----------------------------------------------------


async def test_abandoned_threads_gauge_is_read_at_scrape_time(release: threading.Event) -> None:
    from telemetry_kit import instrumented

    from observable_tasks import TaskConfig
    from observable_tasks.telemetry import names

    with instrumented(TaskConfig(max_sync_threads=2, shutdown_timeout=1)) as kit:
        assert kit.sample(names.SYNC_THREADS_ABANDONED) == 0
        task = await kit.manager.create_task(hang_until(release), timeout=0.05)
        await kit.manager.wait_for_task(task.id, timeout=5)
        assert kit.sample(names.SYNC_THREADS_ABANDONED) == 1
        release.set()
        await async_wait_until(
            lambda: kit.sample(names.SYNC_THREADS_ABANDONED) == 0, message="gauge back to 0"
        )
        await kit.manager.shutdown()


async def test_multiprocess_gauge_follows_the_abandon_hook(release: threading.Event) -> None:
    from prometheus_client import CollectorRegistry

    from observable_tasks import TaskConfig
    from observable_tasks.telemetry import TaskMetrics, TelemetryPipeline, names

    registry = CollectorRegistry()
    mgr = TaskManager(TaskConfig(max_sync_threads=2, shutdown_timeout=1))
    metrics = TaskMetrics(registry, multiprocess=True)  # livesum gauges kept through hooks
    metrics.attach(mgr)
    pipeline = TelemetryPipeline([metrics], report=mgr.report_internal_error)
    mgr.add_observer(pipeline)
    mgr.add_middleware(pipeline, guarded=False)
    gauge = names.metric_name(names.SYNC_THREADS_ABANDONED)
    task = await mgr.create_task(hang_until(release), timeout=0.05)
    await mgr.wait_for_task(task.id, timeout=5)
    assert registry.get_sample_value(gauge) == 1
    release.set()
    await async_wait_until(lambda: registry.get_sample_value(gauge) == 0, message="gauge at 0")
    await mgr.shutdown()


async def test_cancelled_just_after_the_function_returned_abandons_nothing() -> None:
    pool = SyncThreads(1)
    running = asyncio.ensure_future(pool.run(lambda: "result", (), {}))
    await asyncio.sleep(0)  # the work is queued; a thread takes it
    deadline = time.monotonic() + 5
    # Block the loop until the thread is done with it: its result cannot be delivered yet.
    while (pool._busy or pool._queue) and time.monotonic() < deadline:
        time.sleep(0.001)  # noqa: ASYNC251 - keeps the loop from delivering the result
    running.cancel()
    results = await asyncio.gather(running, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert pool.abandoned == 0
    assert pool._busy == 0


async def test_a_sync_function_raising_stop_iteration_fails_its_task(
    make_manager: MakeManager,
) -> None:
    mgr = make_manager()

    def stop() -> None:
        raise StopIteration("odd")

    task = await mgr.create_task(stop)
    await mgr.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.FAILED
    assert isinstance(task.error, RuntimeError)
    assert "StopIteration" in str(task.error)


async def test_a_stream_of_hanging_sync_tasks_never_exceeds_the_thread_cap(
    make_manager: MakeManager, release: threading.Event
) -> None:
    mgr = make_manager(max_sync_threads=2)  # at most 4 threads
    for _ in range(3):
        hung = [await mgr.create_task(hang_until(release), timeout=0.05) for _ in range(4)]
        for task in hung:
            await mgr.wait_for_task(task.id, timeout=5)
        assert all(t.status is TaskStatus.TIMEOUT for t in hung)
        assert mgr._threads.threads <= 4
        assert mgr.abandoned_threads <= 4
    assert mgr.abandoned_threads == 4  # the rest timed out waiting and never took a thread


async def test_idle_sync_threads_do_not_keep_a_manager_alive() -> None:
    import gc
    import weakref

    from observable_tasks import TaskConfig

    mgr = TaskManager(TaskConfig(shutdown_timeout=1))
    task = await mgr.create_task(lambda: "ran")
    await mgr.wait_for_task(task.id, timeout=5)
    assert mgr._threads.threads == 1  # its worker is idle now, waiting for work
    await mgr.shutdown()
    ref = weakref.ref(mgr)
    del mgr, task
    gc.collect()
    assert ref() is None
