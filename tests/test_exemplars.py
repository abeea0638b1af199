"""Exemplars on the duration and queue-wait histograms: the trace of a task in its bucket.

One process: the bucket a task's duration/wait fell in carries the ``trace_id``/``span_id`` of
its sampled CONSUMER span, in OpenMetrics only (the text format stays exemplar-free); no
exemplar for an unsampled span, or when the pipeline makes no span. Multiprocess mode: each
process's store writes its own file; a scrape merges them (the latest per bucket wins) onto the
aggregated histograms; a dead process's file is removed. The real multiprocess scrape (demo
``--workers 2`` under a real Prometheus) is in ``test_stack_exemplars.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nexios import NexiosApp
from nexios.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from telemetry_kit import hex_id, instrumented

from observable_tasks import TaskConfig, TaskManager, create_task, setup_tasks
from observable_tasks.telemetry import instrument, names
from observable_tasks.telemetry.exemplars import (
    ExemplarStore,
    MultiProcessExemplarCollector,
    bucket_layout,
    exemplar_file,
    mark_process_dead,
    process_store,
    read_exemplars,
)

DURATION = names.metric_name(names.TASK_DURATION)
WAIT = names.metric_name(names.TASK_QUEUE_WAIT)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


async def quick() -> str:
    await asyncio.sleep(0.01)
    return "ok"


async def fails() -> None:
    raise ValueError("boom")


def exemplars_of(registry: Any, family: str) -> list[tuple[dict[str, str], Any]]:
    """``(bucket labels, exemplar)`` of every bucket sample of ``family`` that has one."""
    found = []
    for metric in registry.collect():
        if metric.name == family:
            for sample in metric.samples:
                if sample.name == family + "_bucket" and sample.exemplar is not None:
                    found.append((sample.labels, sample.exemplar))
    return found


def parse_openmetrics(text: str) -> dict[str, list[Any]]:
    """``{family: samples}`` parsed by prometheus_client's own OpenMetrics parser."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_buckets_carry_the_consumer_span_of_the_task() -> None:
    with instrumented() as kit:
        ok = await kit.manager.create_task(quick)
        bad = await kit.manager.create_task(fails)
        for task in (ok, bad):
            await kit.manager.wait_for_task(task.id)
        spans = {s.attributes["messaging.message.id"]: s for s in kit.process_spans()}
        by_status = {"completed": spans[ok.id], "failed": spans[bad.id]}

        durations = exemplars_of(kit.registry, DURATION)
        assert {labels["status"] for labels, _ in durations} == {"completed", "failed"}
        for labels, exemplar in durations:
            span = by_status[labels["status"]]
            assert exemplar.labels == {
                "trace_id": hex_id(span.context.trace_id, 32),
                "span_id": hex_id(span.context.span_id, 16),
            }
            assert exemplar.value <= float(labels["le"])
            assert "task_id" not in exemplar.labels
        # The bucket the task's duration fell in: the smallest bound above it.
        (completed,) = [(lab, ex) for lab, ex in durations if lab["status"] == "completed"]
        bounds, les = bucket_layout(names.DURATION_BUCKETS)
        first = next(i for i, b in enumerate(bounds) if completed[1].value <= b)
        assert completed[0]["le"] == les[first]

        waits = exemplars_of(kit.registry, WAIT)
        trace_ids = {hex_id(s.context.trace_id, 32) for s in spans.values()}
        assert waits
        assert {ex.labels["trace_id"] for _, ex in waits} <= trace_ids


async def test_no_exemplar_when_the_span_is_not_sampled() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    registry = CollectorRegistry()
    manager = TaskManager(TaskConfig())
    instrument(manager, tracer_provider=provider, registry=registry, logs=False)
    task = await manager.create_task(quick)
    await manager.wait_for_task(task.id)
    labels = {"task": task.function, "status": "completed"}
    assert registry.get_sample_value(DURATION + "_count", labels) == 1
    assert exemplars_of(registry, DURATION) == []
    assert exemplars_of(registry, WAIT) == []
    await manager.shutdown()


async def test_no_exemplar_without_the_tracing_part() -> None:
    # A sampled span is current (the caller's), but the pipeline made no task span: no exemplar.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    manager = TaskManager(TaskConfig())
    instrument(manager, tracing=False, registry=registry, logs=False)
    with provider.get_tracer("test").start_as_current_span("caller"):
        task = await manager.create_task(quick)
        await manager.wait_for_task(task.id)
    assert exemplars_of(registry, DURATION) == []
    await manager.shutdown()


