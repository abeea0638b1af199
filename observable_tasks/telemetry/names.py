"""Every telemetry name in one place: metrics, labels, spans, attributes and log fields.

Dashboards (``grafana/``) and alert rules (``prometheus/``) are checked against this module by a
test, so renaming a metric here cannot silently blank a panel.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_NAMESPACE",
    "TASKS_CREATED",
    "TASKS_FINISHED",
    "TASKS_RUNNING",
    "TASKS_PENDING",
    "TASKS_SCHEDULED",
    "TASKS_CONCURRENCY_LIMIT",
    "TASK_DURATION",
    "TASK_QUEUE_WAIT",
    "TASK_ERRORS",
    "TASK_LAST_SUCCESS",
    "TASK_RETRIES",
    "TELEMETRY_ERRORS",
    "LABEL_OVERFLOW",
    "QUEUE_PENDING",
    "QUEUE_SCHEDULED",
    "QUEUE_RUNNING",
    "QUEUE_OLDEST_AGE",
    "QUEUE_WORKERS",
    "QUEUE_REDELIVERIES",
    "QUEUE_UP",
    "LABEL_QUEUE",
    "EVENT_LOOP_LAG",
    "SYNC_THREADS_ABANDONED",
    "METRICS",
    "QUEUE_METRICS",
    "ALL_METRICS",
    "LABEL_TASK",
    "LABEL_STATUS",
    "LABEL_ERROR_TYPE",
    "LABEL_COMPONENT",
    "LABEL_LABEL",
    "OVERFLOW_VALUE",
    "FINISHED_STATUSES",
    "STATUS_LABELS",
    "RELEASED",
    "RETRYING",
    "metric_name",
    "exported_names",
    "DURATION_BUCKETS",
    "QUEUE_WAIT_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "SPAN_SEND",
    "SPAN_PROCESS",
    "ATTR",
    "LOG_EVENTS",
    "LOG_FIELDS",
    "INSTRUMENTATION_NAME",
]

DEFAULT_NAMESPACE = "observable"
"""Prefix of every metric name: ``observable_tasks_created_total`` by default."""

# -- metrics (without namespace; ``metric_name`` adds it) ---------------------------------------
# Counter names are given without ``_total``; prometheus_client appends it on exposition.

TASKS_CREATED = "tasks_created"
"""Counter {task}: tasks accepted."""
TASKS_FINISHED = "tasks_finished"
"""Counter {task, status}: tasks that reached a final status (see FINISHED_STATUSES)."""
TASKS_RUNNING = "tasks_running"
"""Gauge {task}: tasks executing now."""
TASKS_PENDING = "tasks_pending"
"""Gauge {task}: tasks waiting for a concurrency slot, for their start time or to retry."""
TASKS_SCHEDULED = "tasks_scheduled"
"""Gauge {task}: the pending tasks that wait for a planned time (``delay=``/``eta=``, or their
next attempt after a retry), not for a slot: ``pending - scheduled`` is the backlog."""
TASKS_CONCURRENCY_LIMIT = "tasks_concurrency_limit"
"""Gauge: the configured ``max_concurrent_tasks`` (draw saturation as running / limit)."""
TASK_DURATION = "task_duration_seconds"
"""Histogram {task, status}: execution time of started tasks."""
TASK_QUEUE_WAIT = "task_queue_wait_seconds"
"""Histogram {task}: time from creation to start (waiting for a slot)."""
TASK_ERRORS = "task_errors"
"""Counter {task, error_type}: failures and timeouts by exception class."""
TASK_LAST_SUCCESS = "task_last_success_timestamp_seconds"
"""Gauge {task}: Unix time of the last COMPLETED task."""
TASK_RETRIES = "task_retries"
"""Counter {task}: attempts that failed and were planned to run again (a retry storm shows
here before anything finishes)."""
TELEMETRY_ERRORS = "telemetry_errors"
"""Counter {component}: failures inside telemetry itself (never fail a task)."""
QUEUE_PENDING = "queue_pending"
"""Gauge {queue}: tasks waiting in the Redis queue, for a worker or for a planned time (read
from Redis at scrape time)."""
QUEUE_SCHEDULED = "queue_scheduled"
"""Gauge {queue}: the part of ``queue_pending`` that waits for a planned time (``delay=``/
``eta=``, a retry's backoff) in the queue's delayed set."""
QUEUE_RUNNING = "queue_running"
"""Gauge {queue}: tasks claimed by a worker and not finished (cluster-wide)."""
QUEUE_OLDEST_AGE = "queue_oldest_pending_age_seconds"
"""Gauge {queue}: age of the oldest waiting task: the queue's lag."""
QUEUE_WORKERS = "queue_workers"
"""Gauge {queue}: workers that renewed their liveness within one lease."""
QUEUE_REDELIVERIES = "queue_redeliveries"
"""Counter {queue}: attempts after the first (a worker was lost, or its lease ran out)."""
QUEUE_UP = "queue_up"
"""Gauge {queue}: 1 when Redis answered the scrape's queue read, 0 when it did not."""
LABEL_OVERFLOW = "label_overflow"
"""Counter {label}: label values folded into ``OVERFLOW_VALUE`` because of the cardinality cap."""
EVENT_LOOP_LAG = "event_loop_lag_seconds"
"""Histogram: how late the loop watchdog's heartbeat ran (``TaskConfig.loop_stall_threshold``)."""
SYNC_THREADS_ABANDONED = "sync_threads_abandoned"
"""Gauge: threads still running sync functions whose tasks timed out or were cancelled."""

#: name -> (type, labels), the contract dashboards and rules are tested against.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    TASKS_CREATED: ("counter", ("task",)),
    TASKS_FINISHED: ("counter", ("task", "status")),
    TASKS_RUNNING: ("gauge", ("task",)),
    TASKS_PENDING: ("gauge", ("task",)),
    TASKS_SCHEDULED: ("gauge", ("task",)),
    TASKS_CONCURRENCY_LIMIT: ("gauge", ()),
    TASK_DURATION: ("histogram", ("task", "status")),
    TASK_QUEUE_WAIT: ("histogram", ("task",)),
    TASK_ERRORS: ("counter", ("task", "error_type")),
    TASK_LAST_SUCCESS: ("gauge", ("task",)),
    TASK_RETRIES: ("counter", ("task",)),
    TELEMETRY_ERRORS: ("counter", ("component",)),
    LABEL_OVERFLOW: ("counter", ("label",)),
    EVENT_LOOP_LAG: ("histogram", ()),
    SYNC_THREADS_ABANDONED: ("gauge", ()),
}

