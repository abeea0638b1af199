"""The event stream (server-sent events) of the console: ``event: task`` with a TaskView.

Each stream reads the manager's :meth:`~observable_tasks.TaskManager.task_events` through a
small pump task into a bounded queue, so that waiting for the next event can time out (a
``: keepalive`` comment) without ending the subscription. When the subscriber lagged and lost
events, an ``event: resync`` tells the page to reload its list.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .views import task_view

if TYPE_CHECKING:
    from observable_tasks.feed import TaskEvent
    from observable_tasks.manager import TaskManager

    from .options import ConsoleOptions

__all__ = ["sse_stream"]


def _frame(event: TaskEvent, manager: TaskManager, options: ConsoleOptions) -> str:
    view = task_view(event.task, manager, options)
    view["event"] = event.kind
    data = json.dumps(view, separators=(",", ":"))  # one line: JSON escapes newlines
    return f"id: {event.id}\nevent: task\ndata: {data}\n\n"


async def sse_stream(
    manager: TaskManager, options: ConsoleOptions, last_event_id: str | None
) -> AsyncIterator[str]:
    """The stream's text chunks (``ValueError`` at once for a bad ``last_event_id``)."""
    source = manager.task_events(
        last_event_id=last_event_id if manager.backend is not None else None
    )
    queue: asyncio.Queue[TaskEvent] = asyncio.Queue(maxsize=100)

    async def pump() -> None:
        async for event in source:
            await queue.put(event)

    pumping = asyncio.get_running_loop().create_task(pump())
    return _chunks(manager, options, queue, pumping)


async def _chunks(
    manager: TaskManager,
    options: ConsoleOptions,
    queue: asyncio.Queue[TaskEvent],
    pumping: asyncio.Task[None],
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.stream_max_age
    try:
        yield "retry: 500\n\n"
        while True:
            left = deadline - loop.time()
            if pumping.done() or left <= 0:
                return  # the source ended, or the stream is old: the browser reconnects
            try:
                event = await asyncio.wait_for(queue.get(), min(options.keepalive, left))
            except asyncio.TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event.dropped:
                yield f"event: resync\ndata: {event.dropped}\n\n"
            yield _frame(event, manager, options)
    finally:
        # Cancelling the pump ends its ``async for``: the source unsubscribes (its finally).
        pumping.cancel()
