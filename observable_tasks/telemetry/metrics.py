"""Prometheus metrics per task: counters per status, running/pending gauges, latency histograms.

Labels are bounded: the task *function's* qualified name (never the display name, which the
documented file-processing example builds from a file name, and never a task id), capped by
:class:`LabelLimiter`. Running/pending gauges and the concurrency limit are computed at scrape time
from the managers (no drift), except in prometheus_client's multiprocess mode, where custom
collectors cannot work and ``livesum`` gauges are kept instead.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import Counter as _Counts
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observable_tasks.middleware import outcome_status
from observable_tasks.status import TaskStatus
from observable_tasks.telemetry import _histogram, names
from observable_tasks.telemetry._common import error_type
from observable_tasks.telemetry.exemplars import (
    ExemplarStore,
    bucket_layout,
    current_exemplar,
    multiprocess_dir,
    process_store,
)
from observable_tasks.telemetry.pipeline import AttemptAbandoned, TelemetryPart
from observable_tasks.telemetry.queue_metrics import QueueCollector

if TYPE_CHECKING:
    from observable_tasks.manager import TaskManager
    from observable_tasks.task import Task

__all__ = ["TaskMetrics", "LabelLimiter", "is_multiprocess", "queue_collectors"]

# Label values as plain strings: an enum's .value is a Python-level descriptor, paid per task.
_COMPLETED = names.STATUS_LABELS[TaskStatus.COMPLETED.value]
_CANCELLED = names.STATUS_LABELS[TaskStatus.CANCELLED.value]
_PENDING = TaskStatus.PENDING
_PENDING_HELP = "Tasks waiting: for a concurrency slot, their start time or their next attempt."
_SCHEDULED_HELP = "Pending tasks waiting for a planned time (delay, eta, a retry), not a slot."
_ABANDONED_HELP = "Threads still running sync functions whose tasks timed out or were cancelled."


def is_multiprocess() -> bool:
    """True when prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``)."""
    env = os.environ
    return bool(env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir"))


class LabelLimiter:
    """Admits at most ``limit`` distinct values of one label; the rest become ``__other__``.

    Each distinct value folded into ``__other__`` is counted once in
    ``<ns>_label_overflow_total{label=...}`` (looking the same value up again does not count),
    so an exploding label is visible instead of silently eating memory. To tell a new folded
    value from a repeated one, up to ``remember_folded`` (default ``10 * limit``) folded values
    are remembered; past that, further new values are still folded but no longer counted: the
    counter then stays at ``remember_folded`` and reads "at least that many".
    """

    def __init__(
        self, label: str, limit: int, overflow: Counter, *, remember_folded: int | None = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"the label cap must be >= 1, got {limit!r}")
        self.label = label
        self.limit = limit
        self.remember_folded = 10 * limit if remember_folded is None else remember_folded
        self._seen: set[str] = set()
        self._folded: set[str] = set()
        self._lock = threading.Lock()  # taken only for values not admitted yet
        self._overflow = overflow.labels(label)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            folded = self._folded
            if value not in folded and len(folded) < self.remember_folded:
                folded.add(value)
                self._overflow.inc()
        return names.OVERFLOW_VALUE

    @property
    def seen(self) -> frozenset[str]:
        """Values admitted so far."""
        return frozenset(self._seen)

    @property
    def folded(self) -> int:
        """Distinct values folded into ``__other__`` so far (counted up to ``remember_folded``)."""
        return len(self._folded)


class _Families:
    """The metric objects of one (registry, namespace): shared by every manager using them."""

    def __init__(self, registry: CollectorRegistry | None, namespace: str, multiprocess: bool):
        def n(suffix: str) -> str:
            return names.metric_name(suffix, namespace)

        reg = registry
        self.multiprocess = multiprocess
        self.created = Counter(
            n(names.TASKS_CREATED), "Tasks accepted.", [names.LABEL_TASK], registry=reg
        )
        self.finished = Counter(
            n(names.TASKS_FINISHED),
            "Tasks that reached a final status.",
            [names.LABEL_TASK, names.LABEL_STATUS],
            registry=reg,
        )
        self.duration = Histogram(
            n(names.TASK_DURATION),
            "Execution time of started tasks, by final status.",
            [names.LABEL_TASK, names.LABEL_STATUS],
            buckets=names.DURATION_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            n(names.TASK_QUEUE_WAIT),
            "Time from creation to start (waiting for a concurrency slot).",
            [names.LABEL_TASK],
            buckets=names.QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self.errors = Counter(
            n(names.TASK_ERRORS),
            "Failed and timed-out tasks by exception class.",
            [names.LABEL_TASK, names.LABEL_ERROR_TYPE],
            registry=reg,
        )
        self.last_success = Gauge(
            n(names.TASK_LAST_SUCCESS),
            "Unix time of the last task that completed.",
            [names.LABEL_TASK],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.retries = Counter(
            n(names.TASK_RETRIES),
            "Attempts that failed and were planned to run again.",
            [names.LABEL_TASK],
            registry=reg,
        )
        self.telemetry_errors = Counter(
            n(names.TELEMETRY_ERRORS),
            "Failures inside telemetry, observers and callbacks (tasks are never affected).",
            [names.LABEL_COMPONENT],
            registry=reg,
        )
        self.overflow = Counter(
            n(names.LABEL_OVERFLOW),
            "Label values folded into __other__ by the cardinality cap.",
            [names.LABEL_LABEL],
            registry=reg,
        )
        self.loop_lag = Histogram(
            n(names.EVENT_LOOP_LAG),
            "How late the event loop ran the watchdog's heartbeat (blocked or busy loop).",
            buckets=names.LOOP_LAG_BUCKETS,
            registry=reg,
        )
        # Exemplars: prometheus_client keeps them itself in one process; in multiprocess mode
        # (where it drops them) this process's store does, for the route to merge at scrape time.
        self.duration_bucket = n(names.TASK_DURATION) + "_bucket"
        self.queue_wait_bucket = n(names.TASK_QUEUE_WAIT) + "_bucket"
        self.duration_layout = bucket_layout(names.DURATION_BUCKETS)
        self.queue_wait_layout = bucket_layout(names.QUEUE_WAIT_BUCKETS)
        self.exemplar_store: ExemplarStore | None = None
        if multiprocess:
            folder = multiprocess_dir()
            if folder is not None:
                self.exemplar_store = process_store(folder)
        self.running: Gauge | None = None
        self.pending: Gauge | None = None
        self.scheduled: Gauge | None = None
        self.limit: Gauge | None = None
        self.abandoned: Gauge | None = None
        self.collector: _StateCollector | None = None
        if multiprocess:
            self.running = Gauge(
                n(names.TASKS_RUNNING), "Tasks executing now.", [names.LABEL_TASK],
                registry=reg, multiprocess_mode="livesum",
            )  # fmt: skip
            self.pending = Gauge(
                n(names.TASKS_PENDING), _PENDING_HELP,
                [names.LABEL_TASK], registry=reg, multiprocess_mode="livesum",
            )  # fmt: skip
            self.scheduled = Gauge(
                n(names.TASKS_SCHEDULED), _SCHEDULED_HELP, [names.LABEL_TASK], registry=reg,
                multiprocess_mode="livesum",
            )  # fmt: skip
            self.limit = Gauge(
                n(names.TASKS_CONCURRENCY_LIMIT), "Configured max_concurrent_tasks (summed).",
                registry=reg, multiprocess_mode="livesum",
            )  # fmt: skip
            self.abandoned = Gauge(
                n(names.SYNC_THREADS_ABANDONED), _ABANDONED_HELP, registry=reg,
                multiprocess_mode="livesum",
            )  # fmt: skip
        else:
            self.collector = _StateCollector(namespace)
            if reg is not None:
                reg.register(self.collector)
        # Redis queue gauges: registered here, or added per scrape in multiprocess mode (the
        # route's fresh registry), since they are read from Redis, not from process memory.
        self.queue = QueueCollector(namespace)
        if reg is not None and not multiprocess:
            reg.register(self.queue)
        self.tasks = LabelLimiter(names.LABEL_TASK, 1, self.overflow)  # replaced by configure()
        self.error_types = LabelLimiter(names.LABEL_ERROR_TYPE, 1, self.overflow)
        self._configured = False
        self._lock = threading.Lock()

    def configure(self, max_task_labels: int, max_error_types: int) -> None:
        with self._lock:
            if not self._configured:
                self.tasks = LabelLimiter(names.LABEL_TASK, max_task_labels, self.overflow)
                self.error_types = LabelLimiter(
                    names.LABEL_ERROR_TYPE, max_error_types, self.overflow
                )
                if self.collector is not None:
                    self.collector.tasks = self.tasks
                self._configured = True


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[tuple[str, bool], _Families]] = (
    weakref.WeakKeyDictionary()
)
_FAMILIES_LOCK = threading.Lock()


def queue_collectors(registry: CollectorRegistry) -> list[QueueCollector]:
    """The Redis queue collectors of ``registry``'s metric families (for multiprocess scrapes)."""
    with _FAMILIES_LOCK:
        return [f.queue for f in _FAMILIES.get(registry, {}).values() if f.queue.managers]


