"""``observable-tasks demo --workers 2``: /metrics adds up every worker process.

A real two-worker uvicorn (started by the console script, Prometheus multiprocess mode on an
empty folder of our own) gets many ``/simulate`` requests, each on a fresh connection and several
at a time, until BOTH workers have created tasks. That is proven three independent ways, none of
which the library had to add anything for: each worker's own metric files in the multiprocess
folder (named by pid), the ``process.pid`` resource of the spans each worker exports (OTel's
process resource detector, switched on by environment), and scrapes that report totals no single
worker's registry could hold. Then every scrape, whichever worker answers it, must report the
true totals: created, finished by status, errors by type, histogram counts, and the running and
pending ``livesum`` gauges back at 0. Each busy worker writes its own exemplar file. A clean
stop (SIGINT) must leave the counters readable from the folder and no live gauge or exemplar
file behind.
"""

from __future__ import annotations

import collections
import json
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_until
from otlp_receiver import OTLPReceiver
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from server_process import ServerProcess, metric_value, scrape_metrics, serve

from observable_tasks.telemetry import names
from observable_tasks.telemetry.names import ATTR

pytestmark = pytest.mark.e2e

FUNCTION = "observable_tasks.demo.simulated_work"
WORKERS = 2
DEMO_LIMIT = 25  # --max-concurrent-tasks: the concurrency limit of each worker
CREATED = names.metric_name(names.TASKS_CREATED) + "_total"
FINISHED = names.metric_name(names.TASKS_FINISHED) + "_total"
ERRORS = names.metric_name(names.TASK_ERRORS) + "_total"
RUNNING = names.metric_name(names.TASKS_RUNNING)
PENDING = names.metric_name(names.TASKS_PENDING)
LIMIT = names.metric_name(names.TASKS_CONCURRENCY_LIMIT)
DURATION_COUNT = names.metric_name(names.TASK_DURATION) + "_count"
QUEUE_WAIT_COUNT = names.metric_name(names.TASK_QUEUE_WAIT) + "_count"

# outcome -> (request body, final status, error type); cycled through, request by request.
OUTCOMES: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "complete": ({"outcome": "complete", "seconds": 0.02}, "completed", None),
    "fail": ({"outcome": "fail", "seconds": 0.02}, "failed", "ValueError"),
    "timeout": ({"outcome": "timeout", "seconds": 0.4, "timeout": 0.05}, "timeout", None),
    "task_error": ({"outcome": "task_error", "seconds": 0.02}, "failed", "TaskError"),
}
CYCLE = ["complete", "complete", "fail", "timeout", "complete", "task_error", "complete", "fail"]
BATCH = 40
MAX_TASKS = 400


@pytest.fixture
def prom_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "prometheus-multiproc"
    folder.mkdir()
    return folder


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rec:
        yield rec


@pytest.fixture
def server(prom_dir: Path, receiver: OTLPReceiver, tmp_path: Path) -> Iterator[ServerProcess]:
    env: dict[str, str | None] = {
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "e2e-multiprocess",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Adds process.pid to every span's resource: tells which worker ran a task.
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
        "LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": None,  # OTLP, because an endpoint is set
    }
    args = ["demo", "--workers", str(WORKERS), "--max-concurrent-tasks", str(DEMO_LIMIT)]
    with serve(
        [*args, "--log-level", "warning"],
        env=env,
        log_dir=tmp_path,
        name="demo-workers",
        uvicorn=False,
        startup_timeout=45,
    ) as srv:
        yield srv


def created_per_pid(prom_dir: Path) -> dict[int, float]:
    """Tasks created by each worker, read from that worker's own counter file."""
    counts: dict[int, float] = {}
    for path in prom_dir.glob("counter_*.db"):
        pid = int(re.fullmatch(r"counter_(\d+)\.db", path.name).group(1))  # type: ignore[union-attr]
        total = 0.0
        values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        for key, value, _timestamp, _pos in values:
            _metric, sample, labels, _help = json.loads(key)
            if sample == CREATED and labels.get("task") == FUNCTION:
                total += value
        counts[pid] = total
    return counts


def post_simulations(url: str, kinds: list[str]) -> list[str]:
    """POST one /simulate per kind, 8 at a time, each request on a brand-new connection."""

    def post(kind: str) -> str:
        # A client per request and "Connection: close": every request is a new TCP connection,
        # accepted by whichever worker gets there first.
        with httpx.Client(timeout=10.0, headers={"Connection": "close"}) as client:
            response = client.post(url + "/simulate", json=OUTCOMES[kind][0])
        assert response.status_code == 200, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, kinds))


