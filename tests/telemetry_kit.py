"""Test kit for telemetry: an instrumented manager with in-memory spans, a fresh registry and
captured structlog events (through the same processors an app would configure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from observable_tasks import TaskConfig, TaskManager
from observable_tasks.telemetry import Instrumentation, add_trace_context, instrument, names


@dataclasses.dataclass
class Kit:
    manager: TaskManager
    parts: Instrumentation
    provider: TracerProvider
    exporter: InMemorySpanExporter
    registry: CollectorRegistry
    logs: LogCapture

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def process_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.CONSUMER]

    def send_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.PRODUCER]

    def sample(self, suffix: str, **labels: str) -> float:
        """Value of one series (``suffix`` from names, e.g. ``names.TASKS_FINISHED + "_total"``)."""
        value = self.registry.get_sample_value(names.metric_name(suffix), labels)
        return 0.0 if value is None else value

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        entries = self.logs.entries
        return [e for e in entries if event is None or e["event"] == event]


@contextmanager
def captured_structlog() -> Iterator[LogCapture]:
    """structlog configured like an app (contextvars + trace ids), events captured in memory."""
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_trace_context, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


@contextmanager
def instrumented(config: TaskConfig | None = None, **options: Any) -> Iterator[Kit]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    manager = TaskManager(config or TaskConfig(max_concurrent_tasks=8))
    with captured_structlog() as logs:
        parts = instrument(manager, tracer_provider=provider, registry=registry, **options)
        yield Kit(manager, parts, provider, exporter, registry, logs)


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")