def _families(registry: CollectorRegistry, namespace: str, multiprocess: bool) -> _Families:
    with _FAMILIES_LOCK:
        per_registry = _FAMILIES.setdefault(registry, {})
        key = (namespace, multiprocess)
        if key not in per_registry:
            per_registry[key] = _Families(registry, namespace, multiprocess)
        return per_registry[key]


class _Bound:
    """Label children of one task label, looked up once (``.labels()`` is the slow part)."""

    __slots__ = (
        "created",
        "duration",
        "duration_labels",
        "finished",
        "last_success",
        "pending",
        "queue_wait",
        "queue_wait_labels",
        "retries",
        "running",
        "scheduled",
    )  # fmt: skip

    def __init__(self, families: _Families, label: str) -> None:
        # Sorted (label, value) pairs: the keys of this task's exemplars in multiprocess mode.
        self.queue_wait_labels = ((names.LABEL_TASK, label),)
        self.duration_labels = {
            s: tuple(sorted(((names.LABEL_TASK, label), (names.LABEL_STATUS, s))))
            for s in names.FINISHED_STATUSES
        }
        self.created = families.created.labels(label)
        self.queue_wait = families.queue_wait.labels(label)
        self.last_success = families.last_success.labels(label)
        self.retries = families.retries.labels(label)  # at 0: a first retry shows in rate()
        # Pre-create every status so rate() sees 0 -> 1 instead of a series appearing at 1.
        self.finished = {s: families.finished.labels(label, s) for s in names.FINISHED_STATUSES}
        self.duration = {s: families.duration.labels(label, s) for s in names.FINISHED_STATUSES}
        # The one error type known in advance starts at 0 too (a first timeout then shows in
        # increase()); other exception classes appear when first raised.
        families.errors.labels(label, "TaskTimeoutError")
        self.running = families.running.labels(label) if families.running is not None else None
        self.pending = families.pending.labels(label) if families.pending is not None else None
        scheduled = families.scheduled
        self.scheduled = scheduled.labels(label) if scheduled is not None else None


