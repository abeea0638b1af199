"""The middleware seam and lifecycle observers, as a user attaches their own."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from observable_tasks import (
    CallNext,
    Task,
    TaskError,
    TaskManager,
    TaskObserver,
    TaskStatus,
    TaskTimeoutError,
    outcome_status,
)
from observable_tasks.middleware import OBSERVER_HOOKS

MakeManager = Callable[..., TaskManager]

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


class Recorder:
    """A middleware that records what each task's execution ended with."""

    def __init__(self) -> None:
        self.outcomes: dict[str, tuple[str, Any]] = {}
        self.statuses_seen: dict[str, TaskStatus] = {}

    async def __call__(self, task: Task, call_next: CallNext) -> Any:
        self.statuses_seen[task.id] = task.status
        try:
            result = await call_next()
        except BaseException as exc:
            self.outcomes[task.id] = ("raised", exc)
            raise
        self.outcomes[task.id] = ("returned", result)
        return result


async def test_user_middleware_sees_every_outcome(make_manager: MakeManager) -> None:
    recorder = Recorder()
    mgr = make_manager(middleware=[recorder])
    started = asyncio.Event()

    async def ok() -> int:
        return 5

    async def boom() -> None:
        raise ValueError("bad")

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    done = await mgr.create_task(ok)
    failed = await mgr.create_task(boom)
    timed_out = await mgr.create_task(forever, timeout=0.05)
    for t in (done, failed, timed_out):
        await mgr.wait_for_task(t.id, timeout=5)
    started.clear()
    cancelled = await mgr.create_task(forever)
    await asyncio.wait_for(started.wait(), 5)
    assert await mgr.cancel_task(cancelled.id)

    assert recorder.outcomes[done.id] == ("returned", 5)
    kind, exc = recorder.outcomes[failed.id]
    assert kind == "raised"
    assert isinstance(exc, ValueError)
    assert exc is failed.error
    kind, exc = recorder.outcomes[timed_out.id]
    assert isinstance(exc, TaskTimeoutError)
    assert exc is timed_out.error
    kind, exc = recorder.outcomes[cancelled.id]
    assert isinstance(exc, asyncio.CancelledError)
    assert {t.id: t.status for t in (done, failed, timed_out, cancelled)} == {
        done.id: TaskStatus.COMPLETED,
        failed.id: TaskStatus.FAILED,
        timed_out.id: TaskStatus.TIMEOUT,
        cancelled.id: TaskStatus.CANCELLED,
    }
    # Middleware runs while the task is RUNNING.
    assert set(recorder.statuses_seen.values()) == {TaskStatus.RUNNING}
    assert sum(mgr.internal_errors.values()) == 0


async def test_add_middleware_later_also_applies(manager: TaskManager) -> None:
    recorder = Recorder()

    async def ok() -> str:
        return "x"

    before = await manager.create_task(ok)
    await manager.wait_for_task(before.id)
    manager.add_middleware(recorder)
    after = await manager.create_task(ok)
    await manager.wait_for_task(after.id)
    assert before.id not in recorder.outcomes
    assert recorder.outcomes[after.id] == ("returned", "x")


async def test_middleware_runs_in_the_tasks_context(manager: TaskManager) -> None:
    async def set_var(task: Task, call_next: CallNext) -> Any:
        request_var.set(f"set-by-middleware-for-{task.name}")
        return await call_next()

    manager.add_middleware(set_var)

    async def read_async() -> str:
        return request_var.get()

    def read_sync() -> str:
        return request_var.get()

    request_var.set("creator's value")
    a = await manager.create_task(read_async, name="a")
    s = await manager.create_task(read_sync, name="s")
    await manager.wait_for_task(a.id)
    await manager.wait_for_task(s.id)
    assert a.result == "set-by-middleware-for-a"
    assert s.result == "set-by-middleware-for-s"  # followed into the worker thread
    assert request_var.get() == "creator's value"  # the task's context is its own


