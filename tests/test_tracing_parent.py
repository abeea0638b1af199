"""The process span's parent: what ``propagate.extract`` of the task's headers gives, whether the
tracer reads its own send span's context back (same process) or parses the headers."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from telemetry_kit import instrumented

from observable_tasks import TaskConfig
from observable_tasks.task import Task
from observable_tasks.telemetry import TaskTracer, tracing


def span_context_of(ctx: otel_context.Context) -> trace.SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def submitted(tracer: TaskTracer, n: int = 1) -> list[Task]:
    tasks = [Task(f"{i:032x}", "t", "mod.work") for i in range(n)]
    for task in tasks:
        tracer.on_submit(task)
    return tasks


@pytest.fixture
def tracer() -> TaskTracer:
    from opentelemetry.sdk.trace import TracerProvider

    return TaskTracer(TracerProvider())


def test_own_send_context_is_exactly_what_extract_gives(
    tracer: TaskTracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (task,) = submitted(tracer)
    assert list(task.headers) == ["traceparent"]
    expected = propagate.extract(task.headers)
    calls: list[object] = []
    monkeypatch.setattr(tracing.propagate, "extract", lambda *a, **k: calls.append(a))
    got = tracer._parent(task)
    assert calls == []  # not parsed back
    monkeypatch.undo()
    assert span_context_of(got) == span_context_of(expected)
    assert span_context_of(got).is_remote
    assert dict(got).keys() == dict(expected).keys()
    assert baggage.get_all(got) == baggage.get_all(expected) == {}
    assert tracer._sent == {}  # used once: a second attempt parses its headers
    assert span_context_of(tracer._parent(task)) == span_context_of(expected)


def test_changed_headers_are_parsed(tracer: TaskTracer) -> None:
    first, second = submitted(tracer, 2)
    first.headers["traceparent"] = second.headers["traceparent"]
    assert span_context_of(tracer._parent(first)) == span_context_of(
        propagate.extract(second.headers)
    )


async def test_baggage_of_the_creator_reaches_the_task() -> None:
    seen: list[object] = []

    async def work() -> None:
        seen.append(baggage.get_baggage("tenant"))

    with instrumented(TaskConfig(max_concurrent_tasks=2)) as kit:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            task = await kit.manager.create_task(work)
        finally:
            otel_context.detach(token)
        assert set(task.headers) == {"traceparent", "baggage"}
        await kit.manager.wait_for_task(task.id)
    assert seen == ["acme"]
    (send,) = kit.send_spans()
    (process,) = kit.process_spans()
    assert process.parent.span_id == send.context.span_id


class Recording(TraceContextTextMapPropagator):
    """A propagator of the user's own: its extract must be the one called."""

    extracted = 0

    def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def]
        Recording.extracted += 1
        return (
            super().extract(carrier, context)
            if getter is None
            else super().extract(carrier, context, getter)
        )


@pytest.mark.parametrize(
    "textmap",
    [Recording(), CompositePropagator([Recording()])],
    ids=["own-propagator", "own-composite"],
)
def test_another_global_propagator_is_asked(
    tracer: TaskTracer, textmap: TextMapPropagator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", textmap)
    Recording.extracted = 0
    (task,) = submitted(tracer)
    parent = tracer._parent(task)
    assert Recording.extracted == 1
    assert span_context_of(parent) == span_context_of(propagate.extract(task.headers))


def test_contexts_of_tasks_that_never_start_here_are_bounded(tracer: TaskTracer) -> None:
    submitted(tracer, tracing._MAX_SENT + 10)
    assert len(tracer._sent) == tracing._MAX_SENT