#: Exported by processes on the Redis backend (read from Redis at scrape time).
QUEUE_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    QUEUE_PENDING: ("gauge", ("queue",)),
    QUEUE_SCHEDULED: ("gauge", ("queue",)),
    QUEUE_RUNNING: ("gauge", ("queue",)),
    QUEUE_OLDEST_AGE: ("gauge", ("queue",)),
    QUEUE_WORKERS: ("gauge", ("queue",)),
    QUEUE_REDELIVERIES: ("counter", ("queue",)),
    QUEUE_UP: ("gauge", ("queue",)),
}
ALL_METRICS = {**METRICS, **QUEUE_METRICS}
"""Every metric the library can export (dashboards and rules are checked against these)."""

LABEL_TASK = "task"
LABEL_STATUS = "status"
LABEL_ERROR_TYPE = "error_type"
LABEL_COMPONENT = "component"
LABEL_LABEL = "label"
LABEL_QUEUE = "queue"
OVERFLOW_VALUE = "__other__"
"""Label value that stands for every value past the cardinality cap."""
FINISHED_STATUSES = ("completed", "failed", "cancelled", "timeout")
"""Label values of the final statuses (lower case: the Prometheus convention)."""
STATUS_LABELS: dict[str, str] = {
    "PENDING": "pending",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
}
"""``TaskStatus`` value -> the label value used in metrics, log lines and span attributes."""
RELEASED = "released"
"""Status attribute/field of an attempt that ended without an outcome (Redis backend: handed
back to the queue at shutdown, or taken over by another worker after its lease)."""

