"""Generate the Grafana dashboards in ``grafana/dashboards/`` from one readable description.

    python grafana/generate_dashboards.py            # rewrite the JSON files
    python grafana/generate_dashboards.py --check    # exit 1 if a JSON file is out of date

Metric names come from :mod:`observable_tasks.telemetry.names` (the single place where they
live), so a renamed metric changes the dashboards here; ``tests/test_stack_dashboards.py`` fails
while the committed JSON and this script disagree.

The dashboards are plain Grafana JSON (schemaVersion 39); they may be edited in Grafana and
exported, but then port the change back here, or the check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from observable_tasks.telemetry import names

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
OVERVIEW_UID = "observable-tasks-overview"
TASK_UID = "observable-tasks-task"
TAGS = ["observable-tasks"]
DEFAULT_JOB = "observable-tasks"
DEFAULT_SERVICE = "observable-tasks-demo"
DEFAULT_JAEGER_URL = "http://localhost:16686"


def _metric(suffix: str, series: str = "") -> str:
    return names.metric_name(suffix) + series


CREATED = _metric(names.TASKS_CREATED, "_total")
FINISHED = _metric(names.TASKS_FINISHED, "_total")
RUNNING = _metric(names.TASKS_RUNNING)
PENDING = _metric(names.TASKS_PENDING)
SCHEDULED = _metric(names.TASKS_SCHEDULED)
LIMIT = _metric(names.TASKS_CONCURRENCY_LIMIT)
DURATION_BUCKET = _metric(names.TASK_DURATION, "_bucket")
WAIT_BUCKET = _metric(names.TASK_QUEUE_WAIT, "_bucket")
ERRORS = _metric(names.TASK_ERRORS, "_total")
RETRIES = _metric(names.TASK_RETRIES, "_total")
LAST_SUCCESS = _metric(names.TASK_LAST_SUCCESS)
TELEMETRY_ERRORS = _metric(names.TELEMETRY_ERRORS, "_total")
LABEL_OVERFLOW = _metric(names.LABEL_OVERFLOW, "_total")
LOOP_LAG_BUCKET = _metric(names.EVENT_LOOP_LAG, "_bucket")
ABANDONED = _metric(names.SYNC_THREADS_ABANDONED)
Q_PENDING = _metric(names.QUEUE_PENDING)
Q_RUNNING = _metric(names.QUEUE_RUNNING)
Q_SCHEDULED = _metric(names.QUEUE_SCHEDULED)
Q_OLDEST = _metric(names.QUEUE_OLDEST_AGE)
Q_WORKERS = _metric(names.QUEUE_WORKERS)
Q_REDELIVERIES = _metric(names.QUEUE_REDELIVERIES, "_total")
Q_UP = _metric(names.QUEUE_UP)

PROM = {"type": "prometheus", "uid": "${datasource}"}
TRACES = {"type": "jaeger", "uid": "${traces}"}
RATE = "$__rate_interval"
RANGE = "$__range"

# -- links --------------------------------------------------------------------------------------
# Jaeger UI search: times in microseconds; ${__from}/${__to} are the dashboard's range in ms.
_JAEGER = "${jaeger_url:raw}/search?service=${service:percentencode}&limit=50"
_JAEGER_TIME = "&lookback=custom&start=${__from}000&end=${__to}000"
_ERROR_TAGS = "&tags=%7B%22error%22%3A%22true%22%7D"  # {"error":"true"}: spans with ERROR status


def _jaeger_link(title: str, task: str, *, errors: bool = False, extra: str = "") -> dict[str, Any]:
    operation = "&operation=process%20" + task
    url = _JAEGER + operation + (_ERROR_TAGS if errors else "") + extra + _JAEGER_TIME
    return {"title": title, "url": url, "targetBlank": True}


def _field_jaeger(errors: bool = False) -> dict[str, Any]:
    what = "Failed and timed-out traces" if errors else "Traces"
    return _jaeger_link(
        f"{what} of ${{__field.labels.task}} in Jaeger",
        "${__field.labels.task:percentencode}",
        errors=errors,
    )


def _field_drilldown() -> dict[str, Any]:
    return {
        "title": "Drill into ${__field.labels.task}",
        "url": f"/d/{TASK_UID}/observable-tasks-task?${{datasource:queryparam}}&${{job:queryparam}}"
        "&var-task=${__field.labels.task:percentencode}&${__url_time_range}",
    }


# -- building blocks ------------------------------------------------------------------------------


class _Ids:
    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _target(
    expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False, fmt: str = ""
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": PROM,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "editorMode": "code",
    }
    if fmt:
        target["format"] = fmt
    return target


def _targets(
    *specs: tuple[str, str] | str, instant: bool = False, fmt: str = "", exemplars: bool = False
) -> list[Any]:
    """Targets A, B, ... of one panel. ``exemplars``: the first target also fetches the
    exemplars of its histogram (trace ids, shown as points linking to Jaeger); only the first,
    since every quantile of one histogram would fetch the same exemplars again."""
    out = []
    for i, spec in enumerate(specs):
        expr, legend = (spec, "__auto") if isinstance(spec, str) else spec
        out.append(_target(expr, legend, chr(ord("A") + i), instant=instant, fmt=fmt))
    if exemplars and out:
        out[0]["exemplar"] = True
    return out


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


GREEN = _thresholds(("green", None))
RATIO_STEPS = _thresholds(("green", None), ("orange", 0.05), ("red", 0.1))
SATURATION_STEPS = _thresholds(("green", None), ("orange", 0.7), ("red", 0.9))
RETRY_STORM_RATIO = 0.5
"""Retries per finished task above which ObservableTasksRetryStorm fires (the rules file)."""


def _panel(
    kind: str,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[Any],
    *,
    description: str = "",
    unit: str = "short",
    links: list[Any] | None = None,
    defaults: dict[str, Any] | None = None,
    overrides: list[Any] | None = None,
    options: dict[str, Any] | None = None,
    datasource: dict[str, str] = PROM,
    transformations: list[Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "links": links or [], **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
    }
    if transformations:
        panel["transformations"] = transformations
    return panel


def _timeseries(
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[Any],
    *,
    stack: bool = False,
    fill: int = 10,
    legend_calcs: tuple[str, ...] = ("mean", "max", "lastNotNull"),
    min_zero: bool = True,
    threshold_line: float | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """``threshold_line``: a dashed red line at that value (an alert's threshold)."""
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 30 if stack else fill,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"custom": custom, "color": {"mode": "palette-classic"}, **kw.pop("defaults", {})}
    if threshold_line is not None:
        custom["thresholdsStyle"] = {"mode": "dashed"}
        defaults["thresholds"] = _thresholds(("transparent", None), ("red", threshold_line))
    if min_zero:
        defaults["min"] = 0
    options = {
        "legend": {
            "showLegend": True,
            "displayMode": "table",
            "placement": "right" if grid[2] >= 12 else "bottom",
            "calcs": list(legend_calcs),
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, grid, targets, defaults=defaults, options=options, **kw)


def _reduce(calc: str = "lastNotNull") -> dict[str, Any]:
    return {"calcs": [calc], "fields": "", "values": False}


def _stat(
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[Any],
    *,
    thresholds: dict[str, Any] = GREEN,
    **kw: Any,
) -> dict[str, Any]:
    options = {
        "reduceOptions": _reduce(),
        "colorMode": "value",
        "graphMode": "area",
        "textMode": "auto",
        "justifyMode": "auto",
        "orientation": "auto",
    }
    defaults = {"thresholds": thresholds, "color": {"mode": "thresholds"}, "noValue": "0"}
    return _panel("stat", title, grid, targets, defaults=defaults, options=options, **kw)


def _gauge(title: str, grid: tuple[int, int, int, int], targets: list[Any], **kw: Any) -> Any:
    options = {
        "reduceOptions": _reduce(),
        "showThresholdMarkers": True,
        "showThresholdLabels": False,
    }
    defaults = {"thresholds": SATURATION_STEPS, "color": {"mode": "thresholds"}, "min": 0, "max": 1}
    return _panel("gauge", title, grid, targets, defaults=defaults, options=options, **kw)


def _bargauge(title: str, grid: tuple[int, int, int, int], targets: list[Any], **kw: Any) -> Any:
    options = {
        "reduceOptions": _reduce(),
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
    }
    defaults = {"thresholds": kw.pop("thresholds", GREEN), "color": {"mode": "thresholds"}}
    if "decimals" in kw:
        defaults["decimals"] = kw.pop("decimals")
    return _panel("bargauge", title, grid, targets, defaults=defaults, options=options, **kw)


def _table(title: str, grid: tuple[int, int, int, int], targets: list[Any], **kw: Any) -> Any:
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    organize = {"id": "organize", "options": {"excludeByName": {"Time": True}}}
    defaults = {"custom": {"align": "auto", "filterable": True}}
    return _panel(
        "table",
        title,
        grid,
        targets,
        defaults=defaults,
        options=options,
        transformations=[organize],
        **kw,
    )


def _row(title: str, y: int, ids: _Ids) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "id": ids(),
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def _quantiles(bucket_selector: str, by: str = "") -> Iterator[tuple[str, str]]:
    group = f"{by}, le" if by else "le"
    for q in ("0.5", "0.95", "0.99"):
        expr = f"histogram_quantile({q}, sum by ({group}) (rate({bucket_selector}[{RATE}])))"
        label = "p" + q[2:].ljust(2, "0")
        yield expr, (f"{{{{{by}}}}} {label}" if by else label)


# -- template variables -----------------------------------------------------------------------


def _datasource_var(name: str, plugin: str, label: str) -> dict[str, Any]:
    return {
        "type": "datasource",
        "name": name,
        "label": label,
        "query": plugin,
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _query_var(name: str, label: str, query: str, *, multi: bool, all_value: str = "") -> Any:
    var: dict[str, Any] = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": PROM,
        "definition": query,
        "query": {"query": query, "refId": "StandardVariableQuery", "qryType": 1},
        "current": {},
        "hide": 0,
        "includeAll": multi,
        "multi": multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }
    if all_value:
        var["allValue"] = all_value
    return var


def _textbox_var(name: str, label: str, value: str, description: str) -> dict[str, Any]:
    return {
        "type": "textbox",
        "name": name,
        "label": label,
        "description": description,
        "query": value,
        "current": {"text": value, "value": value},
        "options": [{"selected": True, "text": value, "value": value}],
        "hide": 0,
    }


def _common_vars() -> list[Any]:
    return [
        _datasource_var("datasource", "prometheus", "Prometheus"),
        _query_var("job", "Job", f"label_values({LIMIT}, job)", multi=True, all_value=".+"),
    ]


def _jaeger_vars() -> list[Any]:
    return [
        _textbox_var(
            "jaeger_url",
            "Jaeger UI",
            DEFAULT_JAEGER_URL,
            "Base address of the Jaeger UI, as your browser reaches it (trace links use it)",
        ),
        _textbox_var(
            "service",
            "Service",
            DEFAULT_SERVICE,
            "OTEL_SERVICE_NAME of the app: the Jaeger service whose traces the links search",
        ),
    ]


def _dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Any],
    panels: list[Any],
    links: list[Any],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "liveNow": False,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables},
        "links": links,
        "panels": panels,
    }


