"""A histogram observation with an exemplar, without prometheus_client's checks per call.

``Histogram.observe(value, exemplar)`` validates the exemplar's label names (regular
expressions) and length on every call, then walks the buckets in a Python loop. The library's
exemplars are always ``{"trace_id": <32 hex>, "span_id": <16 hex>}`` (61 characters, under the
128 allowed): valid by construction. :func:`observe_with_exemplar` does what ``observe`` does
for them (sum, bucket, exemplar of that bucket), finding the bucket by bisection; a histogram
without the attributes it relies on (another prometheus_client, a parent metric) goes through
``observe``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

from prometheus_client.samples import Exemplar

__all__ = ["observe_with_exemplar"]


def observe_with_exemplar(child: Any, value: float, exemplar: dict[str, str]) -> None:
    """``child.observe(value, exemplar)`` for an exemplar known to be valid."""
    try:
        bounds: list[float] = child._upper_bounds  # ascending, the last one +Inf
        buckets: list[Any] = child._buckets
        total: Any = child._sum
    except AttributeError:
        child.observe(value, exemplar)
        return
    if value != value:  # NaN: observe() puts it in no bucket
        child.observe(value, exemplar)
        return
    total.inc(value)
    bucket = buckets[bisect_left(bounds, value)]  # the first bound >= value, as observe()
    bucket.inc(1)
    bucket.set_exemplar(Exemplar(exemplar, value, time.time()))
