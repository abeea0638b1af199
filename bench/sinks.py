"""Telemetry back ends that do the real SDK work but send nothing anywhere.

Every instrumented variant gets the SDK's own processors (``BatchSpanProcessor``, a real
``CollectorRegistry``, a ``PeriodicExportingMetricReader``, structlog's JSON rendering); only the
last hop, the exporter or the stream, discards. The sinks count what reached them, so the harness
can tell when a processor dropped data instead of doing the work.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "NOOP_LEVEL",
    "NullSpanExporter",
    "NullMetricExporter",
    "NullStream",
    "make_tracer_provider",
    "make_meter_provider",
    "make_json_logger",
]


NOOP_LEVEL = 50  # CRITICAL: every method the library calls (debug to error) becomes a no-op


class NullSpanExporter(SpanExporter):
    """Accepts every batch and keeps only a count."""

    def __init__(self) -> None:
        self.exported = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class NullMetricExporter(MetricExporter):
    """Accepts every collection and keeps only a count."""

    def __init__(self) -> None:
        super().__init__()
        self.exports = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class NullStream:
    """A text stream that drops what is written and counts lines (``write`` calls)."""

    def __init__(self) -> None:
        self.writes = 0
        self.chars = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.chars += len(text)
        return len(text)

    def flush(self) -> None:
        pass


def make_tracer_provider() -> tuple[TracerProvider, NullSpanExporter]:
    """An SDK tracer provider with the default sampler and a BatchSpanProcessor."""
    exporter = NullSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def make_meter_provider() -> tuple[MeterProvider, NullMetricExporter]:
    """An SDK meter provider whose periodic reader exports to nowhere (once a minute)."""
    exporter = NullMetricExporter()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    return MeterProvider(metric_readers=[reader]), exporter


def make_json_logger(
    stream: NullStream, processors: Sequence[Any] | None = None, level: int = 20
) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger rendering JSON lines (with level and ISO timestamp) into ``stream``.

    ``processors`` replaces the default chain (the library's own production chain, when it
    offers one, so that the benchmark renders exactly what production would).
    ``NOOP_LEVEL`` makes every call below CRITICAL a no-op (the "no-op SDK" variants).
    """
    chain = (
        list(processors)
        if processors is not None
        else [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    )
    proxy = structlog.wrap_logger(
        structlog.WriteLogger(stream),  # type: ignore[arg-type]
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    # The bound logger itself, not the lazy proxy: what the library's own default logger is
    # once structlog caches it (configure_logging), so every variant logs as production does.
    logger: structlog.typing.FilteringBoundLogger = proxy.bind()
    return logger
