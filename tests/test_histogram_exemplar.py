"""observe_with_exemplar: the same samples and exemplars as Histogram.observe(value, exemplar)."""

from __future__ import annotations

import random
import re

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from observable_tasks.telemetry import names
from observable_tasks.telemetry._histogram import observe_with_exemplar

EXEMPLAR = {"trace_id": "5b8d2bb89195996d29406bc308f02a8f", "span_id": "a2de3f6b9e2f8fa3"}


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    # Exemplar and _created timestamps are times of the calls: everything else must match.
    return [re.sub(r" [0-9.e+]+$", "", line) if "#" in line or "_created" in line else line
            for line in lines]  # fmt: skip


@pytest.mark.parametrize("buckets", [names.DURATION_BUCKETS, names.QUEUE_WAIT_BUCKETS])
def test_same_samples_and_exemplars_as_observe(buckets: tuple[float, ...]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = Histogram("h", "h", ["task"], buckets=buckets, registry=ours).labels("f")
    b = Histogram("h", "h", ["task"], buckets=buckets, registry=theirs).labels("f")
    rng = random.Random(7)
    values = [0.0, buckets[0], buckets[0] * 1.0001, buckets[-1], 1e12, float("inf"), -1.0]
    values += [rng.random() * 2 * buckets[-1] for _ in range(200)]
    for i, value in enumerate(values):
        exemplar = {**EXEMPLAR, "span_id": f"{i:016x}"}
        observe_with_exemplar(a, value, exemplar)
        b.observe(value, exemplar)
    assert exposition(ours) == exposition(theirs)


def test_nan_and_objects_without_the_internals_go_through_observe() -> None:
    calls: list[tuple[float, dict[str, str]]] = []

    class Other:
        def observe(self, value: float, exemplar: dict[str, str]) -> None:
            calls.append((value, exemplar))

    observe_with_exemplar(Other(), 1.0, EXEMPLAR)
    assert calls == [(1.0, EXEMPLAR)]
    registry = CollectorRegistry()
    child = Histogram("h", "h", ["task"], registry=registry).labels("f")
    observe_with_exemplar(child, float("nan"), EXEMPLAR)
    assert registry.get_sample_value("h_count", {"task": "f"}) == 0.0
