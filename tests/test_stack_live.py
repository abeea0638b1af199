"""The dashboards and alert rules against real servers: the demo app and a real Prometheus.

The demo app (max 3 concurrent tasks) runs in a real uvicorn; Debian's Prometheus scrapes it
every second and evaluates ``prometheus/rules/`` every second. A workload with known numbers
drives it through four phases:

1. warm-up: 2 tasks that complete (slow enough for Prometheus to see them running);
2. saturation: 105 slow tasks, 3 running at the limit and 102 pending (> the backlog threshold
   of 100), until Prometheus activates the saturation and backlog alerts; then all 105 are
   cancelled (102 while pending, 3 while running);
3. outcomes: 12 completed, 4 failed (ValueError), 2 failed (TaskError), 4 timed out;
4. retries: 12 tasks whose first 3 attempts fail and are retried (36 retries, then 12 completed
   on attempt 4), and one task planned 10 minutes ahead (scheduled: pending, yet no backlog),
   cancelled at the end.

Then every PromQL expression of every dashboard panel and every alert rule runs through the
Prometheus HTTP API (dashboard variables substituted as Grafana would) and must return data, the
counters must equal what was driven, and each alert must have become active in the phase that
called for it, and only then. Skipped
without the ``prometheus`` binary, except under CI=true.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stack_support import (
    DEMO_TASK,
    JOB,
    RULE_FILES,
    DemoProcess,
    PrometheusServer,
    Query,
    dashboard_queries,
    redis_only,
    require_tool,
    rule_queries,
    substitute,
    wait_for,
)

pytestmark = pytest.mark.e2e

LIMIT = 3
SATURATING = 105  # 3 running + 102 pending: above the backlog alert's threshold of 100
WARMUP_COMPLETED = 2
PHASE_C = {"complete": 12, "fail": 4, "task_error": 2, "timeout": 4}
RETRIED = 12  # phase 4: tasks completing on their 4th attempt
FAILED_ATTEMPTS = 3  # ... after 3 failed ones, each retried
PLANNED = 1  # phase 4: a task planned 10 minutes ahead, then cancelled
SEL = f'job="{JOB}"'

EXPECTED_FINISHED = {
    "completed": WARMUP_COMPLETED + PHASE_C["complete"] + RETRIED,
    "failed": PHASE_C["fail"] + PHASE_C["task_error"],
    "timeout": PHASE_C["timeout"],
    "cancelled": SATURATING + PLANNED,
}
EXPECTED_CREATED = WARMUP_COMPLETED + SATURATING + sum(PHASE_C.values()) + RETRIED + PLANNED
EXPECTED_RETRIES = RETRIED * FAILED_ATTEMPTS
EXPECTED_ERRORS = {
    "ValueError": PHASE_C["fail"],
    "TaskError": PHASE_C["task_error"],
    "TaskTimeoutError": PHASE_C["timeout"],
}
# An error_type series is born at 1 (the library cannot know exception classes in advance), and
# rate()/increase() cannot see a series' first increment: panels built on them show one less
# per error type than the raw counter. The workload makes that exactly one (see _drive).
ERRORS_SEEN_BY_INCREASE = {error: count - 1 for error, count in EXPECTED_ERRORS.items()}
# Only started tasks have a duration: the 3 cancelled while running, not the 102 pending ones
# nor the planned one; a retried attempt is no outcome (no duration), its last attempt is.
EXPECTED_DURATIONS = {**EXPECTED_FINISHED, "cancelled": LIMIT}
# Every attempt waited for a slot once (queue wait is observed per attempt).
EXPECTED_STARTED = (
    WARMUP_COMPLETED + LIMIT + sum(PHASE_C.values()) + RETRIED * (FAILED_ATTEMPTS + 1)
)

ALERT_PHASES = {
    "ObservableTasksSaturated": "saturation",
    "ObservableTasksPendingBacklogHigh": "saturation",
    "ObservableTasksHighFailureRatio": "outcomes",
    "ObservableTasksHighTimeoutRatio": "outcomes",
    # 36 retries against 36 finished non-cancelled tasks in the window: a ratio of 1 > 0.5.
    "ObservableTasksRetryStorm": "retries",
}
# Alerts this workload must never trigger (none now: every rule has its phase; the not-firing
# cases of each are promtool rule tests). A quiet alert must never become active (see below).
QUIET_ALERTS: set[str] = set()


@dataclass
class Workload:
    demo: DemoProcess
    prom: PrometheusServer
    marks: dict[str, float] = field(default_factory=dict)
    alerts_before_saturation: list[Any] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.marks["start"]

    @property
    def end(self) -> float:
        return self.marks["end"]

    def range_start(self, since: float) -> float:
        """A range-query start at or before ``since`` whose 1 s steps end exactly at ``end``."""
        return self.end - math.ceil(self.end - since)

    def variables(self) -> dict[str, str]:
        """Dashboard variables as Grafana would fill them for this run's time range."""
        return {
            "datasource": "prometheus",
            "job": JOB,
            "task": DEMO_TASK,
            # Grafana: max(4 x scrape interval, step + scrape interval); a little wider here.
            "__rate_interval": "10s",
            "__interval": "1s",
            "__range": f"{math.ceil(self.end - self.start) + 1}s",
        }


