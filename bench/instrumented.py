"""Wiring of the "fully instrumented" variant: real SDK processors, null sinks.

One :class:`Telemetry` is shared by every run of the variant, as an app shares one tracer
provider, one registry and one logger configuration across its lifetime.
"""

from __future__ import annotations

import importlib
from typing import Any

from prometheus_client import CollectorRegistry

from bench.sinks import (
    NOOP_LEVEL,
    NullSpanExporter,
    NullStream,
    make_json_logger,
    make_tracer_provider,
)

__all__ = ["Telemetry", "instrumentation_available"]


def instrumentation_available() -> bool:
    """True once ``observable_tasks.telemetry.instrument`` exists."""
    try:
        module = importlib.import_module("observable_tasks.telemetry")
    except ImportError:
        return False
    return callable(getattr(module, "instrument", None))


def production_log_processors() -> list[Any] | None:
    """The library's production (JSON) processor chain, if it exposes one, else ``None``.

    ``configure_logging(json=True)`` configures structlog globally; its chain is read back from
    structlog's configuration and the global configuration is restored afterwards, so the
    benchmark renders exactly what production renders without owning global state.
    """
    import structlog

    module = importlib.import_module("observable_tasks.telemetry")
    configure = getattr(module, "configure_logging", None)
    if configure is None:
        return None
    saved = structlog.get_config()
    try:
        configure(json=True, stream=NullStream())
        return list(structlog.get_config()["processors"])
    except TypeError:
        return None
    finally:
        structlog.configure(**saved)


class Telemetry:
    """Tracer provider (BatchSpanProcessor -> null exporter), registry, JSON logger -> null.

    ``noop=True``: OpenTelemetry's no-op tracer provider and a logger that drops every call
    before any processing (metrics stay real). What is left of the instrumented cost is the
    library's own code around the SDK calls, which is how the report separates the two.
    """

    def __init__(self, noop: bool = False) -> None:
        self.noop = noop
        self.tracer_provider: Any
        if noop:
            from opentelemetry.trace import NoOpTracerProvider

            self.tracer_provider, self.spans = NoOpTracerProvider(), NullSpanExporter()
        else:
            self.tracer_provider, self.spans = make_tracer_provider()
        self.registry = CollectorRegistry()
        self.stream = NullStream()
        self.processors = production_log_processors()
        level = NOOP_LEVEL if noop else 20
        self.logger = make_json_logger(self.stream, self.processors, level=level)
        self.managers = 0

    def instrument(self, manager: Any) -> Any:
        from observable_tasks.telemetry import instrument

        self.managers += 1
        return instrument(
            manager,
            tracer_provider=self.tracer_provider,
            registry=self.registry,
            logger=self.logger,
        )

    def flush(self) -> None:
        if not self.noop:
            self.tracer_provider.force_flush()

    def info(self) -> dict[str, Any]:
        self.flush()
        return {"spans_exported": self.spans.exported, "log_lines": self.stream.writes}

    def shutdown(self) -> None:
        if not self.noop:
            self.tracer_provider.shutdown()