def test_metrics_aggregate_every_worker(
    server: ServerProcess, prom_dir: Path, receiver: OTLPReceiver
) -> None:
    metrics_url = server.url + "/metrics"
    client = httpx.Client(timeout=10.0, headers={"Connection": "close"})
    try:
        # Both workers are serving once the livesum of their concurrency limits is complete.
        wait_until(
            lambda: (
                metric_value(scrape_metrics(client, metrics_url), LIMIT) == WORKERS * DEMO_LIMIT
            ),
            timeout=30,
            message="both workers to be up",
        )

        kinds: list[str] = []
        task_ids: list[str] = []
        while True:
            batch = [CYCLE[(len(kinds) + i) % len(CYCLE)] for i in range(BATCH)]
            task_ids += post_simulations(server.url, batch)
            kinds += batch
            per_pid = created_per_pid(prom_dir)
            if sum(1 for n in per_pid.values() if n > 0) >= WORKERS or len(kinds) >= MAX_TASKS:
                break
        created = len(kinds)
        assert len(set(task_ids)) == created

        # Tasks were created in BOTH workers: each worker's own counter file says how many.
        per_pid = created_per_pid(prom_dir)
        busy = {pid: n for pid, n in per_pid.items() if n > 0}
        assert len(busy) == WORKERS, f"all {created} tasks went to one worker: {per_pid}"
        assert sum(busy.values()) == created
        assert max(busy.values()) < created  # so no single registry can report the total

        expected_finished = collections.Counter(OUTCOMES[k][1] for k in kinds)
        expected_errors = collections.Counter(
            error for k in kinds if (error := OUTCOMES[k][2]) is not None
        )
        expected_errors["TaskTimeoutError"] = expected_finished["timeout"]

        def all_finished() -> dict[Any, float] | None:
            samples = scrape_metrics(client, metrics_url)
            done = metric_value(samples, FINISHED, task=FUNCTION)
            return samples if done == created else None

        wait_until(all_finished, timeout=20, message=f"{created} tasks to finish")

        # Several scrapes, each on a new connection (so answered by either worker): every one
        # reports the totals of all workers.
        for _ in range(6):
            samples = scrape_metrics(client, metrics_url)
            assert metric_value(samples, CREATED, task=FUNCTION) == created
            for status in names.FINISHED_STATUSES:
                assert (
                    metric_value(samples, FINISHED, task=FUNCTION, status=status)
                    == (expected_finished[status])
                ), status
            for error_type, count in expected_errors.items():
                assert metric_value(samples, ERRORS, task=FUNCTION, error_type=error_type) == (
                    count
                ), error_type
            assert metric_value(samples, DURATION_COUNT, task=FUNCTION) == created
            assert metric_value(samples, QUEUE_WAIT_COUNT, task=FUNCTION) == created
            assert metric_value(samples, RUNNING, task=FUNCTION) == 0
            assert metric_value(samples, PENDING, task=FUNCTION) == 0
            assert metric_value(samples, LIMIT) == WORKERS * DEMO_LIMIT
            # Multiprocess exposition carries no pid label (the collector sums it away).
            assert all("pid" not in dict(labels) for (_, labels) in samples)
    finally:
        client.close()

    # Each busy worker keeps the exemplars of its own histograms in a file of its own (written
    # within a flush interval); test_stack_exemplars.py checks what scrapes make of them.
    wait_until(
        lambda: all((prom_dir / f"exemplars_{pid}.json").exists() for pid in busy),
        timeout=10,
        message="an exemplar file per busy worker",
    )

    # The spans agree: every task has a process span, from exactly the workers counted above.
    spans = receiver.wait_for_spans(kind="CONSUMER", count=created, timeout=15)
    by_task = {s.attributes[ATTR.MESSAGE_ID]: s for s in spans}
    assert set(by_task) == set(task_ids)
    span_pids = collections.Counter(int(s.resource["process.pid"]) for s in by_task.values())
    assert dict(span_pids) == {pid: int(n) for pid, n in busy.items()}
    # And each task's JSON logs made it to the shared stdout.
    logged = {line["task_id"] for line in server.json_lines() if line["event"] == "task.created"}
    assert logged == set(task_ids)

    # A clean stop: SIGINT to the supervisor, bounded; each worker shuts down its manager and
    # marks itself dead, so no live gauge file is left, while the counters stay readable.
    assert server.stop(signal.SIGINT, timeout=20) == 0, server.stderr()[-2000:]
    assert not list(prom_dir.glob("gauge_live*.db"))
    assert not list(prom_dir.glob("exemplars_*"))  # removed with the live gauges
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(prom_dir))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value(CREATED, {"task": FUNCTION}) == created
    assert registry.get_sample_value(RUNNING, {"task": FUNCTION}) is None