def _eventually(prom: PrometheusServer, expr: str, want: float, what: str) -> None:
    wait_for(lambda: prom.scalar(expr) == want, timeout=20, interval=0.2, what=what)


def _two_more_scrapes(prom: PrometheusServer) -> None:
    settled = time.time() + 2
    wait_for(
        lambda: (prom.scalar(f"timestamp(up{{{SEL}}})") or 0) > settled,
        timeout=20,
        what="two more scrapes",
    )


def _drive(demo: DemoProcess, prom: PrometheusServer, w: Workload) -> None:
    marks = w.marks
    marks["start"] = time.time() - 1

    # 1. Warm-up: seen running by a scrape, then seen completed.
    warm = [demo.simulate("complete", 2.5) for _ in range(WARMUP_COMPLETED)]
    _eventually(prom, f"sum(observable_tasks_running{{{SEL}}})", 2, "2 running warm-up tasks")
    wait_for(lambda: demo.statuses(warm) == {"completed": 2}, timeout=20, what="warm-up done")
    _eventually(
        prom,
        f'sum(observable_tasks_finished_total{{{SEL}, status="completed"}})',
        2,
        "2 completed tasks in Prometheus",
    )
    w.alerts_before_saturation = prom.query("ALERTS")
    marks["saturation"] = time.time()

    # 2. Saturation: 3 running at the limit, 102 waiting; until both alerts are active.
    slow = [demo.simulate("slow", 120) for _ in range(SATURATING)]
    _eventually(prom, f"sum(observable_tasks_running{{{SEL}}})", LIMIT, "running at the limit")
    _eventually(prom, f"sum(observable_tasks_pending{{{SEL}}})", SATURATING - LIMIT, "102 pending")
    _eventually(
        prom,
        'count(ALERTS{alertname=~"ObservableTasksSaturated|ObservableTasksPendingBacklogHigh"})',
        2,
        "the saturation and backlog alerts",
    )
    _two_more_scrapes(prom)  # so that every 1 s query step sees the peak
    statuses = {t["id"]: t["status"].lower() for t in demo.tasks()}
    pending = [i for i in slow if statuses[i] == "pending"]
    running = [i for i in slow if statuses[i] == "running"]
    assert (len(running), len(pending)) == (LIMIT, SATURATING - LIMIT)
    for task_id in pending + running:  # pending first, so none of them starts
        assert demo.cancel(task_id)
    wait_for(lambda: demo.statuses(slow) == {"cancelled": SATURATING}, timeout=20, what="cancel")
    _eventually(
        prom,
        f'sum(observable_tasks_finished_total{{{SEL}, status="cancelled"}})',
        SATURATING,
        "the cancellations in Prometheus",
    )
    _eventually(prom, f"sum(observable_tasks_pending{{{SEL}}})", 0, "an empty backlog")
    marks["outcomes"] = time.time()

    # 3. Outcomes. First one of each error, seen by a scrape, so that the error_type series
    # exist before the rest arrive (ERRORS_SEEN_BY_INCREASE); then the rest, interleaved.
    first = [
        demo.simulate("fail", 0.05),
        demo.simulate("task_error", 0.05),
        demo.simulate("timeout", 1.0, 0.1),
    ]
    _eventually(
        prom, f"count(observable_task_errors_total{{{SEL}}})", 3, "a scrape of the first errors"
    )
    ids = list(first)
    remaining = {outcome: count - (outcome != "complete") for outcome, count in PHASE_C.items()}
    for i in range(max(remaining.values())):
        for outcome, count in remaining.items():
            if i < count:
                timeout = 0.1 if outcome == "timeout" else None
                ids.append(demo.simulate(outcome, 1.0 if timeout else 0.05, timeout))
    wanted = {"completed": 12, "failed": 6, "timeout": 4}
    wait_for(lambda: demo.statuses(ids) == wanted, timeout=20, what="phase 3 tasks to finish")
    by_phase_3 = {**EXPECTED_FINISHED, "cancelled": SATURATING}
    by_phase_3["completed"] -= RETRIED
    for status, count in by_phase_3.items():
        expr = f'sum(observable_tasks_finished_total{{{SEL}, status="{status}"}})'
        _eventually(prom, expr, count, f"{count} {status} tasks in Prometheus")
    _eventually(
        prom,
        'count(ALERTS{alertname=~"ObservableTasksHighFailureRatio|ObservableTasksHighTimeoutRatio"})',
        2,
        "the failure and timeout ratio alerts",
    )
    _two_more_scrapes(prom)
    marks["retries"] = time.time()

    # 4. Retries: each task's first attempts fail (ValueError, retried after 0.05 s, 0.1 s,
    # 0.2 s), the 4th completes; meanwhile a task planned for later waits without a slot.
    planned = demo.simulate("complete", 0.05, delay=600)
    _eventually(prom, f"sum(observable_tasks_scheduled{{{SEL}}})", PLANNED, "a scheduled task")
    retried = [
        demo.simulate("complete", 0.05, fail_attempts=FAILED_ATTEMPTS, backoff=0.05)
        for _ in range(RETRIED)
    ]
    wait_for(lambda: demo.statuses(retried) == {"completed": RETRIED}, timeout=30, what="retried")
    _eventually(
        prom,
        f"sum(observable_task_retries_total{{{SEL}}})",
        EXPECTED_RETRIES,
        f"{EXPECTED_RETRIES} retries in Prometheus",
    )
    _eventually(
        prom, 'count(ALERTS{alertname="ObservableTasksRetryStorm"})', 1, "the retry storm alert"
    )
    assert demo.cancel(planned)
    _eventually(prom, f"sum(observable_tasks_scheduled{{{SEL}}})", 0, "no scheduled task left")
    for status, count in EXPECTED_FINISHED.items():
        expr = f'sum(observable_tasks_finished_total{{{SEL}, status="{status}"}})'
        _eventually(prom, expr, count, f"{count} {status} tasks in Prometheus")
    # Two more scrapes and rule evaluations of the final state: rate() and the range queries
    # ending at marks["end"] then see it.
    _two_more_scrapes(prom)
    marks["end"] = time.time()


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    require_tool("prometheus")
    root: Path = tmp_path_factory.mktemp("stack")
    with DemoProcess(root / "app", max_concurrent_tasks=LIMIT) as demo:
        prom = PrometheusServer(root / "prometheus", [f"127.0.0.1:{demo.port}"], RULE_FILES)
        try:
            _eventually(prom, f"up{{{SEL}}}", 1, "Prometheus to scrape the demo app")
            w = Workload(demo, prom)
            _drive(demo, prom, w)
            yield w
        finally:
            prom.close()


