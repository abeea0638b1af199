"""setup_tasks wires telemetry in; /metrics; configure_tracing from the environment."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest
from nexios import NexiosApp
from nexios.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from telemetry_kit import captured_structlog

from observable_tasks import create_task, setup_tasks
from observable_tasks.telemetry import configure_tracing, names


async def double(x: int) -> int:
    return x * 2


def make_app(**options: Any) -> tuple[NexiosApp, CollectorRegistry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    app = NexiosApp()
    manager = setup_tasks(app, tracer_provider=provider, registry=registry, **options)

    @app.post("/double")
    async def start(request: Any, response: Any) -> Any:
        task = await create_task(double, 21)
        await manager.wait_for_task(task.id)
        return {"task_id": task.id, "result": task.result}

    return app, registry, exporter


def test_metrics_route_serves_the_registry_get_only_and_survives_a_405() -> None:
    app, _, _ = make_app()
    with TestClient(app) as client:
        assert client.post("/double").json()["result"] == 42
        first = client.get("/metrics")
        assert first.status_code == 200
        assert first.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
        series = 'observable_tasks_finished_total{status="completed",task="%s"} 1.0'
        assert series % "test_telemetry_setup.double" in first.text
        wrong = client.post("/metrics")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD"
        # Nexios makes a 405 "sticky" for normal routes; /metrics must keep working.
        assert client.get("/metrics").status_code == 200
        assert client.head("/metrics").status_code == 200
        om = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        schema = client.get("/openapi.json").json()
        assert "/metrics" not in schema.get("paths", {})
        assert "/double" in schema.get("paths", {})


def test_metrics_path_is_configurable_and_can_be_switched_off() -> None:
    app, _, _ = make_app(metrics_path="/internal/metrics")
    with TestClient(app) as client:
        assert client.get("/internal/metrics").status_code == 200
        assert client.get("/metrics").status_code == 404
    app, registry, _ = make_app(metrics_path=None)
    with TestClient(app) as client:
        client.post("/double")
        assert client.get("/metrics").status_code == 404
    created = names.metric_name(names.TASKS_CREATED + "_total")
    assert registry.get_sample_value(created, {"task": "test_telemetry_setup.double"}) == 1


async def triple(x: int) -> int:
    return x * 3


def test_max_task_labels_caps_the_task_label() -> None:
    registry = CollectorRegistry()
    app = NexiosApp()
    manager = setup_tasks(app, registry=registry, tracing=False, logs=False, max_task_labels=1)

    @app.post("/run")
    async def run(request: Any, response: Any) -> Any:
        for fn in (double, triple, triple):
            task = await create_task(fn, 1)
            await manager.wait_for_task(task.id)
        return {}

    with TestClient(app) as client:
        assert client.post("/run").status_code == 200
        scraped = client.get("/metrics").text
    created = names.metric_name(names.TASKS_CREATED + "_total")
    overflow = names.metric_name(names.LABEL_OVERFLOW + "_total")
    assert registry.get_sample_value(created, {"task": "test_telemetry_setup.double"}) == 1
    assert registry.get_sample_value(created, {"task": names.OVERFLOW_VALUE}) == 2
    assert registry.get_sample_value(overflow, {"label": "task"}) == 1  # one function folded
    assert "test_telemetry_setup.triple" not in scraped


def test_each_part_can_be_switched_off() -> None:
    with captured_structlog() as logs:
        app, registry, exporter = make_app(tracing=False, logs=False)
        with TestClient(app) as client:
            client.post("/double")
        assert exporter.get_finished_spans() == ()
        assert logs.entries == []
        created = names.metric_name(names.TASKS_CREATED + "_total")
        assert registry.get_sample_value(created, {"task": "test_telemetry_setup.double"}) == 1

        app, registry, exporter = make_app(telemetry=False)
        with TestClient(app) as client:
            client.post("/double")
            assert client.get("/metrics").status_code == 404
        assert exporter.get_finished_spans() == ()
        assert list(registry.collect()) == []
        assert logs.entries == []


def test_trace_requests_gives_one_trace_request_send_process() -> None:
    app, _, exporter = make_app(trace_requests=True)
    with TestClient(app) as client:
        task_id = client.post("/double").json()["task_id"]
        assert client.get("/metrics").status_code == 200
    spans = exporter.get_finished_spans()
    assert "/double" in next(s.name for s in spans if s.kind is SpanKind.SERVER)
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]  # /metrics is not traced
    (send,) = [s for s in spans if s.kind is SpanKind.PRODUCER]
    (process,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert process.attributes[names.ATTR.MESSAGE_ID] == task_id
    assert send.parent.span_id == server.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert {s.context.trace_id for s in (server, send, process)} == {server.context.trace_id}


def test_request_spans_are_named_by_the_route_template_without_message_spans() -> None:
    from nexios.routing import Router

    app, _, exporter = make_app(trace_requests=True)

    @app.get("/status/{task_id}")
    async def status(request: Any, response: Any, task_id: str) -> Any:
        return {"task_id": task_id}

    api = Router(prefix="/api")

    @api.get("/items/{item_id}")
    async def item(request: Any, response: Any, item_id: str) -> Any:
        return {"item_id": item_id}

    app.mount_router(api)
    with TestClient(app) as client:
        ids = [client.post("/double").json()["task_id"] for _ in range(3)]
        for task_id in ids:
            assert client.get(f"/status/{task_id}").json() == {"task_id": task_id}
        assert client.get("/api/items/42").status_code == 200
        assert client.get("/no/such/path/123").status_code == 404
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    by_name: dict[str, list[Any]] = {}
    for span in servers:
        by_name.setdefault(span.name, []).append(span)
    assert sorted((name, len(spans)) for name, spans in by_name.items()) == [
        ("GET", 1),
        ("GET /api/items/{item_id}", 1),
        ("GET /status/{task_id}", 3),
        ("POST /double", 3),
    ]
    for name, spans in by_name.items():
        for span in spans:
            route = name.partition(" ")[2]
            assert span.attributes.get("http.route") == (route or None), name
    # No "http receive"/"http send" children: the request spans and the tasks' own spans only.
    kinds = sorted(s.kind.name for s in exporter.get_finished_spans())
    assert kinds == ["CONSUMER"] * 3 + ["PRODUCER"] * 3 + ["SERVER"] * 8


def test_configure_tracing_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-from-env")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    provider = configure_tracing("fallback", set_global=False)
    assert provider.resource.attributes["service.name"] == "svc-from-env"
    assert provider._active_span_processor._span_processors == ()

    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    provider = configure_tracing("fallback", set_global=False)
    assert provider.resource.attributes["service.name"] == "fallback"
    (processor,) = provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    provider.shutdown()

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    provider = configure_tracing(set_global=False)
    (processor,) = provider._active_span_processor._span_processors
    # Console when no endpoint, batched (never written on the event loop), to stderr.
    assert isinstance(processor, BatchSpanProcessor)
    assert isinstance(processor._batch_processor._exporter, ConsoleSpanExporter)
    provider.shutdown()

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing(exporter="none", set_global=False)
    assert not provider.get_tracer("t").start_span("x").is_recording()

    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        configure_tracing(exporter="zipkin", set_global=False)


def test_console_exporter_writes_one_json_line_per_span() -> None:
    stream = io.StringIO()
    provider = configure_tracing(exporter="console", set_global=False, console_stream=stream)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent", attributes={"k": "v"}):
        for i in range(4):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    provider.shutdown()  # flushes the batch
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    spans = [json.loads(line) for line in lines]
    assert sorted(s["name"] for s in spans) == sorted(["parent", *(f"child-{i}" for i in range(4))])
    (parent,) = [s for s in spans if s["name"] == "parent"]
    assert parent["attributes"] == {"k": "v"}


def test_nothing_is_configured_on_import() -> None:
    code = """
import json, structlog
from opentelemetry import trace
import observable_tasks, observable_tasks.telemetry, observable_tasks.demo
from observable_tasks.demo import create_app
print(json.dumps({
    "provider": type(trace.get_tracer_provider()).__name__,
    "structlog": structlog.is_configured(),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"provider": "ProxyTracerProvider", "structlog": False}


def test_telemetry_public_names() -> None:
    import observable_tasks.telemetry as telemetry

    for name in telemetry.__all__:
        assert hasattr(telemetry, name), name
