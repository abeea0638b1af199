"""Telemetry that fails must never fail, lose or stall a task.

The setting is as hostile as we can make it on loopback: an OTLP/gRPC exporter aimed at a real
port that refuses connections, a span exporter that raises on every export, both behind
``BatchSpanProcessor``s with a queue of 2 (so it is full nearly all the time), a synchronous
processor whose exporter raises too, an observer that raises in every hook and middleware that
raises before and after ``call_next``. 200 tasks of every outcome go through an instrumented
``TaskManager`` while a ticker measures how late the event loop wakes it up. Every task must end
with its true outcome, the loop must never stall (a blocking export would), and every failure of
the hooks must be counted in ``manager.internal_errors`` and in
``observable_telemetry_errors_total{component=...}``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from helpers import free_port
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from structlog.testing import CapturingLogger

from observable_tasks import TaskConfig, TaskManager, TaskObserver, TaskStatus
from observable_tasks.telemetry import configure_tracing, instrument, names
from observable_tasks.telemetry.names import ATTR

pytestmark = pytest.mark.e2e

TASKS = 200
MAX_LAG_S = 0.5  # generous: this catches blocking exports, it is not a benchmark
TELEMETRY_ERRORS = names.metric_name(names.TELEMETRY_ERRORS) + "_total"
FINISHED = names.metric_name(names.TASKS_FINISHED) + "_total"
CREATED = names.metric_name(names.TASKS_CREATED) + "_total"


def refused_endpoint() -> str:
    """A loopback port that was free a moment ago and is closed now: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


class RaisingExporter(SpanExporter):
    """Raises on every export (a buggy exporter)."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.calls += 1
        self.called.set()
        raise RuntimeError("exporter exploded")

    def shutdown(self) -> None:
        pass


class BrokenObserver(TaskObserver):
    """Raises in every hook; counts how often each hook was called."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def _boom(self, hook: str) -> None:
        self.calls[hook] += 1
        raise RuntimeError(f"observer {hook} exploded")

    def on_created(self, task: Any) -> None:
        self._boom("on_created")

    def on_cancelled_pending(self, task: Any) -> None:
        self._boom("on_cancelled_pending")

    def on_progress(self, task: Any, progress: float) -> None:
        self._boom("on_progress")

    def on_evicted(self, task: Any) -> None:
        self._boom("on_evicted")

    def on_internal_error(self, component: str, error: BaseException) -> None:
        self._boom("on_internal_error")  # must not recurse nor be counted


class BrokenMiddleware:
    """``when="before"``: raises instead of calling call_next; ``"after"``: raises after it."""

    def __init__(self, when: str) -> None:
        self.when = when
        self.calls = 0
        self.raised = 0

    async def __call__(self, task: Any, call_next: Callable[[], Any]) -> Any:
        self.calls += 1
        if self.when == "before":
            self.raised += 1
            raise RuntimeError("middleware exploded before call_next")
        result = await call_next()
        self.raised += 1
        raise RuntimeError("middleware exploded after call_next")
        return result  # pragma: no cover


# -- the workload: kind -> expected final status -----------------------------------------------


async def completes(i: int, task_id: str, manager: TaskManager) -> int:
    await asyncio.sleep(0)
    manager.update_progress(task_id, 50)
    return i


async def fails(i: int) -> None:
    await asyncio.sleep(0)
    raise ValueError(f"task {i} failed")


async def times_out(i: int) -> None:
    await asyncio.sleep(30)


def sync_completes(i: int, task_id: str, manager: TaskManager) -> int:
    manager.update_progress(task_id, 100)  # from the worker thread
    return i * 2


async def blocks(i: int, task_id: str, entered: Callable[[str], None]) -> None:
    entered(task_id)
    await asyncio.Event().wait()  # until cancelled


KINDS: list[tuple[Callable[..., Any], dict[str, Any], TaskStatus]] = [
    (completes, {}, TaskStatus.COMPLETED),
    (fails, {}, TaskStatus.FAILED),
    (times_out, {"timeout": 0.02}, TaskStatus.TIMEOUT),
    (sync_completes, {}, TaskStatus.COMPLETED),
    (blocks, {}, TaskStatus.CANCELLED),
]