async def test_text_format_has_no_exemplars_openmetrics_has_them() -> None:
    with instrumented() as kit:
        task = await kit.manager.create_task(quick)
        await kit.manager.wait_for_task(task.id)
        (span,) = kit.process_spans()
        trace_id = hex_id(span.context.trace_id, 32)
        text = generate_latest(kit.registry).decode()
        assert trace_id not in text
        assert " # {" not in text
        om = openmetrics.generate_latest(kit.registry).decode()
        assert f'trace_id="{trace_id}"' in om
        families = parse_openmetrics(om)
        bucket = [s for s in families[DURATION] if s.exemplar is not None]
        assert [s.exemplar.labels["trace_id"] for s in bucket] == [trace_id]


def test_metrics_route_negotiates_openmetrics_with_exemplars() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    app = NexiosApp()
    setup_tasks(app, tracer_provider=provider, registry=registry, logs=False)

    @app.post("/go")
    async def go(request: Any, response: Any) -> Any:
        task = await create_task(quick)
        return {"task_id": task.id}

    with TestClient(app) as client:
        assert client.post("/go").status_code == 200
        deadline = time.monotonic() + 5
        while not exporter.get_finished_spans() or not [
            s for s in exporter.get_finished_spans() if s.name.startswith("process")
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
        trace_id = hex_id(span.context.trace_id, 32)

        om = client.get("/metrics", headers={"Accept": OPENMETRICS})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        families = parse_openmetrics(om.text)
        assert {s.exemplar.labels["trace_id"] for s in families[DURATION] if s.exemplar} == {
            trace_id
        }
        plain = client.get("/metrics")
        assert plain.headers["content-type"].startswith("text/plain")
        assert trace_id not in plain.text
        assert "# EOF" not in plain.text


# -- multiprocess: per-process files, merged at scrape time ----------------------------------

_OBSERVE = """
import os, sys
from prometheus_client import Histogram
from observable_tasks.telemetry import names
h = Histogram(names.metric_name(names.TASK_DURATION), "d", ["task", "status"],
              buckets=names.DURATION_BUCKETS)
for value in sys.argv[1:]:
    h.labels("t", "completed").observe(float(value))
print(os.getpid())
"""


def _fake_process(folder: Path, *values: float) -> int:
    """A real process observing the duration histogram in multiprocess mode; its pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    out = subprocess.run(
        [sys.executable, "-c", _OBSERVE, *map(str, values)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def _record(store: ExemplarStore, value: float, trace_id: str, status: str = "completed") -> None:
    bounds, les = bucket_layout(names.DURATION_BUCKETS)
    labels = tuple(sorted({"task": "t", "status": status}.items()))
    store.record(
        DURATION + "_bucket",
        labels,
        bounds,
        les,
        value,
        {"trace_id": trace_id, "span_id": trace_id[:16]},
    )


def _scrape(folder: Path) -> dict[str, list[Any]]:
    registry = CollectorRegistry()
    registry.register(MultiProcessExemplarCollector(str(folder)))
    return parse_openmetrics(openmetrics.generate_latest(registry).decode())


def _bucket_exemplars(families: dict[str, list[Any]]) -> dict[str, str]:
    return {
        s.labels["le"]: s.exemplar.labels["trace_id"]
        for s in families[DURATION]
        if s.name.endswith("_bucket") and s.exemplar is not None
    }


def test_two_processes_merge_latest_wins_and_dead_files_go(tmp_path: Path) -> None:
    pid_a = _fake_process(tmp_path, 0.2, 3.0)
    pid_b = _fake_process(tmp_path, 0.3)
    a = ExemplarStore(str(tmp_path), pid=pid_a)
    b = ExemplarStore(str(tmp_path), pid=pid_b)
    _record(a, 0.2, "a" * 32)  # le=0.25
    _record(a, 3.0, "c" * 32)  # le=5.0
    time.sleep(0.01)
    _record(b, 0.3, "b" * 32)  # le=0.5
    _record(b, 0.21, "d" * 32)  # le=0.25, later than a's: wins
    a.flush()
    b.flush()
    assert Path(exemplar_file(str(tmp_path), pid_a)).exists()
    assert Path(exemplar_file(str(tmp_path), pid_b)).exists()
    assert not list(tmp_path.glob("*.tmp"))

    families = _scrape(tmp_path)
    assert _bucket_exemplars(families) == {"0.25": "d" * 32, "0.5": "b" * 32, "5.0": "c" * 32}
    # The aggregated counts are prometheus_client's, untouched.
    counts = {s.labels["le"]: s.value for s in families[DURATION] if s.name.endswith("_bucket")}
    assert (counts["0.25"], counts["0.5"], counts["5.0"]) == (1, 2, 3)

    # The merge is read per scrape: a newer exemplar of A replaces B's in that bucket.
    time.sleep(0.01)
    _record(a, 0.22, "e" * 32)
    a.flush()
    assert _bucket_exemplars(_scrape(tmp_path))["0.25"] == "e" * 32

    # B dies: its file is removed; its buckets keep their counts, without B's exemplars.
    mark_process_dead(pid_b, str(tmp_path))
    assert not Path(exemplar_file(str(tmp_path), pid_b)).exists()
    assert _bucket_exemplars(_scrape(tmp_path)) == {"0.25": "e" * 32, "5.0": "c" * 32}


def test_store_flushes_in_the_background_only_when_changed(tmp_path: Path) -> None:
    store = ExemplarStore(str(tmp_path), pid=4242, interval=0.05)
    path = Path(store.file)
    _record(store, 1.5, "f" * 32)
    deadline = time.monotonic() + 5
    while not path.exists():
        assert time.monotonic() < deadline, "the flusher never wrote the file"
        time.sleep(0.01)
    first = path.stat().st_mtime_ns
    time.sleep(0.2)
    assert path.stat().st_mtime_ns == first  # nothing changed: no rewrite
    data = json.loads(path.read_text())
    assert data["pid"] == 4242
    ((name, labels, le, trace_id, span_id, value, _ts),) = data["exemplars"]
    assert (name, labels, le, trace_id, value) == (
        DURATION + "_bucket",
        {"status": "completed", "task": "t"},
        "2.5",
        "f" * 32,
        1.5,
    )
    assert span_id == "f" * 16
    store.close()
    assert not path.exists()
    _record(store, 2.0, "0" * 32)  # a closed store writes nothing any more
    time.sleep(0.2)
    assert not path.exists()


def test_the_scraped_process_adds_what_it_has_not_flushed_yet(tmp_path: Path) -> None:
    pid = _fake_process(tmp_path, 0.2)
    own = process_store(str(tmp_path))  # this process's store, flushed every 0.5 s
    try:
        older = ExemplarStore(str(tmp_path), pid=pid)
        _record(older, 0.2, "a" * 32)
        older.flush()
        time.sleep(0.01)
        _record(own, 0.24, "b" * 32)  # newer, same bucket, still in memory only
        assert _bucket_exemplars(_scrape(tmp_path)) == {"0.25": "b" * 32}
        # Marked dead (a clean shutdown does it): its exemplars and file are gone ...
        mark_process_dead(os.getpid(), str(tmp_path))
        assert not Path(own.file).exists()
        assert _bucket_exemplars(_scrape(tmp_path)) == {"0.25": "a" * 32}
        # ... and a manager started again in this process records afresh.
        _record(own, 0.23, "c" * 32)
        assert _bucket_exemplars(_scrape(tmp_path)) == {"0.25": "c" * 32}
    finally:
        own.close()
        mark_process_dead(os.getpid(), str(tmp_path))
    assert not Path(own.file).exists()


def test_unreadable_or_foreign_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "exemplars_1.json").write_text("{not json")
    (tmp_path / "exemplars_2.json").write_text(json.dumps({"format": 99, "exemplars": [[1]]}))
    (tmp_path / "exemplars_3.json").write_text(json.dumps({"format": 1, "exemplars": [[1, 2]]}))
    assert read_exemplars(str(tmp_path)) == {}


def test_text_scrape_in_multiprocess_mode_is_plain(tmp_path: Path) -> None:
    """The route's text answer in multiprocess mode comes from prometheus_client alone."""
    pid = _fake_process(tmp_path, 0.2)
    store = ExemplarStore(str(tmp_path), pid=pid)
    _record(store, 0.2, "a" * 32)
    store.flush()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = """
import sys
from nexios import NexiosApp
from nexios.testclient import TestClient
from observable_tasks.telemetry.route import add_metrics_route
app = NexiosApp()
add_metrics_route(app)
with TestClient(app) as client:
    sys.stdout.write(client.get("/metrics", headers={"Accept": sys.argv[1]}).text)
"""
    plain = subprocess.run(
        [sys.executable, "-c", script, "text/plain"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "a" * 32 not in plain
    assert f'{DURATION}_bucket{{le="0.25",status="completed",task="t"}} 1.0' in plain
    om = subprocess.run(
        [sys.executable, "-c", script, OPENMETRICS],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert _bucket_exemplars(parse_openmetrics(om)) == {"0.25": "a" * 32}