class TaskMetrics(TelemetryPart):
    """Metrics part: counts, gauges and histograms for every task.

    ``registry`` defaults to prometheus_client's global ``REGISTRY``; several managers on one
    registry share the metric families (series add up). ``max_task_labels`` caps distinct task
    function labels, ``max_error_types`` distinct exception classes. ``exemplars``: the
    duration and queue-wait histograms carry the ``trace_id``/``span_id`` of the task's span
    when it is sampled (read from the current span, which the tracing part sets before this
    part runs; served in OpenMetrics only, see :mod:`~observable_tasks.telemetry.exemplars`).
    """

    name = "metrics"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = names.DEFAULT_NAMESPACE,
        max_task_labels: int = 200,
        max_error_types: int = 50,
        multiprocess: bool | None = None,
        exemplars: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.exemplars = exemplars
        self.namespace = namespace
        self.multiprocess = is_multiprocess() if multiprocess is None else multiprocess
        self._f = _families(self.registry, namespace, self.multiprocess)
        self._f.configure(max_task_labels, max_error_types)
        self._bound: dict[str, _Bound] = {}

    def attach(self, manager: TaskManager) -> None:
        """Count this manager's running/pending tasks and its limit in the gauges (and, on the
        Redis backend, its queue's gauges)."""
        if manager.backend is not None:
            # Redis decides when a planned task is due (no on_due here): the queue's own gauges
            # count scheduled tasks; this process' inc/dec gauge would only drift.
            self._f.scheduled = None
            self._f.queue.managers.add(manager)
            if not manager.backend.execute:
                return  # a web-only process runs nothing: no capacity, nothing running here
        if self._f.collector is not None:
            self._f.collector.managers.add(manager)
        elif self._f.limit is not None:
            self._f.limit.inc(manager.config.max_concurrent_tasks)

    def expect_components(self, components: Iterable[str]) -> None:
        """Create ``telemetry_errors_total{component}`` series at 0 for components known now."""
        for component in components:
            self._f.telemetry_errors.labels(component)

    def _for(self, task: Task) -> _Bound:
        bound = self._bound.get(task.function)
        if bound is None:
            label = self._f.tasks(task.function)
            bound = self._bound.get(label) or _Bound(self._f, label)
            if label != names.OVERFLOW_VALUE or len(self._bound) < 10 * self._f.tasks.limit:
                self._bound[task.function] = bound
        return bound

    # -- observer hooks -----------------------------------------------------------------------

    def on_created(self, task: Task) -> None:
        bound = self._for(task)
        bound.created.inc()
        if bound.pending is not None:
            bound.pending.inc()
            if task._next_wall is not None and bound.scheduled is not None:
                bound.scheduled.inc()

    def on_cancelled_pending(self, task: Task) -> None:
        bound = self._for(task)
        bound.finished[_CANCELLED].inc()
        if bound.pending is not None:
            bound.pending.dec()
            if task._next_wall is not None and bound.scheduled is not None:
                bound.scheduled.dec()

    def on_due(self, task: Task) -> None:
        bound = self._for(task)
        if bound.scheduled is not None:
            bound.scheduled.dec()

    def on_internal_error(self, component: str, error: BaseException) -> None:
        self._f.telemetry_errors.labels(component).inc()

    def on_loop_lag(self, lag: float) -> None:
        self._f.loop_lag.observe(lag)

    def on_threads_abandoned(self, change: int) -> None:
        if self._f.abandoned is not None:  # multiprocess mode; else read at scrape time
            self._f.abandoned.inc(change)

    def observes(self, hook: str) -> bool:
        if hook == "on_threads_abandoned":
            return self._f.abandoned is not None
        if hook == "on_due":
            return self._f.scheduled is not None  # multiprocess mode; else read at scrape time
        return super().observes(hook)

    # -- middleware ---------------------------------------------------------------------------

    def begin(self, task: Task) -> tuple[_Bound, dict[str, str] | None]:
        bound = self._for(task)
        # The task's span is current (tracing runs first): read once, used for both histograms.
        exemplar = current_exemplar() if self.exemplars else None
        wait = task.queue_wait
        if wait is not None:
            if exemplar is None:
                bound.queue_wait.observe(wait)
            elif self._f.exemplar_store is None:  # one process: prometheus_client keeps it
                _histogram.observe_with_exemplar(bound.queue_wait, wait, exemplar)
            else:
                self._observe_with(
                    bound.queue_wait,
                    wait,
                    exemplar,
                    self._f.queue_wait_bucket,
                    bound.queue_wait_labels,
                    self._f.queue_wait_layout,
                )
        if bound.running is not None and bound.pending is not None:
            bound.pending.dec()
            bound.running.inc()
        return bound, exemplar

    def _observe_with(
        self,
        child: Histogram,
        value: float,
        exemplar: dict[str, str],
        bucket_name: str,
        labels: tuple[tuple[str, str], ...],
        layout: tuple[tuple[float, ...], tuple[str, ...]],
    ) -> None:
        store = self._f.exemplar_store
        if store is None:
            _histogram.observe_with_exemplar(child, value, exemplar)  # the latest per bucket
        else:  # multiprocess: prometheus_client would drop it; this process's store keeps it
            child.observe(value)
            store.record(bucket_name, labels, layout[0], layout[1], value, exemplar)

    def end(
        self,
        task: Task,
        state: tuple[_Bound, dict[str, str] | None],
        error: BaseException | None,
        elapsed: float,
    ) -> None:
        bound, exemplar = state
        if bound.running is not None:
            bound.running.dec()
        if error is None:  # the common case first, without the enum lookups
            status = _COMPLETED
            bound.finished[_COMPLETED].inc()
            bound.last_success.set(time.time())
        elif task.status is _PENDING:  # the attempt failed and another is planned: no outcome
            bound.retries.inc()
            if bound.pending is not None:
                bound.pending.inc()
                if bound.scheduled is not None:
                    bound.scheduled.inc()
            return
        elif isinstance(error, AttemptAbandoned):
            return  # no outcome (released, or taken over by another worker): nothing to count
        else:
            status = names.STATUS_LABELS[outcome_status(error).value]
            bound.finished[status].inc()
            if status != _CANCELLED:
                label = self._f.tasks(task.function)
                self._f.errors.labels(label, self._f.error_types(error_type(error))).inc()
        if exemplar is None:
            bound.duration[status].observe(elapsed)
        elif self._f.exemplar_store is None:
            _histogram.observe_with_exemplar(bound.duration[status], elapsed, exemplar)
        else:
            self._observe_with(
                bound.duration[status],
                elapsed,
                exemplar,
                self._f.duration_bucket,
                bound.duration_labels[status],
                self._f.duration_layout,
            )