RETRYING = "retrying"
"""Status attribute of an attempt that failed and will run again (the task is PENDING)."""

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
LOOP_LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def metric_name(suffix: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Full metric name as registered (counters without ``_total``)."""
    return f"{namespace}_{suffix}" if namespace else suffix


def exported_names(namespace: str = DEFAULT_NAMESPACE) -> set[str]:
    """Every series name a scrape can contain (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    for suffix, (kind, _) in ALL_METRICS.items():
        base = metric_name(suffix, namespace)
        if kind == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        else:
            names.add(base)
    return names


# -- traces ---------------------------------------------------------------------------------

INSTRUMENTATION_NAME = "observable_tasks"
SPAN_SEND = "send {function}"
"""PRODUCER span at creation, in the caller's context."""
SPAN_PROCESS = "process {function}"
"""CONSUMER span around execution, current while the task function runs."""


class ATTR:
    """Span attribute names (OTel messaging/code/error conventions where they exist)."""

    MESSAGING_SYSTEM = "messaging.system"
    MESSAGING_OPERATION_TYPE = "messaging.operation.type"
    MESSAGING_OPERATION_NAME = "messaging.operation.name"
    MESSAGING_DESTINATION = "messaging.destination.name"
    MESSAGE_ID = "messaging.message.id"
    CODE_FUNCTION = "code.function.name"
    ERROR_TYPE = "error.type"
    TASK_NAME = "observable_tasks.task.name"
    TASK_STATUS = "observable_tasks.task.status"
    TASK_TIMEOUT = "observable_tasks.task.timeout_s"
    TASK_QUEUE_WAIT = "observable_tasks.task.queue_wait_s"
    TASK_ATTEMPT = "observable_tasks.task.attempt"
    TASK_MAX_ATTEMPTS = "observable_tasks.task.max_attempts"
    TASK_RETRY_DELAY = "observable_tasks.task.retry_delay_s"  # set when the attempt will retry
    TASK_KEY = "observable_tasks.task.key"
    SYSTEM_VALUE = "observable_tasks"


# -- logs -----------------------------------------------------------------------------------

LOG_EVENTS = {
    "created": "task.created",
    "started": "task.started",
    "completed": "task.completed",
    "failed": "task.failed",
    "timeout": "task.timeout",
    "cancelled": "task.cancelled",
    "progress": "task.progress",
    "evicted": "task.evicted",
    "released": "task.released",
    "retrying": "task.retrying",
    "loop_stalled": "loop.stalled",
}
"""structlog event names, keyed by what happened."""


class LOG_FIELDS:  # a namespace of constants, read like a module
    """Field names in task log events (bound into the task's context where noted)."""

    TASK_ID = "task_id"  # bound
    TASK_NAME = "task_name"  # bound
    FUNCTION = "task_function"
    STATUS = "status"
    DURATION = "duration_s"
    QUEUE_WAIT = "queue_wait_s"
    PROGRESS = "progress"
    ERROR_TYPE = "error_type"
    ERROR = "error"
    TRACE_ID = "trace_id"
    SPAN_ID = "span_id"
    BLOCKED = "blocked_s"  # loop.stalled: seconds the loop had been blocked when seen
    TRACE_FLAGS = "trace_flags"
    ATTEMPT = "attempt"  # task.started, task.retrying and the final event
    DELAY = "delay_s"  # task.retrying (seconds until the next attempt); task.created (delay=)
    NEXT_ATTEMPT = "next_attempt_at"  # task.retrying: ISO time of the next attempt
    KEY = "key"  # task.created: the idempotency key
