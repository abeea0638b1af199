"""Queue-wide gauges of the Redis backend, read from Redis when ``/metrics`` is scraped.

Each process counts what it did itself (created, finished, durations); what belongs to the whole
queue (tasks waiting, running anywhere, the oldest one's age, live workers, redeliveries) is in
Redis, so any process's scrape reads it there: no drift, and the same numbers from every web
process (dashboards take ``max`` over instances). Works in multiprocess mode too: the route adds
this collector to the registry it builds per scrape.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observable_tasks.telemetry import names

if TYPE_CHECKING:
    from observable_tasks.manager import TaskManager

__all__ = ["QueueCollector"]


class QueueCollector(Collector):
    """Reads ``queue_stats()`` of every Redis-backed manager attached (one read per queue)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.managers: weakref.WeakSet[TaskManager] = weakref.WeakSet()

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time only (describing would read Redis at registration)

    def collect(self) -> Iterable[Metric]:
        n = self.namespace

        def gauge(suffix: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(names.metric_name(suffix, n), doc, labels=[names.LABEL_QUEUE])

        pending = gauge(names.QUEUE_PENDING, "Tasks waiting in the Redis queue (scheduled too).")
        scheduled = gauge(
            names.QUEUE_SCHEDULED, "Waiting tasks planned for later (delay, eta, a retry)."
        )
        running = gauge(names.QUEUE_RUNNING, "Tasks claimed by a worker and not finished.")
        oldest = gauge(names.QUEUE_OLDEST_AGE, "Age of the oldest waiting task (queue lag).")
        workers = gauge(names.QUEUE_WORKERS, "Workers alive (renewed within one lease).")
        up = gauge(names.QUEUE_UP, "1 if Redis answered this scrape's queue read, else 0.")
        redeliveries = CounterMetricFamily(
            names.metric_name(names.QUEUE_REDELIVERIES, n),
            "Attempts after the first (a worker was lost or its lease ran out).",
            labels=[names.LABEL_QUEUE],
        )
        seen: set[tuple[str, str]] = set()
        for manager in list(self.managers):
            backend = manager.backend
            if backend is None:
                continue
            key = (backend.url, backend.keys.base)
            if key in seen:
                continue
            seen.add(key)
            queue = [backend.keys.queue]
            stats = backend.queue_stats()
            up.add_metric(queue, 1 if stats else 0)
            if not stats:
                continue
            pending.add_metric(queue, stats["pending"])
            scheduled.add_metric(queue, stats.get("delayed", 0))
            running.add_metric(queue, stats["running"])
            oldest.add_metric(queue, stats["oldest_pending_age"])
            workers.add_metric(queue, stats["workers"])
            redeliveries.add_metric(queue, stats["redeliveries"])
        if not seen:
            return []
        return [pending, scheduled, running, oldest, workers, redeliveries, up]
