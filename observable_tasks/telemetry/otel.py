"""Configure an OpenTelemetry SDK tracer provider from the standard ``OTEL_*`` variables.

The library itself only uses the OpenTelemetry *API*; apps (and the demo) call
:func:`configure_tracing` once at start-up. Nothing is installed on import.
"""

from __future__ import annotations

import logging
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

__all__ = ["configure_tracing"]

logger = logging.getLogger("observable_tasks")

_DEFAULT_EXPORT_TIMEOUT_S = 5.0


def configure_tracing(
    service_name: str | None = None,
    *,
    exporter: str | None = None,
    set_global: bool = True,
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
    background thread that drops them when the queue is full. ``set_global`` installs the
    provider as the global one (only the first install takes effect, as in the SDK).
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
        configured = any(
            os.environ.get(v)
            for v in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        )
        exporter_: SpanExporter = OTLPSpanExporter(
            timeout=None if configured else _DEFAULT_EXPORT_TIMEOUT_S
        )
        provider.add_span_processor(BatchSpanProcessor(exporter_))
    elif kind == "console":
        # stderr, batched: spans stay out of the JSON log stream on stdout, and writing them
        # never happens on the event loop.
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif kind != "none":
        raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {kind!r}")
    if set_global:
        trace.set_tracer_provider(provider)
    logger.info("observable_tasks: tracing configured (exporter=%s)", kind)
    return provider