class LoopLag:
    """Ticker coroutine: sleeps 10 ms in a loop and records how late each wake-up was."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            self.lags.append(loop.time() - start - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def max(self) -> float:
        return max(self.lags, default=0.0)


def hostile_provider(endpoint: str) -> tuple[TracerProvider, InMemorySpanExporter, RaisingExporter]:
    provider = TracerProvider()
    # timeout=2: only bounds provider.shutdown() at the end; exports run in the BSP's thread.
    dead = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=2)
    raising = RaisingExporter()
    for exporter in (dead, raising):
        tiny_queue = BatchSpanProcessor(
            exporter, max_queue_size=2, max_export_batch_size=2, schedule_delay_millis=10
        )
        provider.add_span_processor(tiny_queue)
    provider.add_span_processor(SimpleSpanProcessor(RaisingExporter()))  # raises on the loop
    memory = InMemorySpanExporter()  # a healthy processor next to the broken ones
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory, raising


@pytest.fixture
def providers() -> Iterator[list[TracerProvider]]:
    """Providers to shut down after the test (in a thread, bounded: the exporters are dead)."""
    made: list[TracerProvider] = []
    yield made
    for provider in made:
        closer = threading.Thread(target=provider.shutdown, daemon=True)
        closer.start()
        closer.join(timeout=15)
        assert not closer.is_alive(), "TracerProvider.shutdown() hung on a dead collector"


async def run_workload(manager: TaskManager) -> tuple[list[Any], list[TaskStatus], LoopLag]:
    """Create TASKS tasks of every kind, cancel the blocking ones, wait until all are done."""
    tasks: list[Any] = []
    expected: list[TaskStatus] = []
    all_done = asyncio.Event()
    finished = 0
    blocking_entered: set[str] = set()
    still_running: set[str] = set()
    all_entered = asyncio.Event()

    def entered(task_id: str) -> None:
        blocking_entered.add(task_id)
        if still_running and still_running <= blocking_entered:
            all_entered.set()

    def on_done(_task: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == TASKS:
            all_done.set()

    with LoopLag() as lag:
        for i in range(TASKS):
            func, options, status = KINDS[i % len(KINDS)]
            extra: dict[str, Any] = {}
            if func in (completes, sync_completes):
                extra["manager"] = manager
            elif func is blocks:
                extra["entered"] = entered
            task = await manager.create_task(func, i, **options, **extra)
            manager.add_callback(task, on_done)
            tasks.append(task)
            expected.append(status)
            if i % 10 == 9:
                await asyncio.sleep(0)  # let some run while more are created
        # The blocking tasks never end by themselves: they fill every slot (30 of them) and the
        # other 10 wait. Those are cancelled while pending (cancel_task does not yield for a
        # pending task, so none starts in between), the 30 once they all run.
        blocking = [t for t, s in zip(tasks, expected, strict=True) if s is TaskStatus.CANCELLED]
        pending = [t for t in blocking if t.status is TaskStatus.PENDING]
        assert len(pending) >= len(blocking) - manager.config.max_concurrent_tasks
        for task in pending:
            assert await manager.cancel_task(task.id)
        still_running.update(t.id for t in blocking if t not in pending)
        entered("")  # in case they are all in already
        await asyncio.wait_for(all_entered.wait(), timeout=20)
        for task in blocking:
            if task not in pending:
                assert await manager.cancel_task(task.id)
        await asyncio.wait_for(all_done.wait(), timeout=30)
        await asyncio.sleep(0.05)  # a few more ticks after the last task, for the lag record
    return tasks, expected, lag


async def test_dead_and_raising_exporters_and_broken_hooks_never_stall_or_fail_tasks(
    providers: list[TracerProvider],
) -> None:
    provider, memory, raising = hostile_provider(refused_endpoint())
    providers.append(provider)
    registry = CollectorRegistry()
    manager = TaskManager(
        TaskConfig(max_concurrent_tasks=30, max_task_history=0, shutdown_timeout=1.0)
    )
    observer = BrokenObserver()
    before, after = BrokenMiddleware("before"), BrokenMiddleware("after")
    log = CapturingLogger()
    instrument(manager, tracer_provider=provider, registry=registry, logger=log, log_started=True)
    manager.add_observer(observer)
    manager.add_middleware(before, name="broken_before")
    manager.add_middleware(after, name="broken_after")
    try:
        tasks, expected, lag = await run_workload(manager)
    finally:
        await manager.shutdown(timeout=1.0)

    # Every task ended with its true outcome (nothing lost, nothing turned into a failure).
    wrong = [(i, t.status, e) for i, (t, e) in enumerate(zip(tasks, expected, strict=True))]
    assert [w for w in wrong if w[1] is not w[2]] == []
    for i, task in enumerate(tasks):
        func = KINDS[i % len(KINDS)][0]
        if func is completes:
            assert task.result == i
        elif func is sync_completes:
            assert task.result == i * 2
        elif func is fails:
            assert isinstance(task.error, ValueError)
            assert str(task.error) == f"task {i} failed"

    # The loop never stalled on an export.
    assert len(lag.lags) > 10
    assert lag.max < MAX_LAG_S, f"event loop blocked for {lag.max:.3f}s"

    # The broken exporter is really exercised (and fails), in the processor's own thread.
    assert await asyncio.to_thread(raising.called.wait, 10)

    # Every hook failure was reported, once, under its component name...
    outcomes = collections.Counter(expected)
    ran = TASKS - observer.calls["on_cancelled_pending"]  # tasks whose chain executed
    assert observer.calls["on_created"] == TASKS
    assert observer.calls["on_evicted"] == TASKS  # history off: every settled task leaves
    assert observer.calls["on_progress"] == outcomes[TaskStatus.COMPLETED]
    assert 0 < observer.calls["on_cancelled_pending"] < outcomes[TaskStatus.CANCELLED]
    assert before.calls == after.calls == ran
    assert after.raised == outcomes[TaskStatus.COMPLETED]  # call_next returned only for these
    expected_errors = {
        "BrokenObserver.on_created": TASKS,
        "BrokenObserver.on_evicted": TASKS,
        "BrokenObserver.on_progress": outcomes[TaskStatus.COMPLETED],
        "BrokenObserver.on_cancelled_pending": observer.calls["on_cancelled_pending"],
        "broken_before": ran,
        "broken_after": outcomes[TaskStatus.COMPLETED],
    }
    # Exactly these: the telemetry itself (tracing, metrics, logs) never failed.
    assert dict(manager.internal_errors) == expected_errors, observer.calls
    assert observer.calls["on_internal_error"] == sum(expected_errors.values())
    # ...and counted in the registry too.
    for component, count in expected_errors.items():
        value = registry.get_sample_value(TELEMETRY_ERRORS, {"component": component})
        assert value == count, component

    # Metrics and spans are still right, whatever the exporters did.
    for status, count in outcomes.items():
        total = sum(
            registry.get_sample_value(
                FINISHED, {"task": f"{__name__}.{f.__name__}", "status": s.value.lower()}
            )
            or 0
            for f, _, s in KINDS
            if s is status
        )
        assert total == count, status
    spans = memory.get_finished_spans()
    sends = [s for s in spans if s.kind is SpanKind.PRODUCER]
    processes = {
        (s.attributes or {})[ATTR.MESSAGE_ID]: s for s in spans if s.kind is SpanKind.CONSUMER
    }
    assert len(sends) == TASKS
    assert len(processes) == ran
    for task in tasks:
        span = processes.get(task.id)
        if span is None:
            assert task.status is TaskStatus.CANCELLED
            continue
        assert (span.attributes or {})[ATTR.TASK_STATUS] == task.status.value.lower()
        is_error = task.status in (TaskStatus.FAILED, TaskStatus.TIMEOUT)
        assert (span.status.status_code is StatusCode.ERROR) == is_error
    # The logs middleware ran for every executed task, despite the failures around it.
    started = [c for c in log.calls if c.args and c.args[0] == "task.started"]
    assert len(started) == ran


async def test_configure_tracing_with_an_unreachable_collector_does_not_block(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    """The app's own setup (``configure_tracing`` from ``OTEL_*``) with the collector down."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", refused_endpoint())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    provider = configure_tracing("exporter-down", set_global=False)
    providers.append(provider)
    registry = CollectorRegistry()
    manager = TaskManager(TaskConfig(max_concurrent_tasks=50, shutdown_timeout=1.0))
    instrument(manager, tracer_provider=provider, registry=registry, logger=CapturingLogger())
    try:
        tasks, expected, lag = await run_workload(manager)
    finally:
        await manager.shutdown(timeout=1.0)
    assert [t.status for t in tasks] == expected
    assert lag.max < MAX_LAG_S, f"event loop blocked for {lag.max:.3f}s"
    assert registry.get_sample_value(CREATED, {"task": f"{__name__}.completes"}) == TASKS / 5
    assert not manager.internal_errors

    # Shutting the provider down with the collector still down is bounded by the export
    # timeout (not the SDK's default of 10 s per attempt, retried).
    start = time.monotonic()
    provider.shutdown()
    providers.remove(provider)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("timeout_from", ["argument", "environment"])
