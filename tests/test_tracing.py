"""Tracing: send/process spans, their parents, attributes and statuses."""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_kit import Kit, instrumented

from observable_tasks import TaskConfig, TaskError, TaskStatus
from observable_tasks.telemetry.names import ATTR


@pytest.fixture
def kit() -> Kit:
    with instrumented(TaskConfig(max_concurrent_tasks=1)) as k:
        yield k


def only(spans: list, task_id: str) -> object:
    (span,) = [s for s in spans if s.attributes[ATTR.MESSAGE_ID] == task_id]
    return span


async def test_send_span_is_child_of_the_creator_and_process_span_of_send(kit: Kit) -> None:
    tracer = kit.provider.get_tracer("test")
    inner: list[object] = []

    async def work() -> str:
        with tracer.start_as_current_span("user-span") as span:
            inner.append(span)
        return "ok"

    with tracer.start_as_current_span("request") as request:
        task = await kit.manager.create_task(work, name="display")
        assert "traceparent" in task.headers
    await kit.manager.wait_for_task(task.id)

    send = only(kit.send_spans(), task.id)
    process = only(kit.process_spans(), task.id)
    (user,) = [s for s in kit.spans() if s.name == "user-span"]
    assert send.name == f"send {task.function}"
    assert process.name == f"process {task.function}"
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert user.parent.span_id == process.context.span_id
    assert {s.context.trace_id for s in (send, process, user)} == {
        request.get_span_context().trace_id
    }
    assert process.kind is SpanKind.CONSUMER
    assert send.kind is SpanKind.PRODUCER
    attrs = process.attributes
    assert attrs[ATTR.CODE_FUNCTION] == task.function
    assert attrs[ATTR.TASK_NAME] == "display"
    assert attrs[ATTR.TASK_STATUS] == "completed"
    assert attrs[ATTR.MESSAGING_SYSTEM] == "observable_tasks"
    assert attrs[ATTR.TASK_QUEUE_WAIT] >= 0
    assert process.status.status_code is StatusCode.UNSET


async def test_a_task_started_later_is_not_parented_to_whatever_freed_its_slot(kit: Kit) -> None:
    tracer = kit.provider.get_tracer("test")
    gate = asyncio.Event()

    async def blocker() -> None:
        with tracer.start_as_current_span("blocker-inner"):
            await gate.wait()

    async def follower() -> None:
        return None

    first = await kit.manager.create_task(blocker)
    with tracer.start_as_current_span("other-request"):
        second = await kit.manager.create_task(follower)
    assert second.status is TaskStatus.PENDING
    gate.set()
    await kit.manager.wait_for_task(second.id)
    process = only(kit.process_spans(), second.id)
    send = only(kit.send_spans(), second.id)
    first_process = only(kit.process_spans(), first.id)
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id != first_process.context.trace_id
    assert process.attributes[ATTR.TASK_QUEUE_WAIT] > 0


async def test_failure_timeout_and_cancel_statuses(kit: Kit) -> None:
    async def failing() -> None:
        raise TaskError(code="BAD", message="nope")

    async def slow() -> None:
        await asyncio.sleep(10)

    failed = await kit.manager.create_task(failing)
    await kit.manager.wait_for_task(failed.id)
    timed = await kit.manager.create_task(slow, timeout=0.05)
    await kit.manager.wait_for_task(timed.id)
    cancelled = await kit.manager.create_task(slow)
    await asyncio.sleep(0)  # let it step into the function
    assert await kit.manager.cancel_task(cancelled.id)

    spans = kit.process_spans()
    f = only(spans, failed.id)
    assert f.status.status_code is StatusCode.ERROR
    assert f.attributes[ATTR.ERROR_TYPE] == "TaskError"
    assert f.attributes[ATTR.TASK_STATUS] == "failed"
    assert any(e.name == "exception" for e in f.events)
    t = only(spans, timed.id)
    assert t.status.status_code is StatusCode.ERROR
    assert t.attributes[ATTR.ERROR_TYPE] == "TaskTimeoutError"
    assert t.attributes[ATTR.TASK_STATUS] == "timeout"
    assert t.attributes[ATTR.TASK_TIMEOUT] == 0.05
    c = only(spans, cancelled.id)
    assert c.status.status_code is StatusCode.UNSET  # cancellation is a state, not an error
    assert c.attributes[ATTR.TASK_STATUS] == "cancelled"
    assert ATTR.ERROR_TYPE not in c.attributes


async def test_cancelled_while_pending_has_a_send_span_and_no_process_span(kit: Kit) -> None:
    gate = asyncio.Event()

    async def blocker() -> None:
        await gate.wait()

    first = await kit.manager.create_task(blocker)
    waiting = await kit.manager.create_task(blocker)
    assert await kit.manager.cancel_task(waiting.id)
    gate.set()
    await kit.manager.wait_for_task(first.id)
    assert only(kit.send_spans(), waiting.id)
    assert [s for s in kit.process_spans() if s.attributes[ATTR.MESSAGE_ID] == waiting.id] == []


async def test_sync_task_in_a_thread_sees_its_span_as_current(kit: Kit) -> None:
    tracer = kit.provider.get_tracer("test")
    seen: dict[str, object] = {}

    def blocking() -> None:
        seen["thread"] = threading.get_ident()
        with tracer.start_as_current_span("in-thread"):
            pass

    task = await kit.manager.create_task(blocking)
    await kit.manager.wait_for_task(task.id)
    assert seen["thread"] != threading.get_ident()
    (inner,) = [s for s in kit.spans() if s.name == "in-thread"]
    assert inner.parent.span_id == only(kit.process_spans(), task.id).context.span_id


async def test_the_request_span_does_not_leak_into_or_out_of_tasks(kit: Kit) -> None:
    tracer = kit.provider.get_tracer("test")
    inside: list[object] = []

    async def work() -> None:
        inside.append(trace.get_current_span())

    with tracer.start_as_current_span("request") as request:
        task = await kit.manager.create_task(work)
        await kit.manager.wait_for_task(task.id)
        assert trace.get_current_span() is request
    assert inside[0] is not request
    assert (
        inside[0].get_span_context().span_id == only(kit.process_spans(), task.id).context.span_id
    )
