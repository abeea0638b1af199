"""Done: the already-finished awaitable returned by create_task / update_task_progress."""

from __future__ import annotations

import asyncio

from observable_tasks._awaitable import Done


async def test_await_returns_the_value_without_suspending() -> None:
    done = Done(42)
    assert await done == 42
    assert done.result() == 42


async def test_awaiting_does_not_yield_to_the_loop() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    bg = asyncio.get_running_loop().create_task(other())
    await Done(None)
    # Had awaiting suspended, the other task would have run by now.
    assert ran == []
    await bg
    assert ran == ["other"]


def test_result_works_without_an_event_loop() -> None:
    assert Done("x").result() == "x"