# -- the overview dashboard -------------------------------------------------------------------


def overview() -> dict[str, Any]:
    """All tasks of the selected jobs: saturation and timeouts first, then outcomes, latency."""
    ids = _Ids()
    job = 'job=~"$job"'
    sel = f'{{{job}, task=~"$task"}}'
    not_cancelled = f'{{{job}, task=~"$task", status!="cancelled"}}'

    def finished_status(status: str, by: str = "task") -> str:
        selector = f'{{{job}, task=~"$task", status="{status}"}}'
        return f"sum by ({by}) (rate({FINISHED}{selector}[{RATE}]))"

    def ratio(status: str, by: str = "task") -> str:
        group = f"by ({by}) " if by else ""
        return (
            f'sum {group}(rate({FINISHED}{{{job}, task=~"$task", status="{status}"}}[{RATE}]))'
            f" / sum {group}(rate({FINISHED}{not_cancelled}[{RATE}]))"
        )

    saturation = f"sum({RUNNING}{{{job}}}) / sum({LIMIT}{{{job}}})"
    retries_per_finished = (
        f"sum by (task) (rate({RETRIES}{sel}[{RATE}]))"
        f" / sum by (task) (rate({FINISHED}{not_cancelled}[{RATE}]))"
    )
    per_task_links = [_field_jaeger(), _field_drilldown()]
    error_links = [_field_jaeger(errors=True), _field_drilldown()]
    panels: list[Any] = []
    add = panels.append

    add(_row("Are we saturated? Are tasks timing out?", 0, ids))
    add(
        _gauge(
            "Saturation",
            (0, 1, 4, 5),
            _targets((saturation, "running / limit")),
            unit="percentunit",
            description="Tasks running now divided by max_concurrent_tasks (all tasks of the "
            "selected jobs). At 100% new tasks wait for a slot.",
        )
    )
    add(
        _stat(
            "Running / limit",
            (4, 1, 4, 5),
            _targets((f"sum({RUNNING}{{{job}}})", "running"), (f"sum({LIMIT}{{{job}}})", "limit")),
            description="Tasks executing now, and the configured concurrency limit.",
        )
    )
    add(
        _stat(
            "Pending",
            (8, 1, 4, 5),
            _targets((f"sum({PENDING}{sel})", "pending")),
            thresholds=_thresholds(("green", None), ("orange", 1), ("red", 100)),
            description="Tasks waiting: for a concurrency slot, for their start time "
            "(delay=/eta=) or for their next attempt (a retry).",
        )
    )
    add(
        _stat(
            "Timeouts / s",
            (12, 1, 4, 5),
            _targets((finished_status("timeout", by="job"), "{{job}}")),
            unit="reqps",
            thresholds=_thresholds(("green", None), ("red", 0.001)),
            description="Tasks ending TIMEOUT per second.",
        )
    )
    add(
        _stat(
            "Timeout ratio",
            (16, 1, 4, 5),
            _targets((ratio("timeout", by="job"), "{{job}}")),
            unit="percentunit",
            thresholds=RATIO_STEPS,
            description="Share of finished tasks (cancelled ones left out) that timed out. "
            "Alert ObservableTasksHighTimeoutRatio fires above 5% for 10 minutes.",
        )
    )
    add(
        _stat(
            "Wait for a slot p95",
            (20, 1, 4, 5),
            _targets(
                (
                    f"histogram_quantile(0.95, sum by (le) (rate({WAIT_BUCKET}{sel}[{RATE}])))",
                    "p95",
                )
            ),
            unit="s",
            thresholds=_thresholds(("green", None), ("orange", 1), ("red", 30)),
            description="95th percentile of the time tasks spent PENDING before they started.",
        )
    )
    add(
        _timeseries(
            "Running vs concurrency limit",
            (0, 6, 8, 8),
            _targets(
                (f"sum by (task) ({RUNNING}{sel})", "{{task}}"),
                (f"sum({LIMIT}{{{job}}})", "limit"),
            ),
            stack=True,
            description="Running tasks stacked by task function, against max_concurrent_tasks "
            "(red line). Where the stack touches the line, tasks queue.",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "limit"},
                    "properties": [
                        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
                        {"id": "custom.fillOpacity", "value": 0},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    ],
                }
            ],
            links=per_task_links,
        )
    )
    add(
        _timeseries(
            "Pending backlog by task",
            (8, 6, 8, 8),
            _targets(
                (
                    f"sum by (task) ({PENDING}{sel}) - (sum by (task) ({SCHEDULED}{sel}) "
                    f"or 0 * sum by (task) ({PENDING}{sel}))",
                    "{{task}}",
                )
            ),
            stack=True,
            description="Tasks waiting for a concurrency slot (not those waiting for their "
            "start time or to retry). Alert ObservableTasksPendingBacklogHigh: more than 100 per "
            "job for 10 minutes.",
            links=per_task_links,
        )
    )
    add(
        _timeseries(
            "Timeouts per second by task",
            (16, 6, 8, 8),
            _targets((finished_status("timeout"), "{{task}}")),
            unit="reqps",
            description="Tasks ending TIMEOUT per second. Click a series for its failed traces.",
            links=error_links,
        )
    )
    add(
        _timeseries(
            "Timeout ratio by task",
            (0, 14, 12, 8),
            _targets((ratio("timeout"), "{{task}}")),
            unit="percentunit",
            description="Timed-out share of finished tasks (cancelled ones left out).",
            links=error_links,
        )
    )
    add(
        _timeseries(
            "Wait for a slot p95 by task",
            (12, 14, 12, 8),
            _targets(
                (
                    "histogram_quantile(0.95, sum by (task, le) "
                    f"(rate({WAIT_BUCKET}{sel}[{RATE}])))",
                    "{{task}}",
                ),
                exemplars=True,
            ),
            unit="s",
            description="95th percentile of time from creation to start (queue wait).",
            links=per_task_links,
        )
    )

    add(_row("Throughput, errors and retries", 22, ids))
    add(
        _timeseries(
            "Throughput by status",
            (0, 23, 12, 8),
            _targets(
                (f"sum by (status) (rate({FINISHED}{sel}[{RATE}]))", "{{status}}"),
                (f"sum(rate({CREATED}{sel}[{RATE}]))", "created"),
            ),
            stack=True,
            unit="reqps",
            description="Tasks reaching each final status per second (stacked); the dashed line "
            "is tasks created per second.",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "created"},
                    "properties": [
                        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
                        {"id": "custom.fillOpacity", "value": 0},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    ],
                },
                *[
                    {
                        "matcher": {"id": "byName", "options": status},
                        "properties": [
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": color}}
                        ],
                    }
                    for status, color in (
                        ("completed", "green"),
                        ("failed", "red"),
                        ("timeout", "orange"),
                        ("cancelled", "purple"),
                    )
                ],
            ],
        )
    )
    add(
        _timeseries(
            "Failure ratio by task",
            (12, 23, 12, 8),
            _targets((ratio("failed"), "{{task}}")),
            unit="percentunit",
            description="Failed share of finished tasks (cancelled ones left out). Alert "
            "ObservableTasksHighFailureRatio fires above 10% for 10 minutes.",
            links=error_links,
        )
    )
    add(
        _bargauge(
            "Top error types (time range)",
            (0, 31, 12, 8),
            _targets(
                (
                    f"topk(10, sum by (task, error_type) (increase({ERRORS}{sel}[{RANGE}])))",
                    "{{error_type}} · {{task}}",
                ),
                instant=True,
            ),
            thresholds=_thresholds(("orange", None)),
            description="Exceptions that ended tasks (failures and timeouts) in the time range.",
            links=[
                _jaeger_link(
                    "Traces of ${__field.labels.task} with ${__field.labels.error_type}",
                    "${__field.labels.task:percentencode}",
                    extra="&tags=%7B%22error.type%22%3A%22${__field.labels.error_type:percentencode}%22%7D",
                ),
                _field_drilldown(),
            ],
        )
    )
    add(
        _timeseries(
            "Errors per second by type",
            (12, 31, 12, 8),
            _targets(
                (
                    f"sum by (task, error_type) (rate({ERRORS}{sel}[{RATE}]))",
                    "{{error_type}} · {{task}}",
                )
            ),
            unit="reqps",
            links=error_links,
        )
    )
    add(
        _timeseries(
            "Retries by task",
            (0, 39, 12, 8),
            _targets((f"sum by (task) (rate({RETRIES}{sel}[{RATE}]))", "{{task}}")),
            stack=True,
            unit="reqps",
            description="Attempts that failed and were planned to run again, per second "
            "(stacked by task function). A retry storm shows here before anything finishes: "
            "the task.retrying log events carry the attempt, delay_s and error_type.",
            links=per_task_links,
        )
    )
    add(
        _timeseries(
            "Retries per finished task",
            (12, 39, 12, 8),
            _targets((retries_per_finished, "{{task}}")),
            threshold_line=RETRY_STORM_RATIO,
            description="Retries divided by the tasks that finished (cancelled ones left out), "
            f"per task function. Above {RETRY_STORM_RATIO} (dashed line) with at least 10 "
            "retries in 5 minutes, alert ObservableTasksRetryStorm fires after 10 minutes. No "
            "(or an infinite) value while nothing finishes: see Retries by task.",
            links=error_links,
        )
    )

    add(_row("Latency", 47, ids))
    add(
        _timeseries(
            "Duration p50 / p95 / p99",
            (0, 48, 12, 8),
            _targets(*_quantiles(f"{DURATION_BUCKET}{sel}"), exemplars=True),
            unit="s",
            description="Execution time of started tasks, all outcomes (waiting excluded).",
        )
    )
    add(
        _timeseries(
            "Duration p95 by task",
            (12, 48, 12, 8),
            _targets(
                (
                    "histogram_quantile(0.95, sum by (task, le) "
                    f"(rate({DURATION_BUCKET}{sel}[{RATE}])))",
                    "{{task}}",
                ),
                exemplars=True,
            ),
            unit="s",
            description="Click a series for its traces in Jaeger.",
            links=per_task_links,
        )
    )
    add(
        _table(
            "Finished tasks by status (time range)",
            (0, 56, 12, 8),
            _targets(
                (
                    f"sum by (task, status) (increase({FINISHED}{sel}[{RANGE}]))",
                    "{{task}} {{status}}",
                ),
                instant=True,
                fmt="table",
            ),
            description="Increase of the finished counter over the time range (an estimate: "
            "Prometheus extrapolates).",
        )
    )
    add(
        _table(
            "Time since last success",
            (12, 56, 12, 8),
            _targets(
                (f"time() - max by (task) ({LAST_SUCCESS}{sel})", "{{task}}"),
                instant=True,
                fmt="table",
            ),
            unit="s",
            description="Seconds since each task function last COMPLETED.",
        )
    )

    add(_row("Telemetry health", 64, ids))
    add(
        _timeseries(
            "Telemetry errors per second",
            (0, 65, 12, 6),
            _targets(
                (
                    f"sum by (component) (rate({TELEMETRY_ERRORS}{{{job}}}[{RATE}])) or vector(0)",
                    "{{component}}",
                )
            ),
            unit="reqps",
            description="Failures inside the instrumentation itself (they never fail a task). "
            "Should stay at 0.",
        )
    )
    add(
        _timeseries(
            "Label values folded into __other__ (time range)",
            (12, 65, 12, 6),
            _targets(
                (
                    f"sum by (label) (increase({LABEL_OVERFLOW}{{{job}}}[{RANGE}])) or vector(0)",
                    "{{label}}",
                )
            ),
            description="The cardinality cap replaced this many label values by __other__: "
            "too many distinct task functions or error types.",
        )
    )

    add(_row("Event loop and worker threads", 71, ids))
    add(
        _timeseries(
            "Event loop lag",
            (0, 72, 12, 6),
            _targets(*_quantiles(f"{LOOP_LAG_BUCKET}{{{job}}}")),
            unit="s",
            description="How late the event loop ran the watchdog's heartbeat. High values: "
            "something blocks the loop (a blocking call in an async task); the loop.stalled "
            "log event names the task.",
        )
    )
    add(
        _timeseries(
            "Abandoned sync threads",
            (12, 72, 12, 6),
            _targets((f"sum({ABANDONED}{{{job}}})", "abandoned")),
            description="Threads still running sync task functions whose tasks timed out or "
            "were cancelled (a thread cannot be stopped). They no longer take pool slots, up "
            "to a cap of 2 x max_sync_threads threads.",
        )
    )
    # Redis backend: queue-wide facts, the same from every process (max over instances).
    add(_row("Redis queue (Redis backend)", 78, ids))
    add(
        _timeseries(
            "Waiting and running in the queue",
            (0, 79, 8, 6),
            _targets(
                (f"max by (queue) ({Q_PENDING}{{{job}}})", "waiting {{queue}}"),
                (f"max by (queue) ({Q_SCHEDULED}{{{job}}})", "of which scheduled {{queue}}"),
                (f"max by (queue) ({Q_RUNNING}{{{job}}})", "running {{queue}}"),
            ),
            description="Tasks waiting in the Redis queue (of which scheduled: planned for "
            "later with delay=/eta= or waiting to retry) and tasks claimed by a worker, "
            "cluster-wide (read from Redis at scrape time).",
        )
    )
    add(
        _timeseries(
            "Queue lag (oldest waiting task)",
            (8, 79, 8, 6),
            _targets((f"max by (queue) ({Q_OLDEST}{{{job}}})", "{{queue}}")),
            unit="s",
            description="Age of the oldest task still waiting for a worker: how far behind "
            "the workers are.",
        )
    )
    add(
        _timeseries(
            "Live workers and redeliveries",
            (16, 79, 8, 6),
            _targets(
                (f"max by (queue) ({Q_WORKERS}{{{job}}})", "workers {{queue}}"),
                (f"min by (queue) ({Q_UP}{{{job}}})", "Redis answered {{queue}}"),
                (
                    f"max by (queue) (rate({Q_REDELIVERIES}{{{job}}}[{RATE}]))",
                    "redeliveries/s {{queue}}",
                ),
            ),
            description="Workers that renewed their liveness within one lease, attempts after "
            "the first (a worker was lost or ran past its lease), and whether the scrapes could "
            "read Redis (1) or not (0).",
        )
    )
    for panel in panels:
        panel.setdefault("id", ids())

    variables = [
        *_common_vars(),
        _query_var(
            "task",
            "Task function",
            f'label_values({CREATED}{{job=~"$job"}}, task)',
            multi=True,
            all_value=".+",
        ),
        *_jaeger_vars(),
    ]
    links = [
        {
            "title": "Task drill-down",
            "type": "dashboards",
            "tags": TAGS,
            "asDropdown": False,
            "includeVars": True,
            "keepTime": True,
            "icon": "dashboard",
        },
        {
            "title": "Traces in Jaeger",
            "type": "link",
            "url": _JAEGER + _JAEGER_TIME,
            "targetBlank": True,
            "icon": "external link",
        },
    ]
    return _dashboard(
        OVERVIEW_UID,
        "observable-tasks: overview",
        "Background tasks of Nexios apps using observable-tasks: saturation, timeouts, "
        "throughput, failures and latency.",
        variables,
        panels,
        links,
    )


