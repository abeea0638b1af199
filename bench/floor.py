"""The SDK floor: what the telemetry libraries themselves charge for one task's telemetry.

It makes, in a plain loop with no task system around it, the same OpenTelemetry,
prometheus_client and structlog calls the instrumented manager makes per task: a PRODUCER "send"
span with W3C ``inject``, a CONSUMER "process" span parented by ``extract`` and made current,
counter increments, histogram observations, gauge sets, contextvars binding and JSON log lines.
How many of each is not guessed: :func:`calibrate` counts the calls a real instrumented run makes
per task, and the floor repeats exactly those counts. Label children are looked up once, as the
library does, so the floor is the cheapest honest price of those calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client.metrics as prom_metrics
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bench.sinks import NOOP_LEVEL, NullStream, make_json_logger, make_tracer_provider
from bench.workload import work

__all__ = ["SdkFloor", "calibrate", "DEFAULT_COUNTS"]

#: Used when there is no instrumented manager to calibrate against (the issue's description).
DEFAULT_COUNTS: dict[str, float] = {
    "spans": 2,
    "inject": 1,
    "extract": 1,
    "context_attach": 1,
    "counter_inc": 2,
    "histogram_observe": 2,
    "gauge_ops": 1,
    "bind_contextvars": 1,
    "log_lines": 4,
}


@contextlib.contextmanager
def _counting(tally: Tally[str]) -> Iterator[None]:
    """Count calls to the SDK entry points the instrumentation uses (restored on exit)."""
    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, key: str) -> None:
        original = getattr(owner, attr)

        def counted(*args: Any, **kwargs: Any) -> Any:
            tally[key] += 1
            return original(*args, **kwargs)

        patches.append((owner, attr, original))
        setattr(owner, attr, counted)

    wrap(prom_metrics.Counter, "inc", "counter_inc")
    wrap(prom_metrics.Histogram, "observe", "histogram_observe")
    try:  # the library's observations with an exemplar, which bypass Histogram.observe
        from observable_tasks.telemetry import _histogram
    except ImportError:
        pass
    else:
        wrap(_histogram, "observe_with_exemplar", "histogram_observe")
    for attr in ("inc", "dec", "set"):
        wrap(prom_metrics.Gauge, attr, "gauge_ops")
    wrap(propagate, "inject", "inject")
    wrap(propagate, "extract", "extract")
    wrap(otel_context, "attach", "context_attach")
    wrap(structlog.contextvars, "bind_contextvars", "bind_contextvars")
    try:
        yield
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)


async def calibrate(
    make_manager: Callable[[], Any], telemetry: Any, n: int = 200
) -> dict[str, float]:
    """Calls per completed task made by an instrumented manager (``make_manager()``)."""
    manager = make_manager()
    await manager.start()
    # Warm up first (label children, loggers): the counts are for the steady state.
    for i in range(20):
        await manager.wait_for_task((await manager.create_task(work, i)).id)
    telemetry.flush()
    spans0, lines0 = telemetry.spans.exported, telemetry.stream.writes
    tally: Tally[str] = Tally()
    with _counting(tally):
        tasks = [await manager.create_task(work, i) for i in range(n)]
        for t in tasks:
            await manager.wait_for_task(t.id)
        await asyncio.sleep(0)
    telemetry.flush()
    await manager.shutdown()
    counts = {key: tally[key] / n for key in DEFAULT_COUNTS}
    counts["spans"] = (telemetry.spans.exported - spans0) / n
    counts["log_lines"] = (telemetry.stream.writes - lines0) / n
    return counts


class SdkFloor:
    """One task's worth of telemetry calls, ``one(i)``, with its own provider, registry, logger."""

    def __init__(
        self, counts: dict[str, float], processors: list[Any] | None, noop: bool = False
    ) -> None:
        self.counts = {k: round(v) for k, v in counts.items()}
        self.measured = dict(counts)
        self.noop = noop  # the same loop with a no-op tracer and logger (see Telemetry)
        self.tracer_provider, self.spans = make_tracer_provider()
        provider: Any = trace.NoOpTracerProvider() if noop else self.tracer_provider
        self.tracer = provider.get_tracer("observable_tasks")
        self.stream = NullStream()
        self.logger = make_json_logger(self.stream, processors, level=NOOP_LEVEL if noop else 20)
        reg = CollectorRegistry()
        fn = f"{work.__module__}.{work.__qualname__}"
        self.function = fn
        counters = [
            Counter("floor_created", "c", ["task"], registry=reg).labels(fn),
            Counter("floor_finished", "c", ["task", "status"], registry=reg).labels(
                fn, "completed"
            ),
        ]
        histograms = [
            Histogram(
                "floor_queue_wait_seconds", "h", ["task"], registry=reg,
                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                         600.0, 1800.0),
            ).labels(fn),
            Histogram(
                "floor_duration_seconds", "h", ["task", "status"], registry=reg,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                         120.0, 300.0, 600.0, 1800.0, 3600.0),
            ).labels(fn, "completed"),
        ]  # fmt: skip
        gauge = Gauge("floor_last_success", "g", ["task"], registry=reg).labels(fn)
        self.registry = reg
        c = self.counts
        self._counters = [counters[k % 2] for k in range(c["counter_inc"])]
        self._histograms = [histograms[k % 2] for k in range(c["histogram_observe"])]
        self._gauge_ops = c["gauge_ops"]
        self._gauge = gauge
        self._log_lines = c["log_lines"]
        self._binds = c["bind_contextvars"]

    def one(self, i: int) -> None:
        """Telemetry of one task, in a fresh context as each task has its own."""
        contextvars.Context().run(self._one, i)

    def _one(self, i: int) -> None:
        self.process(*self.send(i))

    def send(self, i: int) -> tuple[str, dict[str, str], int]:
        """The creation half (send span, W3C inject, task.created); its result goes to
        :meth:`process`, the execution half."""
        tracer, log, fn = self.tracer, self.logger, self.function
        task_id = f"{i:032x}"
        headers: dict[str, str] = {}
        send = tracer.start_span(
            f"send {fn}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "observable_tasks",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.message.id": task_id,
                "code.function.name": fn,
                "observable_tasks.task.name": "work",
            },
        )
        propagate.inject(headers, context=trace.set_span_in_context(send))
        send.end()
        lines = self._log_lines
        if lines:
            traceparent = headers.get("traceparent")  # none with the no-op tracer
            _, trace_id, span_id, _ = (traceparent or "---").split("-")
            log.info(
                "task.created", task_id=task_id, task_name="work", task_function=fn,
                status="pending", trace_id=trace_id, span_id=span_id, timeout_s=None,
            )  # fmt: skip
            lines -= 1
        return task_id, headers, lines

    def process(self, task_id: str, headers: dict[str, str], lines: int) -> None:
        """The execution half: process span made current, bindings, metrics, log lines."""
        tracer, log, fn = self.tracer, self.logger, self.function
        parent = propagate.extract(headers)
        span = tracer.start_span(
            f"process {fn}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "observable_tasks",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.message.id": task_id,
                "code.function.name": fn,
                "observable_tasks.task.name": "work",
                "observable_tasks.task.queue_wait_s": 0.0001,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        ctx = span.get_span_context()
        bound = {
            "task_id": task_id,
            "task_name": "work",
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
        }
        for _ in range(self._binds):
            structlog.contextvars.bind_contextvars(**bound)
        start = time.perf_counter()
        observed = 0
        hist = self._histograms
        if hist:
            hist[0].observe(0.0001)
            observed = 1
        while lines > 1:
            log.info(
                "task.started", **bound, task_function=fn, status="running", queue_wait_s=0.0001
            )
            lines -= 1
        elapsed = time.perf_counter() - start
        for counter in self._counters[1:] if self._counters else ():
            counter.inc()
        for h in hist[observed:]:
            h.observe(elapsed)
        for _ in range(self._gauge_ops):
            self._gauge.set(time.time())
        if lines:
            log.info(
                "task.completed", **bound, task_function=fn, status="completed", duration_s=elapsed
            )
        otel_context.detach(token)
        span.set_attribute("observable_tasks.task.status", "completed")
        span.end()
        if self._counters:
            self._counters[0].inc()

    def info(self) -> dict[str, Any]:
        self.tracer_provider.force_flush()
        return {
            "spans_exported": self.spans.exported,
            "log_lines": self.stream.writes,
            "calls_per_task": self.counts,
        }

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