class _StateCollector(Collector):
    """Running, pending, limit and abandoned-thread gauges read from the managers at scrape time."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.managers: weakref.WeakSet[TaskManager] = weakref.WeakSet()
        self.tasks: LabelLimiter | None = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        n = self.namespace
        yield GaugeMetricFamily(
            names.metric_name(names.TASKS_RUNNING, n), "Tasks executing now.",
            labels=[names.LABEL_TASK],
        )  # fmt: skip
        yield GaugeMetricFamily(
            names.metric_name(names.TASKS_PENDING, n), _PENDING_HELP,
            labels=[names.LABEL_TASK],
        )  # fmt: skip
        yield GaugeMetricFamily(
            names.metric_name(names.TASKS_SCHEDULED, n), _SCHEDULED_HELP, labels=[names.LABEL_TASK]
        )
        yield GaugeMetricFamily(
            names.metric_name(names.TASKS_CONCURRENCY_LIMIT, n),
            "Configured max_concurrent_tasks (summed over managers).",
        )
        yield GaugeMetricFamily(names.metric_name(names.SYNC_THREADS_ABANDONED, n), _ABANDONED_HELP)

    def collect(self) -> Iterable[Metric]:
        families = list(self._families())
        running_family, pending_family, scheduled_family, limit_family, abandoned_family = families
        managers = list(self.managers)
        running: _Counts[str] = _Counts()
        pending: _Counts[str] = _Counts()
        scheduled: _Counts[str] = _Counts()
        fold = self.tasks
        for manager in managers:
            for task in manager.running_tasks():
                running[fold(task.function) if fold else task.function] += 1
            for task in manager.pending_tasks():
                label = fold(task.function) if fold else task.function
                pending[label] += 1
                if task._next_wall is not None:
                    scheduled[label] += 1
        known = set(fold.seen) if fold is not None else set()
        for label in sorted(known | set(running) | set(pending)):
            running_family.add_metric([label], running.get(label, 0))
            pending_family.add_metric([label], pending.get(label, 0))
            scheduled_family.add_metric([label], scheduled.get(label, 0))
        limit_family.add_metric(
            [],
            sum(
                m.config.max_concurrent_tasks
                for m in managers
                if m.backend is None or m.backend.execute  # web-only processes run nothing
            ),
        )
        abandoned_family.add_metric([], sum(m.abandoned_threads for m in managers))
        return families
