"""Exemplars end to end: a real Prometheus gets trace ids from the demo's histograms.

The demo app runs with the shipped command (``observable-tasks demo``), one process and
``--workers 2`` (Prometheus multiprocess mode, where prometheus_client alone would drop
exemplars), exporting its spans over OTLP/gRPC to a real receiver on loopback (with the
``process.pid`` resource, so a span tells which worker ran it). Debian's Prometheus, with
``--enable-feature=exemplar-storage`` as in docker-compose.yml, scrapes it every second (it asks
for OpenMetrics first). Tasks are posted on fresh connections, so both workers get some.

Then ``/api/v1/query_exemplars`` returns exemplars for the duration and queue-wait histograms
whose ``trace_id``/``span_id`` are CONSUMER spans the receiver got (in multiprocess mode: spans
of both workers, merged into the scrapes of either), each in the bucket its value belongs to;
a plain-text scrape passes ``promtool check metrics`` and has no exemplar; an OpenMetrics
scrape parses with prometheus_client's own parser and carries them.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from otlp_receiver import OTLPReceiver, ReceivedSpan
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from stack_support import DEMO_TASK, JOB, DemoProcess, PrometheusServer, require_tool, wait_for

from observable_tasks.telemetry import names
from observable_tasks.telemetry.names import ATTR

pytestmark = pytest.mark.e2e

DURATION = names.metric_name(names.TASK_DURATION)
WAIT = names.metric_name(names.TASK_QUEUE_WAIT)
SEL = f'job="{JOB}"'
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Durations spread over several buckets (seconds, DEMO_TIME_SCALE=1).
BODIES = [
    {"outcome": "complete", "seconds": 0.01},
    {"outcome": "complete", "seconds": 0.15},
    {"outcome": "fail", "seconds": 0.03},
    {"outcome": "complete", "seconds": 0.4},
]


@pytest.fixture(params=[1, 2], ids=["one-process", "multiprocess"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[DemoProcess, PrometheusServer, OTLPReceiver, int]]:
    require_tool("prometheus")
    workers: int = request.param
    with OTLPReceiver() as receiver:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "e2e-exemplars",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
        }
        with DemoProcess(tmp_path / "app", workers=workers, time_scale=1.0, extra_env=env) as demo:
            prom = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{demo.port}"], [])
            try:
                wait_for(
                    lambda: prom.scalar(f"up{{{SEL}}}") == 1, timeout=30, what="a first scrape"
                )
                yield demo, prom, receiver, workers
            finally:
                prom.close()


def _post(url: str, body: dict[str, Any]) -> str:
    # A new connection per request: with several workers, any of them may accept it.
    with httpx.Client(timeout=10.0, headers={"Connection": "close"}) as client:
        response = client.post(url + "/simulate", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def _exemplars(
    prom: PrometheusServer, metric: str, start: float
) -> list[tuple[dict[str, str], Any]]:
    """``(series labels, exemplar)`` of every stored exemplar of ``metric``'s buckets."""
    result = prom.exemplars(f"{metric}_bucket{{{SEL}}}", start, time.time() + 1)
    return [(series["seriesLabels"], ex) for series in result for ex in series["exemplars"]]


def _consumer_spans(receiver: OTLPReceiver) -> dict[tuple[str, str], ReceivedSpan]:
    return {(s.trace_id, s.span_id): s for s in receiver.find(kind="CONSUMER")}


def test_prometheus_stores_exemplars_of_received_spans(
    stack: tuple[DemoProcess, PrometheusServer, OTLPReceiver, int],
) -> None:
    demo, prom, receiver, workers = stack
    start = time.time() - 5
    task_ids: list[str] = []

    def exemplar_pids() -> set[int] | None:
        """Workers whose spans are among the stored duration exemplars (None: not yet all)."""
        spans = _consumer_spans(receiver)
        pids = set()
        for _, ex in _exemplars(prom, DURATION, start):
            span = spans.get((ex["labels"]["trace_id"], ex["labels"]["span_id"]))
            if span is not None:
                pids.add(int(span.resource["process.pid"]))
        return pids if len(pids) >= workers else None

    # Waves of tasks, 8 at a time on fresh connections, until Prometheus has stored exemplars
    # from every worker (each scrape, answered by either worker, carries the merged latest).
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=8) as pool:
        while True:
            wave = [BODIES[i % len(BODIES)] for i in range(8)]
            task_ids += pool.map(lambda body: _post(demo.url, body), wave)
            time.sleep(1.5)  # at least one scrape of this wave's results
            if exemplar_pids() is not None:
                break
            assert time.monotonic() < deadline, "no exemplars from every worker in Prometheus"

    spans = _consumer_spans(receiver)
    for metric in (DURATION, WAIT):
        stored = _exemplars(prom, metric, start)
        assert stored, f"no exemplars for {metric}"
        for labels, ex in stored:
            assert labels["task"] == DEMO_TASK
            assert labels["job"] == JOB
            # The trace and span ids of a task's CONSUMER span; never a task id.
            assert set(ex["labels"]) == {"trace_id", "span_id"}, ex
            key = (ex["labels"]["trace_id"], ex["labels"]["span_id"])
            if key not in spans:  # exported after the snapshot above
                receiver.wait_for_spans(
                    kind="CONSUMER", trace_id=key[0], span_id=key[1], timeout=10
                )
                spans = _consumer_spans(receiver)
            span = spans[key]
            assert span.attributes[ATTR.MESSAGE_ID] in task_ids
            # Each exemplar sits in the bucket its value belongs to.
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            assert float(ex["value"]) <= le, (labels, ex)
            if metric == DURATION:
                assert labels["status"] == span.attributes[ATTR.TASK_STATUS]
    if workers > 1:
        pids = exemplar_pids()
        assert pids is not None
        assert len(pids) == workers  # merged from both workers' own exemplar files

    # The same exemplars are what an OpenMetrics scrape carries; the text format has none.
    with httpx.Client(timeout=10.0, headers={"Connection": "close"}) as client:
        om = client.get(demo.url + "/metrics", headers={"Accept": OPENMETRICS})
        plain = client.get(demo.url + "/metrics")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(om.text)}
    carried = [s.exemplar for s in families[DURATION].samples if s.exemplar is not None]
    assert carried
    for exemplar in carried:
        receiver.wait_for_spans(
            kind="CONSUMER",
            trace_id=exemplar.labels["trace_id"],
            span_id=exemplar.labels["span_id"],
            timeout=10,
        )
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text
    assert " # {" not in plain.text
    check = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=plain.text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (check.stdout + check.stderr).strip() == "", check.stdout + check.stderr
