"""TelemetryPipeline: parts run in order around each task, each failsafe on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from observable_tasks import Task, TaskManager, TaskStatus
from observable_tasks.telemetry import TelemetryPart, TelemetryPipeline

MakeManager = Callable[..., TaskManager]


class Part(TelemetryPart):
    """Records every call into a shared journal; can be told to raise in one hook."""

    def __init__(self, name: str, journal: list[tuple[Any, ...]], fail_in: str = "") -> None:
        self.name = name
        self.journal = journal
        self.fail_in = fail_in

    def _maybe_fail(self, hook: str) -> None:
        if self.fail_in == hook:
            raise RuntimeError(f"{self.name} broke in {hook}")

    def on_created(self, task: Task) -> None:
        self.journal.append((self.name, "created"))
        self._maybe_fail("on_created")

    def begin(self, task: Task) -> Any:
        self.journal.append((self.name, "begin", task.status))
        self._maybe_fail("begin")
        return f"state-of-{self.name}"

    def end(self, task: Task, state: Any, error: BaseException | None, elapsed: float) -> None:
        self.journal.append((self.name, "end", state, type(error).__name__, elapsed >= 0))
        self._maybe_fail("end")


def install(manager: TaskManager, parts: list[TelemetryPart]) -> TelemetryPipeline:
    # As instrument() installs it: unguarded, so these tests check its own guarantees.
    pipeline = TelemetryPipeline(parts, report=manager.report_internal_error)
    manager.add_observer(pipeline)
    manager.add_middleware(pipeline, name="telemetry", guarded=False)
    return pipeline


async def ok() -> int:
    return 7


async def boom() -> None:
    raise KeyError("k")


async def test_begins_in_order_ends_in_reverse_with_the_outcome(make_manager: MakeManager) -> None:
    journal: list[tuple[Any, ...]] = []
    manager = make_manager()
    install(manager, [Part("a", journal), Part("b", journal)])

    task = await manager.create_task(ok)
    await manager.wait_for_task(task.id)
    assert task.result == 7
    assert journal == [
        ("a", "created"),
        ("b", "created"),
        ("a", "begin", TaskStatus.RUNNING),
        ("b", "begin", TaskStatus.RUNNING),
        ("b", "end", "state-of-b", "NoneType", True),
        ("a", "end", "state-of-a", "NoneType", True),
    ]

    journal.clear()
    failed = await manager.create_task(boom)
    await manager.wait_for_task(failed.id)
    assert failed.status is TaskStatus.FAILED
    assert [e[3] for e in journal if e[1] == "end"] == ["KeyError", "KeyError"]


@pytest.mark.parametrize("hook", ["begin", "end"])
async def test_a_failing_part_is_reported_and_skipped_alone(
    make_manager: MakeManager, hook: str
) -> None:
    journal: list[tuple[Any, ...]] = []
    manager = make_manager()
    install(manager, [Part("a", journal), Part("b", journal, fail_in=hook), Part("c", journal)])

    for func, status in ((ok, TaskStatus.COMPLETED), (boom, TaskStatus.FAILED)):
        task = await manager.create_task(func)
        await manager.wait_for_task(task.id)
        assert task.status is status  # the outcome is the function's, never the part's

    ends = [e[0] for e in journal if e[1] == "end"]
    if hook == "begin":
        assert ends == ["c", "a", "c", "a"]  # b's end is not called without its begin
    else:
        assert ends == ["c", "b", "a", "c", "b", "a"]  # the parts after b still end
    assert dict(manager.internal_errors) == {"b": 2}


async def test_observer_hooks_reach_only_parts_that_define_them(
    make_manager: MakeManager,
) -> None:
    journal: list[tuple[Any, ...]] = []

    class Quiet(TelemetryPart):
        name = "quiet"

    manager = make_manager()
    pipeline = install(manager, [Part("a", journal, fail_in="on_created"), Quiet()])
    assert [name for name, _ in pipeline._hooks["on_created"]] == ["Part.on_created"]
    assert pipeline._hooks["on_evicted"] == ()

    task = await manager.create_task(ok)
    await manager.wait_for_task(task.id)
    assert task.status is TaskStatus.COMPLETED
    assert dict(manager.internal_errors) == {"Part.on_created": 1}


async def test_a_part_alone_is_an_ordinary_middleware(make_manager: MakeManager) -> None:
    journal: list[tuple[Any, ...]] = []
    manager = make_manager()
    manager.add_middleware(Part("solo", journal), name="solo")

    task = await manager.create_task(ok)
    await manager.wait_for_task(task.id)
    assert task.result == 7
    assert [e[:2] for e in journal] == [("solo", "begin"), ("solo", "end")]


async def test_cancelled_task_ends_every_part_with_cancelled_error(
    make_manager: MakeManager,
) -> None:
    journal: list[tuple[Any, ...]] = []
    manager = make_manager()
    install(manager, [Part("a", journal), Part("b", journal)])
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = await manager.create_task(forever)
    await entered.wait()
    assert await manager.cancel_task(task.id)
    assert task.status is TaskStatus.CANCELLED
    assert [(e[0], e[3]) for e in journal if e[1] == "end"] == [
        ("b", "CancelledError"),
        ("a", "CancelledError"),
    ]
    assert not manager.internal_errors
