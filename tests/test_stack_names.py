"""Every metric a dashboard panel or an alert rule selects is one the library exports.

Renaming a metric in ``observable_tasks.telemetry.names`` (or mistyping one in a panel) fails here
instead of silently blanking a panel or disarming an alert.
"""

from __future__ import annotations

import pytest
from stack_support import Query, dashboard_queries, metric_names, rule_queries

from observable_tasks.telemetry import names

EXPORTED = names.exported_names()
QUERIES = dashboard_queries() + rule_queries()


def test_there_are_queries_to_check() -> None:
    sources = {q.source for q in QUERIES}
    assert {"observable-tasks-overview.json", "observable-tasks-task.json"} <= sources
    assert "observable-tasks.rules.yml" in sources
    assert len(QUERIES) > 40


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_selected_metric_is_exported(query: Query) -> None:
    used = metric_names(query.expr)
    assert used, f"no metric selected by {query}"
    unknown = used - EXPORTED
    assert not unknown, f"{query} uses metrics the library does not export: {sorted(unknown)}"


def test_every_library_metric_is_on_a_dashboard() -> None:
    """A metric nobody can see is a metric nobody watches."""
    used = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    for suffix, (kind, _labels) in names.ALL_METRICS.items():
        base = names.metric_name(suffix)
        series = {"counter": f"{base}_total", "histogram": f"{base}_bucket"}.get(kind, base)
        assert series in used, f"{series} appears on no dashboard"


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (task, le) (rate(a_bucket{job=~"$job", x="b_c"}[5m])))'
        " / on (job) group_left () sum(b_total offset 5m) > bool 1e3 or vector(0) and time()"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
