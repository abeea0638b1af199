"""Configure an OpenTelemetry SDK tracer provider from the standard ``OTEL_*`` variables.

The library itself only uses the OpenTelemetry *API*; apps (and the demo) call
:func:`configure_tracing` once at start-up. Nothing is installed on import.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

__all__ = ["configure_tracing"]

logger = logging.getLogger("observable_tasks")

_DEFAULT_EXPORT_TIMEOUT_S = 5.0
_TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def _one_line(span: ReadableSpan) -> str:
    """A span as one line of JSON (the SDK's default is ~30 indented lines per span)."""
    return str(span.to_json(indent=None)) + "\n"


class _BoundedShutdownProcessor(BatchSpanProcessor):
    """A :class:`BatchSpanProcessor` whose ``shutdown`` returns within ``shutdown_timeout``.

    The SDK's shutdown exports every queued batch, each with the exporter's full retry budget
    (with the collector down: seconds per batch, one after the other). Past the bound, the
    exporter is shut down, which aborts its retries; the spans not exported by then are dropped.
    """

    def __init__(self, exporter: SpanExporter, *, shutdown_timeout: float) -> None:
        super().__init__(exporter, export_timeout_millis=shutdown_timeout * 1000)
        self._bounded_exporter = exporter
        self._shutdown_timeout = shutdown_timeout

    def shutdown(self) -> None:
        flush = threading.Thread(
            target=BatchSpanProcessor.shutdown, args=(self,), name="otel-shutdown", daemon=True
        )
        flush.start()
        flush.join(self._shutdown_timeout)
        if flush.is_alive():
            logger.warning(
                "observable_tasks: spans not exported within %.1fs at shutdown "
                "(collector unreachable?): dropping the rest",
                self._shutdown_timeout,
            )
            self._bounded_exporter.shutdown()
            flush.join(0.5)  # the remaining batches now fail at once


def _export_timeout(explicit: float | None) -> float:
    """Seconds: the argument, else ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT``, else 5."""
    if explicit is not None:
        if not explicit > 0:
            raise ValueError(f"export_timeout must be > 0 seconds, got {explicit!r}")
        return float(explicit)
    for variable in _TIMEOUT_VARIABLES:
        raw = os.environ.get(variable, "").strip()
        if raw:
            try:
                value = float(raw)
            except ValueError:
                logger.warning("observable_tasks: ignoring %s=%r (not a number)", variable, raw)
                continue
            if value > 0:
                return value
    return _DEFAULT_EXPORT_TIMEOUT_S


def configure_tracing(
    service_name: str | None = None,
    *,
    exporter: str | None = None,
    set_global: bool = True,
    export_timeout: float | None = None,
    console_stream: TextIO | None = None,
) -> TracerProvider:
    """Build a :class:`TracerProvider` as the ``OTEL_*`` environment describes.

    - ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource (``service_name`` is
      the fallback when neither names the service);
    - ``OTEL_TRACES_EXPORTER``: ``otlp`` (gRPC, batched), ``console`` or ``none``; unset means
      ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, else
      ``console``;
    - ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` and the exporter's
      own ``OTEL_EXPORTER_OTLP_*`` variables are read by the SDK itself.

    An unreachable collector never blocks the app: spans are queued and exported by a
    background thread that drops them when the queue is full. ``export_timeout`` (seconds;
    default ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``/``OTEL_EXPORTER_OTLP_TIMEOUT``, else 5) bounds
    each OTLP export, retries included, and also ``provider.shutdown()`` as a whole: what is
    not exported by then is dropped. The console exporter writes one JSON line per span to
    ``console_stream`` (default stderr). ``set_global`` installs the provider as the global one
    (only the first install takes effect, as in the SDK).
    """
    resource = Resource.create()
    current = str(resource.attributes.get(SERVICE_NAME, ""))
    if service_name and current.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    kind = (exporter or os.environ.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if not kind:
        has_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        kind = "otlp" if has_endpoint else "console"
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # A short export timeout unless configured: with the collector down, shutdown must not
        # hang for long.
        timeout = _export_timeout(export_timeout)
        exporter_: SpanExporter = OTLPSpanExporter(timeout=timeout)
        provider.add_span_processor(_BoundedShutdownProcessor(exporter_, shutdown_timeout=timeout))
    elif kind == "console":
        # stderr, batched: spans stay out of the JSON log stream on stdout, and writing them
        # never happens on the event loop.
        out = console_stream if console_stream is not None else sys.stderr
        console = ConsoleSpanExporter(out=out, formatter=_one_line)
        provider.add_span_processor(BatchSpanProcessor(console))
    elif kind != "none":
        raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {kind!r}")
    if set_global:
        trace.set_tracer_provider(provider)
    logger.info("observable_tasks: tracing configured (exporter=%s)", kind)
    return provider