async def test_task_does_not_inherit_the_creators_context(manager: TaskManager) -> None:
    async def read() -> str:
        return request_var.get()

    token = request_var.set("from the request")
    try:
        task = await manager.create_task(read)
    finally:
        request_var.reset(token)
    await manager.wait_for_task(task.id)
    assert task.result == "unset"


async def test_first_added_is_outermost(make_manager: MakeManager) -> None:
    events: list[str] = []

    def named(label: str) -> Any:
        async def mw(task: Task, call_next: CallNext) -> Any:
            events.append(f"{label}>")
            try:
                return await call_next()
            finally:
                events.append(f"<{label}")

        mw.__name__ = f"mw_{label}"
        return mw

    mgr = make_manager(middleware=[named("a"), named("b")])
    mgr.add_middleware(named("c"))
    mgr.add_middleware(named("d"), name="custom-d")
    assert mgr.middleware_names == ["mw_a", "mw_b", "mw_c", "custom-d"]

    async def work() -> None:
        events.append("task")

    task = await mgr.create_task(work)
    await mgr.wait_for_task(task.id)
    assert events == ["a>", "b>", "c>", "d>", "task", "<d", "<c", "<b", "<a"]


@pytest.mark.parametrize("guarded", [True, False])
async def test_guarded_false_leaves_failures_to_the_middleware(
    make_manager: MakeManager, guarded: bool
) -> None:
    async def broken(task: Task, call_next: CallNext) -> Any:
        raise RuntimeError("middleware bug")

    mgr = make_manager()
    mgr.add_middleware(broken, name="broken", guarded=guarded)

    async def work() -> int:
        return 1

    task = await mgr.create_task(work)
    await mgr.wait_for_task(task.id)
    if guarded:  # reported, and the function still ran
        assert (task.status, task.result) == (TaskStatus.COMPLETED, 1)
        assert mgr.internal_errors["broken"] == 1
    else:  # nothing protects the task from an unguarded middleware: it is its contract
        assert task.status is TaskStatus.FAILED
        assert str(task.error) == "middleware bug"
        assert not mgr.internal_errors


def test_add_middleware_rejects_non_callables(manager: TaskManager) -> None:
    with pytest.raises(TypeError, match="callable"):
        manager.add_middleware("not a middleware")  # type: ignore[arg-type]


# -- Faulty middleware never changes the outcome ------------------------------------------------


async def raises_before(task: Task, call_next: CallNext) -> Any:
    raise RuntimeError("bug before call_next")


async def raises_after(task: Task, call_next: CallNext) -> Any:
    await call_next()
    raise RuntimeError("bug after call_next")


async def raises_other_in_finally(task: Task, call_next: CallNext) -> Any:
    try:
        return await call_next()
    finally:
        raise KeyError("bug in finally")


async def swallows(task: Task, call_next: CallNext) -> Any:
    try:
        return await call_next()
    except Exception:
        return "swallowed"


async def replaces_result(task: Task, call_next: CallNext) -> Any:
    await call_next()
    return "replaced"


async def never_calls(task: Task, call_next: CallNext) -> Any:
    return "short-circuit"


async def calls_twice(task: Task, call_next: CallNext) -> Any:
    await call_next()
    return await call_next()


FAULTY = [raises_before, raises_after, raises_other_in_finally, swallows, replaces_result]
FAULTY += [never_calls, calls_twice]
BEHAVES = {
    ("swallows", "completes"),  # nothing to swallow
    ("raises_after", "fails"),  # call_next raised first: its own raise is never reached
    ("replaces_result", "fails"),
    ("calls_twice", "fails"),
}


