"""Tracing: a PRODUCER ``send`` span at creation and a CONSUMER ``process`` span per execution.

The send span starts in the creator's context (inside a request it is a child of the request's
span); its context is stored with the task as W3C headers (``task.headers``) through the global
propagator, so a cross-process backend can continue the same trace. The process span is parented
to that stored context, never to whatever happened to be current, and is *current while the task
function runs*: spans the user opens inside the task nest under it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observable_tasks.middleware import outcome_status
from observable_tasks.status import TaskStatus
from observable_tasks.telemetry._common import error_type
from observable_tasks.telemetry.names import (
    ATTR,
    INSTRUMENTATION_NAME,
    RELEASED,
    RETRYING,
    SPAN_PROCESS,
    SPAN_SEND,
    STATUS_LABELS,
)
from observable_tasks.telemetry.pipeline import AttemptAbandoned, TelemetryPart

if TYPE_CHECKING:
    from observable_tasks.task import Task

__all__ = ["TaskTracer"]


_MAX_FUNCTIONS = 1000  # cached per-function data; more functions than this are just not cached
_MAX_SENT = 4096  # send-span contexts kept for tasks not started yet; the oldest go first
_TRACEPARENT = "traceparent"
_DEFAULT_PROPAGATORS = (
    [TraceContextTextMapPropagator, W3CBaggagePropagator],  # OTel's default: tracecontext,baggage
    [TraceContextTextMapPropagator],
)


def _round_trips(textmap: object) -> bool:
    """True when ``textmap`` is OpenTelemetry's own W3C propagation (the default one, or trace
    context alone): its ``extract`` of a lone ``traceparent`` header gives back exactly the span
    context that was injected, and nothing else (no baggage, no trace state)."""
    if type(textmap) is TraceContextTextMapPropagator:
        return True
    if type(textmap) is CompositePropagator:
        kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
        return kinds in _DEFAULT_PROPAGATORS
    return False


class _Static:
    """Span names and attributes that are the same for every task of one function."""

    __slots__ = ("process_attributes", "process_name", "send_attributes", "send_name")

    def __init__(self, function: str) -> None:
        self.send_name = SPAN_SEND.format(function=function)
        self.process_name = SPAN_PROCESS.format(function=function)
        common = {ATTR.MESSAGING_SYSTEM: ATTR.SYSTEM_VALUE, ATTR.CODE_FUNCTION: function}
        self.send_attributes: dict[str, Any] = {
            **common,
            ATTR.MESSAGING_OPERATION_TYPE: "send",
            ATTR.MESSAGING_OPERATION_NAME: "send",
        }
        self.process_attributes: dict[str, Any] = {
            **common,
            ATTR.MESSAGING_OPERATION_TYPE: "process",
            ATTR.MESSAGING_OPERATION_NAME: "process",
        }


class TaskTracer(TelemetryPart):
    """Tracing part: the send span in ``on_submit``, the process span around the execution."""

    name = "tracing"

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        # None: the global provider, resolved lazily so a provider installed later still counts.
        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._static: dict[str, _Static] = {}
        # task id -> (its traceparent header, its send span's context), from on_submit to begin:
        # a task started in the process that created it skips parsing its own header back.
        self._sent: dict[str, tuple[str, SpanContext]] = {}
        self._textmap: object = None  # the global propagator last checked by _round_trips
        self._textmap_round_trips = False

    def _for(self, function: str) -> _Static:
        static = self._static.get(function)
        if static is None:
            static = _Static(function)
            if len(self._static) < _MAX_FUNCTIONS:
                self._static[function] = static
        return static

    def on_submit(self, task: Task) -> None:
        # Before the task is stored: on Redis the record must carry the context it injects.
        static = self._for(task.function)
        attributes = static.send_attributes.copy()
        attributes[ATTR.MESSAGE_ID] = task.id
        attributes[ATTR.TASK_NAME] = task.name
        if task.timeout is not None:
            attributes[ATTR.TASK_TIMEOUT] = task.timeout
        if task.key is not None:
            attributes[ATTR.TASK_KEY] = task.key
        span = self._tracer.start_span(
            static.send_name, kind=SpanKind.PRODUCER, attributes=attributes
        )
        try:
            headers = task.headers
            propagate.inject(headers, context=trace.set_span_in_context(span))
            if len(headers) == 1:  # a lone traceparent (no baggage, no trace state)
                value = headers.get(_TRACEPARENT)
                if value is not None:
                    self._remember(task.id, value, span.get_span_context())
        finally:
            span.end()

    def _remember(self, task_id: str, traceparent: str, context: SpanContext) -> None:
        sent = self._sent
        sent[task_id] = (traceparent, context)
        while len(sent) > _MAX_SENT:  # tasks that never start here (web-only, cancelled)
            try:
                sent.pop(next(iter(sent)), None)
            except (RuntimeError, StopIteration):  # changed by another thread meanwhile
                continue

    def _parent(self, task: Task) -> otel_context.Context:
        """The context the task's process span is parented to: what ``propagate.extract`` of
        its headers gives, without parsing them back when this tracer injected them."""
        headers = task._headers
        if not headers:
            return otel_context.Context()
        sent = self._sent.pop(task.id, None) if self._sent else None
        if sent is not None and len(headers) == 1 and headers.get(_TRACEPARENT) == sent[0]:
            textmap = propagate.get_global_textmap()
            if textmap is not self._textmap:
                self._textmap_round_trips = _round_trips(textmap)
                self._textmap = textmap
            if self._textmap_round_trips:
                ctx = sent[1]
                remote = SpanContext(ctx.trace_id, ctx.span_id, True, ctx.trace_flags)
                return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())
        return propagate.extract(headers)

    def begin(self, task: Task) -> tuple[trace.Span, object]:
        static = self._for(task.function)
        parent = self._parent(task)
        attributes = static.process_attributes.copy()
        attributes[ATTR.MESSAGE_ID] = task.id
        attributes[ATTR.TASK_NAME] = task.name
        if task.timeout is not None:
            attributes[ATTR.TASK_TIMEOUT] = task.timeout
        wait = task.queue_wait
        if wait is not None:
            attributes[ATTR.TASK_QUEUE_WAIT] = wait
        attributes[ATTR.TASK_ATTEMPT] = task.attempts  # each attempt is a span, same trace
        attributes[ATTR.TASK_MAX_ATTEMPTS] = task.max_attempts
        span = self._tracer.start_span(
            static.process_name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        try:
            # Current while the function runs: the user's own spans nest under it.
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        except BaseException:
            span.end()
            raise
        return span, token

    def end(
        self,
        task: Task,
        state: tuple[trace.Span, object],
        error: BaseException | None,
        elapsed: float,
    ) -> None:
        span, token = state
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        finally:
            self._close(task, span, error)

    def _close(self, task: Task, span: trace.Span, error: BaseException | None) -> None:
        # Bookkeeping after the outcome is known: the span must end whatever happens here.
        try:
            if error is not None and task.status is TaskStatus.PENDING:
                # The attempt failed and another is planned: an error of this span, not the
                # task's outcome (the next attempt's span comes in the same trace).
                span.set_attribute(ATTR.TASK_STATUS, RETRYING)
                span.set_attribute(ATTR.ERROR_TYPE, error_type(error))
                if task._next_wall is not None:
                    delay = max(0.0, task._next_wall - time.time())
                    span.set_attribute(ATTR.TASK_RETRY_DELAY, round(delay, 6))
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                return
            if isinstance(error, AttemptAbandoned):
                # Not an outcome: the attempt went back to the queue or to another worker.
                span.set_attribute(ATTR.TASK_STATUS, RELEASED)
                return
            status = outcome_status(error)
            span.set_attribute(ATTR.TASK_STATUS, STATUS_LABELS[status.value])
            if status is TaskStatus.FAILED or status is TaskStatus.TIMEOUT:
                assert error is not None
                span.set_attribute(ATTR.ERROR_TYPE, error_type(error))
                if status is TaskStatus.FAILED:
                    span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            # CANCELLED is a state, not an error: status stays unset.
        finally:
            span.end()
