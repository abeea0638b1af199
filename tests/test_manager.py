"""TaskManager: the core, used standalone as the documented page shows."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from observable_tasks import (
    Task,
    TaskConfig,
    TaskError,
    TaskManager,
    TaskManagerClosedError,
    TaskNotFoundError,
    TaskObserver,
    TaskStatus,
    TaskTimeoutError,
    create_task,
    current_task,
    update_task_progress,
)

MakeManager = Callable[..., TaskManager]


# -- The page's own unit tests, verbatim ---------------------------------------------------------


@pytest.fixture
def task_manager():
    config = TaskConfig(max_concurrent_tasks=10)
    return TaskManager(config)


@pytest.mark.asyncio
async def test_simple_task(task_manager):
    async def simple_task(value: int) -> int:
        return value * 2

    task = await task_manager.create_task(func=simple_task, value=5, name="test_task")

    # Wait for completion
    await task_manager.wait_for_task(task.id)

    assert task.result == 10
    assert task.status == TaskStatus.COMPLETED


@pytest.mark.asyncio
async def test_task_failure(task_manager):
    async def failing_task():
        raise ValueError("Test error")

    task = await task_manager.create_task(func=failing_task, name="failing_task")

    await task_manager.wait_for_task(task.id)

    assert task.status == TaskStatus.FAILED
    assert "Test error" in str(task.error)


# -- Construction ----------------------------------------------------------------------------------


async def test_config_positional_keyword_or_default() -> None:
    config = TaskConfig(max_concurrent_tasks=3)
    assert TaskManager(config).config is config
    assert TaskManager(config=config).config is config
    assert TaskManager().config == TaskConfig()


def test_config_must_be_a_task_config() -> None:
    with pytest.raises(TypeError, match="TaskConfig"):
        TaskManager({"max_concurrent_tasks": 3})  # type: ignore[arg-type]


# -- Create / get / list ------------------------------------------------------------------------


async def test_create_get_and_list(manager: TaskManager) -> None:
    async def double(x: int) -> int:
        return x * 2

    first = await manager.create_task(double, 1, name="one")
    second = await manager.create_task(func=double, x=2)
    assert first.id != second.id
    assert len(first.id) == 32
    assert first.name == "one"
    assert second.name == "double"  # default: the function's name
    assert manager.get_task(first.id) is first
    assert manager.get_task("no-such-id") is None
    assert manager.list_tasks() == [first, second]

    await manager.wait_for_task(first.id)
    await manager.wait_for_task(second.id)
    assert (first.result, second.result) == (2, 4)


async def test_list_filters_by_status(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    async def fail() -> None:
        raise RuntimeError("x")

    done = await mgr.create_task(fail)
    await mgr.wait_for_task(done.id)
    running = await mgr.create_task(blocked)
    pending = await mgr.create_task(blocked)

    assert mgr.list_tasks(TaskStatus.FAILED) == [done]
    assert mgr.list_tasks("running") == [running]
    assert mgr.list_tasks(status=TaskStatus.PENDING) == [pending]
    assert mgr.list_tasks(TaskStatus.COMPLETED) == []
    assert mgr.running_tasks() == [running]
    assert mgr.pending_tasks() == [pending]
    assert (mgr.running_count, mgr.pending_count) == (1, 1)
    with pytest.raises(ValueError, match="bogus"):
        mgr.list_tasks("bogus")
    gate.set()
    await mgr.wait_for_task(pending.id, timeout=5)
    assert mgr.list_tasks(TaskStatus.COMPLETED) == [running, pending]


async def test_returned_task_is_live(manager: TaskManager) -> None:
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "ok"

    task = await manager.create_task(work)
    assert task.status is TaskStatus.RUNNING
    assert task.result is None
    gate.set()
    same = await manager.wait_for_task(task.id, timeout=5)
    assert same is task
    assert task.status is TaskStatus.COMPLETED
    assert task.result == "ok"


# -- Concurrency limit and FIFO order -----------------------------------------------------------


async def test_concurrency_limit_holds_and_the_rest_wait_pending(make_manager: MakeManager) -> None:
    limit = 3
    mgr = make_manager(max_concurrent_tasks=limit)
    gate = asyncio.Event()
    full = asyncio.Event()
    now = peak = 0
    started: list[int] = []

    async def work(i: int) -> int:
        nonlocal now, peak
        started.append(i)
        now += 1
        peak = max(peak, now)
        if now == limit:
            full.set()
        try:
            await gate.wait()
        finally:
            now -= 1
        return i

    tasks = [await mgr.create_task(work, i) for i in range(10)]
    await asyncio.wait_for(full.wait(), 5)

    assert [t.status for t in tasks[:limit]] == [TaskStatus.RUNNING] * limit
    assert [t.status for t in tasks[limit:]] == [TaskStatus.PENDING] * (10 - limit)
    assert all(t.started_at is None for t in tasks[limit:])
    assert mgr.running_count == limit
    assert mgr.pending_tasks() == tasks[limit:]

    gate.set()
    for t in tasks:
        await mgr.wait_for_task(t.id, timeout=5)
    assert peak == limit
    assert started == list(range(10))
    assert [t.result for t in tasks] == list(range(10))


async def test_pending_tasks_start_first_come_first_served(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)
    gates = [asyncio.Event() for _ in range(5)]
    began = [asyncio.Event() for _ in range(5)]
    order: list[int] = []

    async def work(i: int) -> None:
        order.append(i)
        began[i].set()
        await gates[i].wait()

    tasks = [await mgr.create_task(work, i) for i in range(5)]
    # Release them in creation order, one at a time; each next one must be the one starting.
    for i in range(5):
        await asyncio.wait_for(began[i].wait(), 5)
        assert [t.status for t in tasks].count(TaskStatus.RUNNING) == 1
        assert tasks[i].status is TaskStatus.RUNNING
        gates[i].set()
    await mgr.wait_for_task(tasks[-1].id, timeout=5)
    assert order == [0, 1, 2, 3, 4]
    starts = [t.started_at for t in tasks]
    assert all(s is not None for s in starts)
    assert starts == sorted(starts)  # type: ignore[type-var]


async def test_a_failing_task_frees_its_slot(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)

    async def boom() -> None:
        raise RuntimeError("boom")

    async def ok() -> str:
        return "ok"

    failing = await mgr.create_task(boom)
    after = await mgr.create_task(ok)
    assert after.status is TaskStatus.PENDING
    await mgr.wait_for_task(after.id, timeout=5)
    assert failing.status is TaskStatus.FAILED
    assert after.status is TaskStatus.COMPLETED


# -- Timeouts -----------------------------------------------------------------------------------


async def test_default_timeout_ends_the_task_as_timeout(make_manager: MakeManager) -> None:
    mgr = make_manager(default_timeout=0.05)
    cleaned_up = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    task = await mgr.create_task(forever)
    assert task.timeout == 0.05
    await mgr.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.TIMEOUT
    assert isinstance(task.error, TaskTimeoutError)
    assert task.error.timeout == 0.05
    assert "timeout" in str(task.error)
    assert task.result is None
    assert task.completed_at is not None
    assert cleaned_up.is_set()
    assert mgr.get_task(task.id) is task  # findable like any finished task


async def test_per_task_timeout_overrides_the_default(make_manager: MakeManager) -> None:
    mgr = make_manager(default_timeout=0.05)

    async def slowish() -> str:
        await asyncio.sleep(0.15)
        return "done"

    task = await mgr.create_task(slowish, timeout=5)
    await mgr.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.COMPLETED
    assert task.result == "done"

    plain = make_manager()
    short = await plain.create_task(slowish, timeout=0.05)
    await plain.wait_for_task(short.id, timeout=5)
    assert short.status is TaskStatus.TIMEOUT


async def test_timeout_does_not_count_time_waiting_for_a_slot(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    async def quick() -> str:
        return "quick"

    holder = await mgr.create_task(hold, timeout=10)
    waiter = await mgr.create_task(quick, timeout=0.1)
    await asyncio.sleep(0.25)  # the waiter queues for longer than its own timeout
    assert waiter.status is TaskStatus.PENDING
    gate.set()
    await mgr.wait_for_task(waiter.id, timeout=5)
    assert holder.status is TaskStatus.COMPLETED
    assert waiter.status is TaskStatus.COMPLETED
    assert waiter.result == "quick"
    assert waiter.queue_wait is not None
    assert waiter.queue_wait >= 0.2


async def test_sync_function_times_out_too(make_manager: MakeManager) -> None:
    mgr = make_manager()
    release = threading.Event()

    def blocking() -> str:
        release.wait(5)
        return "late"

    task = await mgr.create_task(blocking, timeout=0.05)
    await mgr.wait_for_task(task.id, timeout=5)
    release.set()  # let the worker thread end
    assert task.status is TaskStatus.TIMEOUT
    assert task.result is None


# -- Cancellation -------------------------------------------------------------------------------


async def test_cancel_pending_task(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()
    ran: list[str] = []

    async def work(label: str) -> None:
        ran.append(label)
        await gate.wait()

    first = await mgr.create_task(work, "first")
    second = await mgr.create_task(work, "second")
    assert second.status is TaskStatus.PENDING

    assert await mgr.cancel_task(second.id) is True
    assert second.status is TaskStatus.CANCELLED
    assert second.completed_at is not None
    assert second.started_at is None
    assert mgr.get_task(second.id) is second
    assert mgr.list_tasks(TaskStatus.CANCELLED) == [second]
    assert mgr.pending_count == 0

    gate.set()
    await mgr.wait_for_task(first.id, timeout=5)
    assert first.status is TaskStatus.COMPLETED
    assert ran == ["first"]  # the cancelled one never ran


async def test_cancel_running_task(manager: TaskManager) -> None:
    started = asyncio.Event()
    unwound = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    task = await manager.create_task(work)
    await asyncio.wait_for(started.wait(), 5)
    assert await manager.cancel_task(task.id) is True
    assert task.status is TaskStatus.CANCELLED
    assert unwound.is_set()
    assert task.result is None
    assert task.completed_at is not None
    assert manager.get_task(task.id) is task
    assert (await manager.wait_for_task(task.id)) is task


async def test_cancel_running_sync_task(manager: TaskManager) -> None:
    entered = threading.Event()
    release = threading.Event()

    def blocking() -> str:
        entered.set()
        release.wait(5)
        return "too late"

    task = await manager.create_task(blocking)
    await asyncio.to_thread(entered.wait, 5)
    try:
        assert await manager.cancel_task(task.id) is True
        assert task.status is TaskStatus.CANCELLED
    finally:
        release.set()  # the worker thread itself cannot be interrupted
    assert task.result is None


async def test_cancel_finished_or_unknown_task_returns_false(manager: TaskManager) -> None:
    async def work() -> int:
        return 1

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    assert await manager.cancel_task(task.id) is False
    assert task.status is TaskStatus.COMPLETED
    assert await manager.cancel_task("unknown") is False


async def test_task_can_cancel_itself(manager: TaskManager) -> None:
    answers: list[bool] = []
    reached_end: list[bool] = []

    async def work() -> None:
        me = current_task()
        assert me is not None
        answers.append(await manager.cancel_task(me.id))
        await asyncio.sleep(0)  # cancellation is delivered here
        reached_end.append(True)

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id, timeout=5)
    assert answers == [True]
    assert reached_end == []
    assert task.status is TaskStatus.CANCELLED


async def test_cancelling_frees_the_slot(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)

    async def forever() -> None:
        await asyncio.Event().wait()

    async def quick() -> str:
        return "next"

    blocker = await mgr.create_task(forever)
    follower = await mgr.create_task(quick)
    assert await mgr.cancel_task(blocker.id)
    await mgr.wait_for_task(follower.id, timeout=5)
    assert follower.result == "next"


# -- wait_for_task ----------------------------------------------------------------------------


async def test_wait_for_unknown_task_raises_lookup_error(manager: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError):
        await manager.wait_for_task("nope")
    with pytest.raises(LookupError):
        await manager.wait_for_task("nope", timeout=1)


async def test_wait_for_task_own_timeout_leaves_the_task_running(manager: TaskManager) -> None:
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "finished"

    task = await manager.create_task(work)
    with pytest.raises(TimeoutError):
        await manager.wait_for_task(task.id, timeout=0.05)
    assert task.status is TaskStatus.RUNNING
    gate.set()
    assert (await manager.wait_for_task(task.id, timeout=5)).result == "finished"


async def test_wait_for_failed_task_does_not_raise(manager: TaskManager) -> None:
    async def work() -> None:
        raise KeyError("missing")

    task = await manager.create_task(work)
    finished = await manager.wait_for_task(task.id)
    assert finished.status is TaskStatus.FAILED
    assert isinstance(finished.error, KeyError)


async def test_many_waiters_are_all_woken(manager: TaskManager) -> None:
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    task = await manager.create_task(work)
    waiters = [asyncio.ensure_future(manager.wait_for_task(task.id)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert all(r is task for r in results)


# -- task_id injection --------------------------------------------------------------------------


async def test_function_with_task_id_parameter_gets_its_own_id(manager: TaskManager) -> None:
    async def work(items: list[int], task_id: str) -> str:
        return task_id

    task = await manager.create_task(work, items=[1, 2])
    await manager.wait_for_task(task.id)
    assert task.result == task.id


async def test_explicit_task_id_is_respected(manager: TaskManager) -> None:
    async def work(task_id: str) -> str:
        return task_id

    task = await manager.create_task(work, task_id="chosen-by-caller")
    await manager.wait_for_task(task.id)
    assert task.result == "chosen-by-caller"


async def test_sync_function_with_task_id_gets_it_too(manager: TaskManager) -> None:
    def work(task_id: str) -> str:
        return task_id

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    assert task.result == task.id


# -- Progress -----------------------------------------------------------------------------------


async def test_progress_updates_are_visible_while_running(manager: TaskManager) -> None:
    halfway = asyncio.Event()
    gate = asyncio.Event()

    async def long_running_task(task_id: str, items: list[int]) -> dict[str, int]:
        for n, _ in enumerate(items, start=1):
            await update_task_progress(task_id, n / len(items) * 100)
            if n == 2:
                halfway.set()
                await gate.wait()
        return {"processed": len(items), "total": len(items)}

    task = await manager.create_task(long_running_task, items=[1, 2, 3, 4])
    assert task.progress == 0.0
    await asyncio.wait_for(halfway.wait(), 5)
    assert task.progress == 50.0
    gate.set()
    await manager.wait_for_task(task.id, timeout=5)
    assert task.progress == 100.0
    assert task.result == {"processed": 4, "total": 4}


async def test_manager_update_progress_and_module_function(manager: TaskManager) -> None:
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    task = await manager.create_task(work)
    manager.update_progress(task.id, 10)
    assert task.progress == 10.0
    assert isinstance(task.progress, float)
    assert await update_task_progress(task.id, 33.5) is None
    assert task.progress == 33.5
    gate.set()
    await manager.wait_for_task(task.id)
    manager.update_progress(task.id, 90)  # after the end: ignored
    assert task.progress == 33.5


@pytest.mark.parametrize("bad", [math.nan, -0.1, 100.01, math.inf, "50", True, None])
async def test_bad_progress_raises_value_error(manager: TaskManager, bad: Any) -> None:
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    task = await manager.create_task(work)
    with pytest.raises(ValueError, match="progress"):
        await update_task_progress(task.id, bad)
    with pytest.raises(ValueError, match="progress"):
        manager.update_progress(task.id, bad)
    assert task.progress == 0.0
    gate.set()


async def test_progress_for_unknown_task_raises_lookup_error(manager: TaskManager) -> None:
    with pytest.raises(LookupError):
        await update_task_progress("no-such-task", 10)
    with pytest.raises(TaskNotFoundError):
        manager.update_progress("no-such-task", 10)
    # A bad value is reported as a bad value even for an unknown id.
    with pytest.raises(ValueError, match="progress"):
        await update_task_progress("no-such-task", 200)


# -- Sync functions and threads -----------------------------------------------------------------


async def test_sync_function_runs_in_a_worker_thread(manager: TaskManager) -> None:
    loop_thread = threading.get_ident()

    def work(x: int) -> tuple[int, int]:
        return threading.get_ident(), x + 1

    task = await manager.create_task(work, 41)
    await manager.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.COMPLETED
    thread_id, value = task.result
    assert value == 42
    assert thread_id != loop_thread


async def test_sync_task_creates_tasks_and_reports_progress_from_its_thread(
    manager: TaskManager,
) -> None:
    async def child(n: int) -> int:
        return n * 10

    def parent(task_id: str) -> dict[str, Any]:
        me = current_task()
        progress = update_task_progress(task_id, 40)  # not awaited: a done awaitable
        via_module = create_task(child, 1, name="child-module")
        via_manager = manager.create_task(func=child, n=2, name="child-manager")
        return {
            "me": me.id if me else None,
            "progress_result": progress.result(),
            "children": [via_module.result().id, via_manager.result().id],
            "thread": threading.get_ident(),
        }

    task = await manager.create_task(parent)
    await manager.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.COMPLETED, task.error
    assert task.result["me"] == task.id
    assert task.result["progress_result"] is None
    assert task.result["thread"] != threading.get_ident()
    assert task.progress == 40.0
    children = [manager.get_task(i) for i in task.result["children"]]
    assert [c.name for c in children if c] == ["child-module", "child-manager"]
    for child_task in children:
        assert child_task is not None
        await manager.wait_for_task(child_task.id, timeout=5)
    assert [c.result for c in children if c] == [10, 20]


async def test_many_threads_create_tasks_concurrently(manager: TaskManager) -> None:
    async def noop(i: int) -> int:
        return i

    def spawn(start: int) -> list[str]:
        return [manager.create_task(noop, start + i).result().id for i in range(20)]

    await manager.start()  # binds the manager to this loop; threads have none of their own
    batches = await asyncio.gather(*(asyncio.to_thread(spawn, k * 100) for k in range(4)))
    ids = [task_id for batch in batches for task_id in batch]
    assert len(set(ids)) == 80
    for task_id in ids:
        await manager.wait_for_task(task_id, timeout=5)
    assert sorted(t.result for t in manager.list_tasks()) == sorted(
        k * 100 + i for k in range(4) for i in range(20)
    )


async def test_creating_from_a_thread_before_the_manager_has_a_loop(
    manager: TaskManager,
) -> None:
    async def noop() -> None:
        return None

    with pytest.raises(RuntimeError, match="event loop"):
        await asyncio.to_thread(manager.submit, noop)
    assert manager.list_tasks() == []


async def test_current_task_is_none_outside_tasks(manager: TaskManager) -> None:
    assert current_task() is None

    async def work() -> Task | None:
        return current_task()

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    assert task.result is task
    assert current_task() is None


# -- Callbacks ----------------------------------------------------------------------------------


async def test_sync_and_async_callbacks_run_once_the_task_finishes(manager: TaskManager) -> None:
    gate = asyncio.Event()
    async_called = asyncio.Event()
    seen: list[tuple[str, TaskStatus]] = []

    async def work() -> str:
        await gate.wait()
        return "r"

    def on_done(task: Task) -> None:
        seen.append(("sync", task.status))

    async def on_done_async(task: Task) -> None:
        seen.append(("async", task.status))
        async_called.set()

    task = await manager.create_task(work)
    manager.add_callback(task, on_done)
    manager.add_callback(task.id, on_done_async)
    assert seen == []
    gate.set()
    await manager.wait_for_task(task.id)
    await asyncio.wait_for(async_called.wait(), 5)
    assert sorted(seen) == [("async", TaskStatus.COMPLETED), ("sync", TaskStatus.COMPLETED)]


async def test_callback_on_already_finished_task_runs(manager: TaskManager) -> None:
    async def work() -> int:
        return 3

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    got: list[Any] = []
    manager.add_callback(task, lambda t: got.append(t.result))
    assert got == [3]

    called = asyncio.Event()

    async def later(t: Task) -> None:
        called.set()

    manager.add_callback(task, later)
    await asyncio.wait_for(called.wait(), 5)


async def test_remove_callback(manager: TaskManager) -> None:
    gate = asyncio.Event()
    got: list[Task] = []

    async def work() -> None:
        await gate.wait()

    def cb(t: Task) -> None:
        got.append(t)

    task = await manager.create_task(work)
    manager.add_callback(task, cb)
    assert manager.remove_callback(task, cb) is True
    assert manager.remove_callback(task.id, cb) is False
    assert manager.remove_callback("unknown", cb) is False
    gate.set()
    await manager.wait_for_task(task.id)
    assert got == []


async def test_add_callback_errors(manager: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError):
        manager.add_callback("unknown", lambda t: None)

    async def work() -> None:
        return None

    task = await manager.create_task(work)
    with pytest.raises(TypeError):
        manager.add_callback(task, "not callable")  # type: ignore[arg-type]


async def test_raising_callbacks_are_counted_and_harmless(manager: TaskManager) -> None:
    gate = asyncio.Event()
    async_ran = asyncio.Event()
    after: list[str] = []

    async def work() -> str:
        await gate.wait()
        return "fine"

    def bad(task: Task) -> None:
        raise RuntimeError("callback bug")

    async def bad_async(task: Task) -> None:
        async_ran.set()
        raise RuntimeError("async callback bug")

    task = await manager.create_task(work)
    manager.add_callback(task, bad)
    manager.add_callback(task, bad_async)
    manager.add_callback(task, lambda t: after.append("still called"))
    gate.set()
    await manager.wait_for_task(task.id)
    await asyncio.wait_for(async_ran.wait(), 5)
    await asyncio.sleep(0)  # let the failed callback's done-callback run
    assert task.status is TaskStatus.COMPLETED
    assert task.result == "fine"
    assert task.error is None
    assert after == ["still called"]
    assert manager.internal_errors["callback"] == 2


# -- History: disabled, bounded, TTL ------------------------------------------------------------


class Evictions(TaskObserver):
    def __init__(self) -> None:
        self.evicted: list[str] = []
        self.event = asyncio.Event()

    def on_evicted(self, task: Task) -> None:
        self.evicted.append(task.id)
        self.event.set()


async def test_history_disabled_forgets_finished_tasks(make_manager: MakeManager) -> None:
    mgr = make_manager(enable_task_history=False)
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "gone"

    task = await mgr.create_task(work)
    assert mgr.get_task(task.id) is task  # running tasks are always known
    waiting = asyncio.ensure_future(mgr.wait_for_task(task.id))
    await asyncio.sleep(0)
    gate.set()
    assert (await asyncio.wait_for(waiting, 5)) is task  # a waiter still gets it
    assert task.result == "gone"
    assert mgr.get_task(task.id) is None
    assert mgr.list_tasks() == []


async def test_max_task_history_keeps_the_newest(make_manager: MakeManager) -> None:
    evictions = Evictions()
    mgr = make_manager(max_task_history=2, observers=[evictions])
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    async def quick(i: int) -> int:
        return i

    running = await mgr.create_task(blocked)
    finished = []
    for i in range(4):
        t = await mgr.create_task(quick, i)
        await mgr.wait_for_task(t.id)
        finished.append(t)

    assert [t.id for t in mgr.list_tasks(TaskStatus.COMPLETED)] == [f.id for f in finished[2:]]
    assert mgr.get_task(finished[0].id) is None
    assert mgr.get_task(running.id) is running  # never evicted while running
    assert evictions.evicted == [finished[0].id, finished[1].id]
    gate.set()
    await mgr.wait_for_task(running.id)
    # Now the running one has finished too: it is the newest, the oldest goes.
    assert mgr.get_task(running.id) is running
    assert mgr.get_task(finished[2].id) is None


async def test_ttl_cleanup_with_injected_clock(make_manager: MakeManager) -> None:
    now = [1000.0]
    mgr = make_manager(
        task_result_ttl=10, max_concurrent_tasks=1, clock=lambda: now[0], cleanup_interval=3600
    )
    gate = asyncio.Event()

    async def quick() -> str:
        return "old"

    async def blocked() -> None:
        await gate.wait()

    old = await mgr.create_task(quick)
    await mgr.wait_for_task(old.id)
    running = await mgr.create_task(blocked)
    pending = await mgr.create_task(quick)
    assert pending.status is TaskStatus.PENDING

    now[0] = 1005.0
    assert mgr.cleanup() == 0
    assert mgr.get_task(old.id) is old

    now[0] = 1010.5
    assert mgr.cleanup() == 1
    assert mgr.get_task(old.id) is None
    # Running and pending tasks are never evicted, however old.
    now[0] = 5000.0
    assert mgr.cleanup() == 0
    assert mgr.get_task(running.id) is running
    assert mgr.get_task(pending.id) is pending

    gate.set()
    await mgr.wait_for_task(pending.id, timeout=5)
    assert mgr.get_task(running.id) is running  # just finished: young
    now[0] = 5011.0
    assert mgr.cleanup() == 2
    assert mgr.list_tasks() == []


async def test_ttl_applied_when_another_task_finishes(make_manager: MakeManager) -> None:
    now = [0.0]
    mgr = make_manager(task_result_ttl=5, clock=lambda: now[0], cleanup_interval=3600)

    async def quick() -> None:
        return None

    first = await mgr.create_task(quick)
    await mgr.wait_for_task(first.id)
    now[0] = 6.0
    second = await mgr.create_task(quick)
    await mgr.wait_for_task(second.id)
    assert mgr.get_task(first.id) is None
    assert mgr.get_task(second.id) is second


async def test_periodic_sweeper_evicts_expired_tasks(make_manager: MakeManager) -> None:
    now = [0.0]
    evictions = Evictions()
    mgr = make_manager(
        task_result_ttl=1, cleanup_interval=0.05, clock=lambda: now[0], observers=[evictions]
    )

    async def quick() -> None:
        return None

    task = await mgr.create_task(quick)
    await mgr.wait_for_task(task.id)
    assert mgr.get_task(task.id) is task
    now[0] = 100.0  # expired; nobody calls cleanup(): the sweeper must
    await asyncio.wait_for(evictions.event.wait(), 5)
    assert evictions.evicted == [task.id]
    assert mgr.get_task(task.id) is None


# -- Shutdown -----------------------------------------------------------------------------------


async def test_shutdown_semantics(make_manager: MakeManager) -> None:
    mgr = make_manager(max_concurrent_tasks=1)
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "finished in the grace period"

    running = await mgr.create_task(work)
    pending = await mgr.create_task(work)
    closing = asyncio.ensure_future(mgr.shutdown(timeout=5))
    await asyncio.sleep(0)  # let shutdown begin

    assert not mgr.is_accepting
    assert pending.status is TaskStatus.CANCELLED
    assert running.status is TaskStatus.RUNNING
    with pytest.raises(TaskManagerClosedError):
        await mgr.create_task(work)
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert running.status is TaskStatus.COMPLETED
    assert running.result == "finished in the grace period"
    with pytest.raises(TaskManagerClosedError):
        await mgr.create_task(work)
    assert len(mgr.list_tasks()) == 2  # the rejected ones were never created
    assert all(t.is_done for t in mgr.list_tasks())


async def test_shutdown_cancels_tasks_that_exceed_the_grace_period(
    make_manager: MakeManager,
) -> None:
    mgr = make_manager(shutdown_timeout=0.1)
    unwound = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    task = await mgr.create_task(forever)
    await asyncio.wait_for(mgr.shutdown(), 5)  # uses config.shutdown_timeout
    assert task.status is TaskStatus.CANCELLED
    assert unwound.is_set()
    assert mgr.get_task(task.id) is task


async def test_shutdown_ends_a_task_that_ignores_cancellation(make_manager: MakeManager) -> None:
    mgr = make_manager()
    ignored = asyncio.Event()
    release = asyncio.Event()
    ended = asyncio.Event()

    async def stubborn() -> str:
        try:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                ignored.set()
                await release.wait()  # keeps going despite the cancellation
            return "ignored"
        finally:
            ended.set()

    task = await mgr.create_task(stubborn)
    await asyncio.wait_for(mgr.shutdown(timeout=0.05), 5)
    assert ignored.is_set()
    assert task.status is TaskStatus.CANCELLED
    release.set()
    await asyncio.wait_for(ended.wait(), 5)
    await asyncio.sleep(0)
    assert task.status is TaskStatus.CANCELLED  # terminal states are final


async def test_manager_can_start_again_after_shutdown(make_manager: MakeManager) -> None:
    mgr = make_manager()

    async def work(x: int) -> int:
        return x

    first = await mgr.create_task(work, 1)
    await mgr.wait_for_task(first.id)
    await mgr.shutdown()
    await mgr.shutdown()  # a second call is harmless
    with pytest.raises(TaskManagerClosedError):
        await mgr.create_task(work, 2)
    await mgr.start()
    assert mgr.is_accepting
    second = await mgr.create_task(work, 2)
    await mgr.wait_for_task(second.id, timeout=5)
    assert second.result == 2
    assert mgr.get_task(first.id) is first  # history survives a restart


async def test_shutdown_with_nothing_running(manager: TaskManager) -> None:
    await asyncio.wait_for(manager.shutdown(), 5)
    assert not manager.is_accepting


# -- Bad input ----------------------------------------------------------------------------------


async def _valid(a: int, b: int = 0) -> int:
    return a + b


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((42,), {}, TypeError),
        (("work",), {}, TypeError),
        ((), {"func": None}, TypeError),
        ((_valid,), {"c": 1}, TypeError),  # unknown keyword
        ((_valid,), {"a": 1, "nmae": "typo"}, TypeError),
        ((_valid,), {}, TypeError),  # missing argument
        ((_valid, 1, 2, 3), {}, TypeError),  # too many
        ((_valid, 1), {"timeout": 0}, ValueError),
        ((_valid, 1), {"timeout": -1}, ValueError),
        ((_valid, 1), {"timeout": math.nan}, ValueError),
        ((_valid, 1), {"timeout": math.inf}, ValueError),
        ((_valid, 1), {"timeout": True}, ValueError),
        ((_valid, 1), {"timeout": "5"}, ValueError),
        ((_valid, 1), {"name": 123}, TypeError),
    ],
)
async def test_bad_input_raises_at_the_call_and_creates_nothing(
    manager: TaskManager, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    if "func" in kwargs:
        with pytest.raises(error):
            await manager.create_task(**kwargs)
    else:
        with pytest.raises(error):
            await manager.create_task(*args, **kwargs)
    assert manager.list_tasks() == []


async def test_coroutine_object_is_rejected_without_warning(manager: TaskManager) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="coroutine"):
            await manager.create_task(_valid(1))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="coroutine"):
            await create_task(_valid(2))
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert manager.list_tasks() == []


async def test_coroutine_object_to_a_closed_manager_leaks_no_warning(
    manager: TaskManager,
) -> None:
    await manager.shutdown()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="coroutine"):
            await manager.create_task(_valid(1))  # type: ignore[arg-type]
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def test_timeout_name_are_not_passed_to_the_function(manager: TaskManager) -> None:
    async def work(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    task = await manager.create_task(work, name="n", timeout=5, other=1)
    await manager.wait_for_task(task.id)
    assert task.result == {"other": 1}
    assert task.name == "n"
    assert task.timeout == 5


# -- TaskError inside a task ---------------------------------------------------------------------


async def test_task_error_fails_the_task_with_its_details(manager: TaskManager) -> None:
    async def task_with_custom_error(data: dict[str, Any]) -> dict[str, Any]:
        if not data.get("valid"):
            raise TaskError(
                code="INVALID_DATA",
                message="Data validation failed",
                details={"received": data},
            )
        return {"processed": data}

    bad = await manager.create_task(task_with_custom_error, data={"valid": False})
    good = await manager.create_task(task_with_custom_error, data={"valid": True})
    await manager.wait_for_task(bad.id)
    await manager.wait_for_task(good.id)

    assert bad.status is TaskStatus.FAILED
    assert isinstance(bad.error, TaskError)
    assert bad.error.code == "INVALID_DATA"
    assert bad.error.message == "Data validation failed"
    assert bad.error.details == {"received": {"valid": False}}
    assert str(bad.error) == "Data validation failed"
    assert good.status is TaskStatus.COMPLETED
    assert good.result == {"processed": {"valid": True}}