# -- the counters equal the workload --------------------------------------------------------


def test_prometheus_scraped_the_demo_app(workload: Workload) -> None:
    (target,) = [t for t in workload.prom.targets() if t["labels"]["job"] == JOB]
    assert target["health"] == "up"
    assert target["lastError"] == ""
    assert target["scrapeUrl"] == f"{workload.demo.url}/metrics"


def test_counts_agree_with_the_workload(workload: Workload) -> None:
    prom, at = workload.prom, workload.end

    def by(expr: str, label: str) -> dict[str, float]:
        return prom.values(expr, label, at)

    assert by(f"sum by (status) (observable_tasks_finished_total{{{SEL}}})", "status") == (
        EXPECTED_FINISHED
    )
    assert prom.scalar(f"sum(observable_tasks_created_total{{{SEL}}})", at) == EXPECTED_CREATED
    assert by(f"sum by (error_type) (observable_task_errors_total{{{SEL}}})", "error_type") == (
        EXPECTED_ERRORS
    )
    durations = by(f"sum by (status) (observable_task_duration_seconds_count{{{SEL}}})", "status")
    assert durations == EXPECTED_DURATIONS
    started = prom.scalar(f"sum(observable_task_queue_wait_seconds_count{{{SEL}}})", at)
    assert started == EXPECTED_STARTED
    # Every series is labelled with the task function, never with the display name.
    assert by(f"count by (task) (observable_tasks_created_total{{{SEL}}})", "task") == {
        DEMO_TASK: 1
    }
    assert prom.scalar(f"observable_tasks_concurrency_limit{{{SEL}}}", at) == LIMIT
    assert prom.scalar(f"sum(observable_task_retries_total{{{SEL}}})", at) == EXPECTED_RETRIES
    # The series existed at 0 from the function's first task on (as the finished counters), so
    # increase() over the run sees every retry, the first included.
    before = prom.scalar(f"sum(observable_task_retries_total{{{SEL}}})", workload.marks["retries"])
    assert before == 0, f"retries before phase 4: {before} (None: not created at 0)"
    window = f"[{math.ceil(workload.end - workload.start)}s]"  # raw samples: exact peaks
    peak_running = f"max(max_over_time(observable_tasks_running{{{SEL}}}{window}))"
    peak_pending = f"max(max_over_time(observable_tasks_pending{{{SEL}}}{window}))"
    assert prom.scalar(peak_running, at) == LIMIT
    assert prom.scalar(peak_pending, at) == SATURATING - LIMIT
    peak_scheduled = f"max(max_over_time(observable_tasks_scheduled{{{SEL}}}{window}))"
    # The planned task, plus retried ones while they waited for their next attempt.
    scheduled = prom.scalar(peak_scheduled, at)
    assert scheduled is not None
    assert PLANNED <= scheduled <= PLANNED + RETRIED
    assert prom.scalar(f"sum(observable_tasks_running{{{SEL}}})", at) == 0
    last_success = prom.scalar(f"observable_task_last_success_timestamp_seconds{{{SEL}}}", at)
    assert last_success is not None
    assert workload.marks["outcomes"] <= last_success <= workload.end
    # Timed-out tasks were stopped at their 0.1 s timeout, not after their 1 s of work.
    timeouts = f'observable_task_duration_seconds_bucket{{{SEL}, status="timeout", le="0.5"}}'
    assert prom.scalar(timeouts, at) == PHASE_C["timeout"]


