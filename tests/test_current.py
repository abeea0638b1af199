"""current_task() and which manager a bare create_task() uses outside requests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from observable_tasks import TaskManager, create_task, current_task, get_task_manager


async def test_current_task_inside_nested_coroutines_and_threads(manager: TaskManager) -> None:
    async def helper() -> str | None:
        me = current_task()
        return me.id if me else None

    def in_thread() -> str | None:
        me = current_task()
        return me.id if me else None

    async def work() -> list[str | None]:
        return [await helper(), await asyncio.to_thread(in_thread)]

    task = await manager.create_task(work)
    await manager.wait_for_task(task.id)
    assert task.result == [task.id, task.id]


async def test_create_task_inside_a_task_uses_that_tasks_manager(
    manager: TaskManager,
) -> None:
    # Another manager that is not the one running the task must not be picked.
    other = TaskManager()

    async def child() -> str:
        me = current_task()
        return me.id if me else ""

    async def parent() -> str:
        assert get_task_manager() is manager
        spawned = await create_task(child, name="child")
        return spawned.id

    task = await manager.create_task(parent)
    await manager.wait_for_task(task.id)
    child_task = manager.get_task(task.result)
    assert child_task is not None
    await manager.wait_for_task(child_task.id)
    assert child_task.result == child_task.id
    assert other.list_tasks() == []


def test_create_task_without_any_manager_raises_a_clear_error() -> None:
    # A fresh interpreter: no manager was ever set up there.
    code = textwrap.dedent(
        """
        import asyncio
        from observable_tasks import NoTaskManagerError, create_task, get_task_manager

        async def work():
            return 1

        async def main():
            try:
                await create_task(work)
            except NoTaskManagerError as exc:
                print("create_task:", exc)
            try:
                get_task_manager()
            except NoTaskManagerError as exc:
                print("get_task_manager:", exc)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "create_task: no task manager found: call setup_tasks(app)" in out
    assert "get_task_manager: no task manager found" in out