@pytest.mark.parametrize("faulty", FAULTY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("outcome", ["completes", "fails"])
async def test_faulty_middleware_does_not_change_the_outcome(
    make_manager: MakeManager, faulty: Any, outcome: str
) -> None:
    # A well-behaved recorder outside and inside the faulty one: both see the true outcome.
    outer, inner = Recorder(), Recorder()
    mgr = make_manager(middleware=[outer, faulty, inner])
    calls: list[int] = []

    async def work() -> str:
        calls.append(1)
        if outcome == "fails":
            raise TaskError(code="E", message="real failure")
        return "real result"

    task = await mgr.create_task(work)
    await mgr.wait_for_task(task.id, timeout=5)

    assert calls == [1]  # the function ran exactly once
    if outcome == "completes":
        assert task.status is TaskStatus.COMPLETED
        assert task.result == "real result"
        assert task.error is None
        assert outer.outcomes[task.id] == ("returned", "real result")
    else:
        assert task.status is TaskStatus.FAILED
        assert isinstance(task.error, TaskError)
        assert task.error.message == "real failure"
        assert task.result is None
        assert outer.outcomes[task.id] == ("raised", task.error)
    assert task.id in inner.outcomes
    # A misbehaviour is counted under the middleware's name, and nowhere else. Some faulty
    # middleware behave when the task fails: the exception passes through them untouched.
    if (faulty.__name__, outcome) in BEHAVES:
        assert sum(mgr.internal_errors.values()) == 0
    else:
        assert dict(mgr.internal_errors) == {faulty.__name__: 1}


async def test_faulty_middleware_does_not_change_timeout_or_cancel(
    make_manager: MakeManager,
) -> None:
    mgr = make_manager(middleware=[swallows, raises_after])
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    timed_out = await mgr.create_task(forever, timeout=0.05)
    await mgr.wait_for_task(timed_out.id, timeout=5)
    assert timed_out.status is TaskStatus.TIMEOUT
    assert isinstance(timed_out.error, TaskTimeoutError)

    started.clear()
    cancelled = await mgr.create_task(forever)
    await asyncio.wait_for(started.wait(), 5)
    assert await mgr.cancel_task(cancelled.id)
    assert cancelled.status is TaskStatus.CANCELLED


async def test_middleware_failure_is_reported_to_observers(make_manager: MakeManager) -> None:
    reports: list[tuple[str, BaseException]] = []

    class Watch(TaskObserver):
        def on_internal_error(self, component: str, error: BaseException) -> None:
            reports.append((component, error))

    mgr = make_manager(middleware=[raises_before], observers=[Watch()])

    async def work() -> int:
        return 1

    task = await mgr.create_task(work)
    await mgr.wait_for_task(task.id)
    assert task.result == 1
    assert [(c, str(e)) for c, e in reports] == [("raises_before", "bug before call_next")]


# -- Observers ----------------------------------------------------------------------------------


class Log(TaskObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def on_created(self, task: Task) -> None:
        self.events.append(("created", task.id, (task.status, request_var.get())))

    def on_cancelled_pending(self, task: Task) -> None:
        self.events.append(("cancelled_pending", task.id, task.status))

    def on_progress(self, task: Task, progress: float) -> None:
        self.events.append(("progress", task.id, progress))

    def on_evicted(self, task: Task) -> None:
        self.events.append(("evicted", task.id, task.status))


async def test_observers_hear_lifecycle_events(make_manager: MakeManager) -> None:
    log = Log()
    mgr = make_manager(max_concurrent_tasks=1, enable_task_history=False, observers=[log])
    gate = asyncio.Event()

    async def work(task_id: str) -> None:
        mgr.update_progress(task_id, 25)
        await gate.wait()
        mgr.update_progress(task_id, 100)

    token = request_var.set("in the creator")
    try:
        running = await mgr.create_task(work)
        pending = await mgr.create_task(work)
    finally:
        request_var.reset(token)
    assert await mgr.cancel_task(pending.id)
    gate.set()
    await mgr.wait_for_task(running.id)

    assert log.events == [
        ("created", running.id, (TaskStatus.PENDING, "in the creator")),
        ("created", pending.id, (TaskStatus.PENDING, "in the creator")),
        # history disabled: the cancelled task leaves at once
        ("cancelled_pending", pending.id, TaskStatus.CANCELLED),
        ("evicted", pending.id, TaskStatus.CANCELLED),
        ("progress", running.id, 25.0),
        ("progress", running.id, 100.0),
        ("evicted", running.id, TaskStatus.COMPLETED),
    ]


async def test_observer_added_later_and_partial_observers(manager: TaskManager) -> None:
    class OnlyCreated:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_created(self, task: Task) -> None:
            self.seen.append(task.id)

    only = OnlyCreated()
    manager.add_observer(only)  # type: ignore[arg-type]

    async def work(task_id: str) -> None:
        manager.update_progress(task_id, 50)

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    assert only.seen == [task.id]
    assert task.status is TaskStatus.COMPLETED
    assert sum(manager.internal_errors.values()) == 0


async def test_observers_are_asked_once_which_hooks_they_want(make_manager: MakeManager) -> None:
    asked: list[str] = []
    heard: list[str] = []

    class Picky(TaskObserver):
        def observes(self, hook: str) -> bool:
            asked.append(hook)
            return hook == "on_evicted"

        def on_created(self, task: Task) -> None:  # overridden, but not wanted
            heard.append("created")

        def on_evicted(self, task: Task) -> None:
            heard.append("evicted")

    now = [0.0]
    manager = make_manager(task_result_ttl=10.0, clock=lambda: now[0])
    manager.add_observer(Picky())
    assert sorted(asked) == sorted(OBSERVER_HOOKS)

    async def work() -> None:
        pass

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    now[0] = 60.0  # past the TTL
    assert manager.cleanup() == 1
    assert heard == ["evicted"]
    assert len(asked) == len(OBSERVER_HOOKS)  # not asked again per task
    assert TaskObserver().observes("on_created") is False  # the base class's hooks are no-ops


async def test_raising_observer_is_counted_and_harmless(make_manager: MakeManager) -> None:
    class Broken(TaskObserver):
        def on_created(self, task: Task) -> None:
            raise RuntimeError("observer bug")

        def on_progress(self, task: Task, progress: float) -> None:
            raise RuntimeError("observer bug")

        def on_evicted(self, task: Task) -> None:
            raise RuntimeError("observer bug")

    log = Log()
    mgr = make_manager(max_task_history=0, observers=[Broken(), log])

    async def work(task_id: str) -> str:
        mgr.update_progress(task_id, 60)
        return "ok"

    task = await mgr.create_task(work)
    await mgr.wait_for_task(task.id)
    assert task.status is TaskStatus.COMPLETED
    assert task.result == "ok"
    assert task.progress == 60.0
    assert dict(mgr.internal_errors) == {
        "Broken.on_created": 1,
        "Broken.on_progress": 1,
        "Broken.on_evicted": 1,
    }
    # The next observer still heard everything.
    assert [e[0] for e in log.events] == ["created", "progress", "evicted"]


# -- outcome_status -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, TaskStatus.COMPLETED),
        (TaskTimeoutError(1.0), TaskStatus.TIMEOUT),
        (asyncio.CancelledError(), TaskStatus.CANCELLED),
        (ValueError("x"), TaskStatus.FAILED),
        (TaskError(code="C", message="m"), TaskStatus.FAILED),
        (TimeoutError("the function's own timeout"), TaskStatus.FAILED),
        (KeyboardInterrupt(), TaskStatus.FAILED),
    ],
)
def test_outcome_status(error: BaseException | None, status: TaskStatus) -> None:
    assert outcome_status(error) is status


async def test_functions_own_timeout_error_is_a_failure_not_a_timeout(
    manager: TaskManager,
) -> None:
    async def work() -> None:
        raise TimeoutError("upstream did not answer")

    task = await manager.create_task(work, timeout=5)
    await manager.wait_for_task(task.id)
    assert task.status is TaskStatus.FAILED
    assert str(task.error) == "upstream did not answer"
