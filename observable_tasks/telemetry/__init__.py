"""Instrumentation for observable_tasks: tracing, Prometheus metrics and structlog logs.

Everything here attaches to the core through the public middleware/observer seam, exactly as a
user's own middleware would; the core never imports this package. ``setup_tasks(app)`` calls
:func:`instrument` for you.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from observable_tasks.telemetry import names
from observable_tasks.telemetry.logs import (
    TaskLogger,
    add_trace_context,
    capture_stdlib_logging,
    configure_logging,
)
from observable_tasks.telemetry.metrics import LabelLimiter, TaskMetrics, is_multiprocess
from observable_tasks.telemetry.otel import configure_tracing
from observable_tasks.telemetry.pipeline import TelemetryPart, TelemetryPipeline
from observable_tasks.telemetry.tracing import TaskTracer

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from observable_tasks.manager import TaskManager

__all__ = [
    "Instrumentation",
    "LabelLimiter",
    "TaskLogger",
    "TaskMetrics",
    "TaskTracer",
    "TelemetryPart",
    "TelemetryPipeline",
    "add_trace_context",
    "capture_stdlib_logging",
    "configure_logging",
    "configure_tracing",
    "instrument",
    "is_multiprocess",
    "names",
]


@dataclasses.dataclass
class Instrumentation:
    """What :func:`instrument` attached to a manager (``None`` for a part switched off)."""

    tracer: TaskTracer | None
    metrics: TaskMetrics | None
    logger: TaskLogger | None

    def close(self) -> None:
        """Release per-process state (multiprocess metric and exemplar files of this worker)."""
        if self.metrics is not None and self.metrics.multiprocess:
            from observable_tasks.telemetry.exemplars import mark_process_dead

            mark_process_dead(os.getpid())


def instrument(
    manager: TaskManager,
    *,
    tracing: bool = True,
    metrics: bool = True,
    logs: bool = True,
    tracer_provider: TracerProvider | None = None,
    registry: CollectorRegistry | None = None,
    namespace: str = names.DEFAULT_NAMESPACE,
    max_task_labels: int = 200,
    logger: Any = None,
    log_started: bool = False,
) -> Instrumentation:
    """Attach tracing, metrics and logging to ``manager`` (each can be switched off).

    The parts run as one middleware (:class:`TelemetryPipeline`), in a fixed order: tracing
    first, so the task's span is current while metrics and logs run, and logs last, so every log
    line carries the span's ids. A part that fails is reported under its name (``tracing``,
    ``metrics``, ``logs``) and skipped; the task and the other parts are not affected.
    ``tracer_provider`` defaults to the global provider, ``registry`` to prometheus_client's
    global registry, ``logger`` to ``structlog.get_logger("observable_tasks")``; logs honour
    ``manager.config.log_level``. A task logs ``task.created`` and its outcome at INFO;
    ``task.started`` is DEBUG unless ``log_started=True`` (then INFO too).
    """
    tracer = metric = log = None
    parts: list[TelemetryPart] = []
    if tracing:
        tracer = TaskTracer(tracer_provider)
        parts.append(tracer)
    if metrics:
        # Exemplars point at the task's span: only when this pipeline makes one.
        metric = TaskMetrics(
            registry, namespace=namespace, max_task_labels=max_task_labels, exemplars=tracing
        )
        metric.attach(manager)
        parts.append(metric)
    if logs:
        log = TaskLogger(
            logger,
            level=manager.config.log_level_no,
            started_level=logging.INFO if log_started else logging.DEBUG,
        )
        parts.append(log)
    if parts:
        pipeline = TelemetryPipeline(parts, report=manager.report_internal_error)
        manager.add_observer(pipeline)
        # Not wrapped by guard(): the pipeline keeps its guarantees itself (test_pipeline.py).
        manager.add_middleware(pipeline, name="telemetry", guarded=False)
    if metric is not None:
        metric.expect_components([part.name for part in parts])
    return Instrumentation(tracer, metric, log)
