"""Exemplars on the Redis backend: recorded where the task ran, served where that is scraped.

A web-side manager (instrumented, runs nothing) creates a task in a real Redis; a dedicated
worker process (``observable-tasks worker --metrics-port``) runs it. The worker's OpenMetrics
scrape carries the exemplar, in the trace the web side started (the task's W3C context travels
in its record); the web side's own histograms have no sample, so no exemplar, to serve.
"""

from __future__ import annotations

import secrets
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, wait_until
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from worker_process import APPS, WorkerProcess

sys.path.insert(0, str(APPS))

import redis_tasks

from observable_tasks import TaskConfig, TaskManager
from observable_tasks.telemetry import instrument, names

pytestmark = pytest.mark.e2e

DURATION = names.metric_name(names.TASK_DURATION)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _exemplar_trace_ids(text: str) -> set[str]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families.get(DURATION)
    if family is None:
        return set()
    return {s.exemplar.labels["trace_id"] for s in family.samples if s.exemplar is not None}


async def test_the_worker_that_ran_the_task_serves_its_exemplar(
    tmp_path: Path, redis_url: str
) -> None:
    from observable_tasks.backends.redis import RedisBackend

    queue = secrets.token_hex(4)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    backend = RedisBackend(redis_url, queue=queue, execute=False, lease=1.0)
    web = TaskManager(TaskConfig(shutdown_timeout=1.0), backend=backend)
    instrument(web, tracer_provider=provider, registry=registry, logs=False)
    await web.start()
    port = free_port()
    extra = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    worker = WorkerProcess(tmp_path, redis_url, queue=queue, extra=extra).wait_ready()
    try:
        task = await web.create_task(redis_tasks.add, 2, 3)
        await web.wait_for_task(task.id, timeout=20)
        (send,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
        trace_id = format(send.context.trace_id, "032x")

        def scrape() -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/metrics", headers={"Accept": OPENMETRICS}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                body: str = response.read().decode()
            return body if trace_id in _exemplar_trace_ids(body) else ""

        body = wait_until(scrape, timeout=10, message="the task's exemplar on the worker")
        assert _exemplar_trace_ids(body) == {trace_id}
        # The web process ran nothing: no duration sample, no exemplar to serve.
        assert _exemplar_trace_ids(openmetrics.generate_latest(registry).decode()) == set()
    finally:
        assert worker.stop() == 0
        await web.shutdown(timeout=1.0)