# -- the per-task drill-down --------------------------------------------------------------------


def task_drilldown() -> dict[str, Any]:
    """One task function ($task): its outcomes, errors, latency and recent traces."""
    ids = _Ids()
    sel = '{job=~"$job", task="$task"}'

    def status_sel(status: str, op: str = "=") -> str:
        return f'{{job=~"$job", task="$task", status{op}"{status}"}}'

    def ratio(status: str) -> str:
        return (
            f"sum(rate({FINISHED}{status_sel(status)}[{RATE}])) / "
            f"sum(rate({FINISHED}{status_sel('cancelled', '!=')}[{RATE}]))"
        )

    traces = _jaeger_link("Traces of $task in Jaeger", "${task:percentencode}")
    failed_traces = _jaeger_link(
        "Failed and timed-out traces of $task in Jaeger", "${task:percentencode}", errors=True
    )
    panels: list[Any] = []
    add = panels.append

    add(_row("Now", 0, ids))
    add(
        _stat(
            "Created / s",
            (0, 1, 4, 4),
            _targets((f"sum(rate({CREATED}{sel}[{RATE}]))", "created")),
            unit="reqps",
        )
    )
    add(_stat("Running", (4, 1, 4, 4), _targets((f"sum({RUNNING}{sel})", "running"))))
    add(
        _stat(
            "Pending",
            (8, 1, 4, 4),
            _targets((f"sum({PENDING}{sel})", "pending")),
            thresholds=_thresholds(("green", None), ("orange", 1), ("red", 100)),
        )
    )
    add(
        _stat(
            "Failure ratio",
            (12, 1, 4, 4),
            _targets((ratio("failed"), "failed")),
            unit="percentunit",
            thresholds=RATIO_STEPS,
            links=[failed_traces],
        )
    )
    add(
        _stat(
            "Timeout ratio",
            (16, 1, 4, 4),
            _targets((ratio("timeout"), "timeout")),
            unit="percentunit",
            thresholds=RATIO_STEPS,
            links=[failed_traces],
        )
    )
    add(
        _stat(
            "Since last success",
            (20, 1, 4, 4),
            _targets((f"time() - max({LAST_SUCCESS}{sel})", "age")),
            unit="s",
            thresholds=_thresholds(("green", None), ("orange", 3600), ("red", 86400)),
        )
    )

    add(_row("Outcomes", 5, ids))
    add(
        _timeseries(
            "Throughput by status",
            (0, 6, 12, 8),
            _targets((f"sum by (status) (rate({FINISHED}{sel}[{RATE}]))", "{{status}}")),
            stack=True,
            unit="reqps",
            links=[traces],
        )
    )
    add(
        _bargauge(
            "Outcomes (time range)",
            (12, 6, 6, 8),
            _targets(
                (f"sum by (status) (increase({FINISHED}{sel}[{RANGE}]))", "{{status}}"),
                instant=True,
            ),
            decimals=0,
            description="Estimated from the counter's increase over the time range.",
        )
    )
    add(
        _bargauge(
            "Error types (time range)",
            (18, 6, 6, 8),
            _targets(
                (
                    f"sort_desc(sum by (error_type) (increase({ERRORS}{sel}[{RANGE}])))",
                    "{{error_type}}",
                ),
                instant=True,
            ),
            thresholds=_thresholds(("orange", None)),
            links=[
                _jaeger_link(
                    "Traces of $task with ${__field.labels.error_type}",
                    "${task:percentencode}",
                    extra="&tags=%7B%22error.type%22%3A%22${__field.labels.error_type:percentencode}%22%7D",
                )
            ],
        )
    )
    add(
        _timeseries(
            "Failure and timeout ratio",
            (0, 14, 12, 7),
            _targets((ratio("failed"), "failed"), (ratio("timeout"), "timeout")),
            unit="percentunit",
            links=[failed_traces],
        )
    )
    add(
        _timeseries(
            "Errors per second by type",
            (12, 14, 12, 7),
            _targets((f"sum by (error_type) (rate({ERRORS}{sel}[{RATE}]))", "{{error_type}}")),
            unit="reqps",
            links=[failed_traces],
        )
    )
    add(
        _timeseries(
            "Retries per second",
            (0, 21, 12, 7),
            _targets((f"sum(rate({RETRIES}{sel}[{RATE}]))", "retries")),
            unit="reqps",
            description="Attempts of $task that failed and were planned to run again. The "
            "task.retrying log events carry the attempt, delay_s and error_type.",
            links=[failed_traces],
        )
    )
    add(
        _timeseries(
            "Retries per finished task",
            (12, 21, 12, 7),
            _targets(
                (
                    f"sum(rate({RETRIES}{sel}[{RATE}])) / "
                    f"sum(rate({FINISHED}{status_sel('cancelled', '!=')}[{RATE}]))",
                    "retries / finished",
                )
            ),
            threshold_line=RETRY_STORM_RATIO,
            description="Retries divided by the tasks that finished (cancelled ones left out). "
            f"Alert ObservableTasksRetryStorm: above {RETRY_STORM_RATIO} (dashed line) with at "
            "least 10 retries in 5 minutes, for 10 minutes.",
            links=[failed_traces],
        )
    )

    add(_row("Latency and concurrency", 28, ids))
    add(
        _timeseries(
            "Duration p50 / p95 / p99",
            (0, 29, 12, 8),
            _targets(*_quantiles(f"{DURATION_BUCKET}{sel}"), exemplars=True),
            unit="s",
            links=[traces],
        )
    )
    add(
        _timeseries(
            "Duration p95 by status",
            (12, 29, 12, 8),
            _targets(
                (
                    "histogram_quantile(0.95, sum by (status, le) "
                    f"(rate({DURATION_BUCKET}{sel}[{RATE}])))",
                    "{{status}}",
                ),
                exemplars=True,
            ),
            unit="s",
            links=[traces],
        )
    )
    heatmap = _panel(
        "heatmap",
        "Duration distribution",
        (0, 37, 12, 8),
        _targets(
            (f"sum by (le) (increase({DURATION_BUCKET}{sel}[{RATE}]))", "{{le}}"),
            fmt="heatmap",
        ),
        unit="s",
        options={
            "calculate": False,
            "yAxis": {"unit": "s", "axisPlacement": "left"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": False},
            "legend": {"show": True},
        },
    )
    add(heatmap)
    add(
        _timeseries(
            "Wait for a slot p50 / p95 / p99",
            (12, 37, 12, 8),
            _targets(*_quantiles(f"{WAIT_BUCKET}{sel}"), exemplars=True),
            unit="s",
        )
    )
    add(
        _timeseries(
            "Running and pending",
            (0, 45, 24, 7),
            _targets(
                (f"sum({RUNNING}{sel})", "running"),
                (f"sum({PENDING}{sel})", "pending"),
                (f"sum({SCHEDULED}{sel})", "of which scheduled (delay, eta, retry)"),
            ),
        )
    )

    add(_row("Recent traces", 52, ids))
    add(
        _panel(
            "table",
            "Recent traces of process $task (Jaeger)",
            (0, 53, 24, 9),
            [
                {
                    "datasource": TRACES,
                    "refId": "A",
                    "queryType": "search",
                    "service": "$service",
                    "operation": "process $task",
                    "limit": 20,
                }
            ],
            datasource=TRACES,
            options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            description="The task's CONSUMER spans, from the Jaeger data source. Click a trace "
            "ID to open it.",
        )
    )
    for panel in panels:
        panel.setdefault("id", ids())

    variables = [
        *_common_vars(),
        _query_var(
            "task", "Task function", f'label_values({CREATED}{{job=~"$job"}}, task)', multi=False
        ),
        _datasource_var("traces", "jaeger", "Jaeger"),
        *_jaeger_vars(),
    ]
    links = [
        {
            "title": "Overview",
            "type": "link",
            "url": f"/d/{OVERVIEW_UID}/observable-tasks-overview",
            "includeVars": False,
            "keepTime": True,
            "icon": "dashboard",
            "targetBlank": False,
        },
        {**traces, "type": "link", "icon": "external link"},
        {**failed_traces, "type": "link", "icon": "external link"},
    ]
    return _dashboard(
        TASK_UID,
        "observable-tasks: task",
        "One task function ($task): outcomes, error types, latency, queue wait and its traces.",
        variables,
        panels,
        links,
    )


DASHBOARDS = {
    "observable-tasks-overview.json": overview,
    "observable-tasks-task.json": task_drilldown,
}


def render(build: Any) -> str:
    """The file content of one dashboard (stable key order, trailing newline)."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for filename, build in DASHBOARDS.items():
        path = OUT_DIR / filename
        text = render(build)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(filename)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python grafana/generate_dashboards.py):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