# -- every dashboard query returns data, and the right data ---------------------------------


def _finite(result: list[dict[str, Any]]) -> list[float]:
    values = []
    for series in result:
        points = series.get("values") or [series["value"]]
        values += [float(v) for _, v in points if not math.isnan(float(v))]
    return values


def _series_max(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for series in result:
        points = series.get("values") or [series["value"]]
        finite = [float(v) for _, v in points if not math.isnan(float(v))]
        if finite:
            out[series["metric"].get(label, "")] = max(finite)
    return out


def _about(value: float, expected: float) -> bool:
    """``increase()`` over the range: never less than the count, plus Prometheus' extrapolation.

    Prometheus extends a series' increase by up to half a scrape interval before its first
    sample and up to one interval after its last: a lot for a series only seconds old (the
    error types here), a little for the others.
    """
    return expected - 0.01 <= value <= expected * 1.6 + 0.01


# Panel title -> check of its result (beyond "returns data"), per dashboard file.
Check = Callable[[Query, list[dict[str, Any]]], None]


def _max_is(value: float) -> Check:
    def check(query: Query, result: list[dict[str, Any]]) -> None:
        assert max(_finite(result)) == value, query

    return check


def _positive(query: Query, result: list[dict[str, Any]]) -> None:
    values = _finite(result)
    assert max(values) > 0, query
    assert min(values) >= 0, query


def _ratio(query: Query, result: list[dict[str, Any]]) -> None:
    values = _finite(result)
    assert 0 < max(values) <= 1, query


def _counts(expected: dict[str, float], label: str) -> Check:
    def check(query: Query, result: list[dict[str, Any]]) -> None:
        got = _series_max(result, label)
        got = {k: v for k, v in got.items() if v > 0}
        assert set(got) == set(expected), (query, got)
        for key, value in got.items():
            assert _about(value, expected[key]), (query, key, value, expected[key])

    return check


def _running_or_limit(query: Query, result: list[dict[str, Any]]) -> None:
    assert max(_finite(result)) == LIMIT, query  # running peaked at the limit; the limit is 3


def _throughput(query: Query, result: list[dict[str, Any]]) -> None:
    if query.legend == "created":
        assert max(_finite(result)) > 0
    else:
        peaks = _series_max(result, "status")
        assert set(peaks) == set(EXPECTED_FINISHED), peaks
        assert all(v > 0 for v in peaks.values()), peaks


def _quantiles(query: Query, result: list[dict[str, Any]]) -> None:
    values = _finite(result)
    assert values, query
    assert all(0 <= v <= 300 for v in values), query


OVERVIEW_CHECKS: dict[str, Check] = {
    "Saturation": _max_is(1.0),
    "Running / limit": _running_or_limit,
    "Running vs concurrency limit": _running_or_limit,
    "Pending": _max_is(SATURATING - LIMIT),
    "Pending backlog by task": _max_is(SATURATING - LIMIT),
    "Timeouts / s": _positive,
    "Timeouts per second by task": _positive,
    "Timeout ratio": _ratio,
    "Timeout ratio by task": _ratio,
    "Throughput by status": _throughput,
    "Failure ratio by task": _ratio,
    "Top error types (time range)": _counts(ERRORS_SEEN_BY_INCREASE, "error_type"),
    "Errors per second by type": _positive,
    "Duration p50 / p95 / p99": _quantiles,
    "Duration p95 by task": _quantiles,
    "Wait for a slot p95": _quantiles,
    "Wait for a slot p95 by task": _quantiles,
    "Finished tasks by status (time range)": _counts(EXPECTED_FINISHED, "status"),
    "Retries by task": _positive,
    "Retries per finished task": _positive,
}
TASK_CHECKS: dict[str, Check] = {
    "Created / s": _positive,
    "Running": _max_is(LIMIT),
    "Pending": _max_is(SATURATING - LIMIT),
    "Failure ratio": _ratio,
    "Timeout ratio": _ratio,
    "Throughput by status": _throughput,
    "Outcomes (time range)": _counts(EXPECTED_FINISHED, "status"),
    "Error types (time range)": _counts(ERRORS_SEEN_BY_INCREASE, "error_type"),
    "Failure and timeout ratio": _ratio,
    "Errors per second by type": _positive,
    "Retries per second": _positive,
    "Retries per finished task": _positive,
    "Duration p50 / p95 / p99": _quantiles,
    "Duration p95 by status": _quantiles,
    "Wait for a slot p50 / p95 / p99": _quantiles,
}
CHECKS = {
    "observable-tasks-overview.json": OVERVIEW_CHECKS,
    "observable-tasks-task.json": TASK_CHECKS,
}


def _run(workload: Workload, query: Query) -> list[dict[str, Any]]:
    expr = substitute(query.expr, workload.variables())
    if query.instant:
        return workload.prom.query(expr, workload.end)
    start = workload.range_start(workload.start)
    return workload.prom.query_range(expr, start, workload.end, 1.0)


# The live stack runs the memory-backend demo: Redis queue panels and alerts have no data here
# (their alerts are checked by promtool rule tests, their values by test_redis_telemetry.py).
@pytest.mark.parametrize("query", [q for q in dashboard_queries() if not redis_only(q)], ids=str)
def test_dashboard_query_returns_data(workload: Workload, query: Query) -> None:
    result = _run(workload, query)
    assert result, f"no data for {query}"
    assert _finite(result), f"only NaN for {query}"
    check = CHECKS[query.source].get(query.where)
    if check is not None:
        check(query, result)


def test_time_since_last_success(workload: Workload) -> None:
    (query,) = [q for q in dashboard_queries() if q.where == "Time since last success"]
    ages = _finite(_run(workload, query))
    assert ages
    assert 0 <= min(ages) <= workload.end - workload.marks["outcomes"] + 1


def test_every_panel_title_with_a_check_exists() -> None:
    """A renamed panel must not silently lose its value check."""
    titles: dict[str, set[str]] = {}
    for q in dashboard_queries():
        titles.setdefault(q.source, set()).add(q.where)
    for source, checks in CHECKS.items():
        assert set(checks) <= titles[source], set(checks) - titles[source]


# -- every alert rule: evaluates cleanly, and fired (pending) exactly when called for --------


PHASE_RULES = [q for q in rule_queries() if not redis_only(q) and q.where not in QUIET_ALERTS]


@pytest.mark.parametrize("query", PHASE_RULES, ids=str)
def test_alert_expression_returns_data_during_its_phase(workload: Workload, query: Query) -> None:
    phase = ALERT_PHASES[query.where]
    since = workload.range_start(workload.marks[phase])
    result = workload.prom.query_range(query.expr, since, workload.end, 1.0)
    assert _finite(result), f"{query} never held during the {phase} phase"
    # ...and never before it.
    before = workload.prom.query_range(query.expr, workload.start, workload.marks[phase] - 1, 1.0)
    assert not before, f"{query} held before the {phase} phase"


def test_alerts_loaded_and_evaluated_without_errors(workload: Workload) -> None:
    rules = {r["name"]: r for r in workload.prom.rules()}
    redis_alerts = {q.where for q in rule_queries() if redis_only(q)}
    assert redis_alerts == {"ObservableTasksQueueLagHigh", "ObservableTasksNoLiveWorker"}
    assert set(rules) == set(ALERT_PHASES) | redis_alerts | QUIET_ALERTS
    for name, rule in rules.items():
        assert rule["type"] == "alerting", name
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule.get("lastError", "") == "", name
        assert rule["duration"] >= 600, f"{name}: `for` must be at least 10 minutes"


def test_alerts_became_active_in_their_phase_only(workload: Workload) -> None:
    prom, marks = workload.prom, workload.marks
    assert workload.alerts_before_saturation == [], "an alert was active before any stress"
    for alert in QUIET_ALERTS:
        since = workload.range_start(marks["start"])
        assert not prom.query_range(f'ALERTS{{alertname="{alert}"}}', since, marks["end"]), alert
    for alert, phase in ALERT_PHASES.items():
        since = workload.range_start(marks["start"])
        result = prom.query_range(f'ALERTS{{alertname="{alert}"}}', since, marks["end"])
        assert result, f"{alert} never became active"
        first = min(float(t) for series in result for t, _ in series["values"])
        assert first >= marks[phase] - 1, f"{alert} active before the {phase} phase"
        # `for:` is minutes long: the alerts are pending, not firing, within this test.
        assert {s["metric"]["alertstate"] for s in result} == {"pending"}, alert
    # Once the backlog was cancelled, saturation and backlog alerts went away again.
    for alert in ("ObservableTasksSaturated", "ObservableTasksPendingBacklogHigh"):
        assert prom.query(f'ALERTS{{alertname="{alert}"}}', marks["end"]) == [], alert