def test_provider_shutdown_with_the_collector_down_is_bounded_by_the_export_timeout(
    monkeypatch: pytest.MonkeyPatch, timeout_from: str
) -> None:
    """Queued spans, no collector: ``provider.shutdown()`` gives up after the export timeout
    instead of trying every batch with the exporter's whole retry budget, one after the
    other (this took 15 s with a 5 s timeout)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", refused_endpoint())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # everything waits for shutdown
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", raising=False)
    if timeout_from == "environment":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        provider = configure_tracing("collector-down", set_global=False)
    else:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TIMEOUT", raising=False)
        provider = configure_tracing("collector-down", set_global=False, export_timeout=1.0)
    tracer = provider.get_tracer("t")
    for i in range(400):  # forty batches
        with tracer.start_as_current_span(f"span-{i}"):
            pass
    closer = threading.Thread(target=provider.shutdown, daemon=True)
    start = time.monotonic()
    closer.start()
    closer.join(timeout=30)
    elapsed = time.monotonic() - start
    assert not closer.is_alive(), "TracerProvider.shutdown() hung on a dead collector"
    assert elapsed < 3.0, f"shutdown took {elapsed:.1f}s with a 1s export timeout"


def test_export_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="export_timeout"):
        configure_tracing(exporter="otlp", set_global=False, export_timeout=0)


def test_provider_shutdown_with_the_collector_up_still_exports_every_queued_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        provider = configure_tracing("collector-up", set_global=False, export_timeout=1.0)
        tracer = provider.get_tracer("t")
        for i in range(400):
            with tracer.start_as_current_span(f"span-{i}"):
                pass
        provider.shutdown()
        assert sorted(s.name for s in receiver.spans) == sorted(f"span-{i}" for i in range(400))
