"""The Grafana dashboards and provisioning files are valid and load with no clicking.

Static checks of ``grafana/``: dashboard JSON shape (schemaVersion, uid, templating, panels whose
data source is a dashboard variable), layout, the panels the issue asks for, Jaeger links, the
generator being in sync with the committed JSON, and provisioning files that point where
docker-compose.yml mounts things.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import pytest
import yaml
from stack_support import DASHBOARD_DIR, PROVISIONING_DIR, REPO, all_panels, load_dashboards

from observable_tasks.telemetry import names

DASHBOARDS = load_dashboards()
OVERVIEW = DASHBOARDS["observable-tasks-overview.json"]
TASK = DASHBOARDS["observable-tasks-task.json"]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_two_dashboards_with_unique_uids() -> None:
    assert set(DASHBOARDS) == {"observable-tasks-overview.json", "observable-tasks-task.json"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    for d in DASHBOARDS.values():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"]), d["uid"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_grafana_dashboard_json(name: str) -> None:
    d = DASHBOARDS[name]
    assert isinstance(d["schemaVersion"], int)
    assert d["schemaVersion"] >= 36
    assert d["title"]
    assert d["uid"]
    assert "id" not in d or d["id"] is None, "provisioned dashboards carry no database id"
    assert isinstance(d["templating"]["list"], list)
    assert d["time"]["from"].startswith("now-")
    assert d["panels"], "no panels"
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_for_datasource_and_job(name: str) -> None:
    variables = _variables(DASHBOARDS[name])
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query"
    assert job["datasource"]["uid"] == "${datasource}"
    assert "job" in job["definition"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_uses_a_datasource_variable(name: str) -> None:
    d = DASHBOARDS[name]
    datasource_vars = {
        f"${{{v['name']}}}": v["query"]
        for v in d["templating"]["list"]
        if v["type"] == "datasource"
    }
    for panel in all_panels(d):
        if panel["type"] == "row":
            continue
        uid = panel["datasource"]["uid"]
        assert uid in datasource_vars, f"{panel['title']}: datasource {uid} is not a variable"
        assert panel["datasource"]["type"] == datasource_vars[uid]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["refId"]
            if "expr" in target:
                assert uid == "${datasource}", f"{panel['title']}: PromQL on {uid}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout_fits_and_does_not_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in all_panels(DASHBOARDS[name]):
        g = panel["gridPos"]
        assert 0 <= g["x"] < g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def _first_row_titles(d: dict[str, Any]) -> list[str]:
    titles: list[str] = []
    rows = 0
    for panel in d["panels"]:
        if panel["type"] == "row":
            rows += 1
            if rows > 1:
                break
            continue
        titles.append(panel["title"].lower())
    return titles


def test_overview_first_row_answers_saturation_and_timeouts() -> None:
    first_row = " | ".join(_first_row_titles(OVERVIEW))
    for wanted in (
        "saturation",
        "running vs concurrency limit",
        "pending",
        "timeouts per second by task",
        "timeout ratio by task",
    ):
        assert wanted in first_row, f"{wanted!r} not in the first row: {first_row}"


def test_overview_has_the_rest_of_the_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in all_panels(OVERVIEW))
    for wanted in (
        "throughput by status",
        "failure ratio",
        "top error types",
        "p50 / p95 / p99",
        "wait for a slot p95",
    ):
        assert wanted in titles
    exprs = " ".join(t["expr"] for p in all_panels(OVERVIEW) for t in p.get("targets", []))
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le) (rate(observable_task_duration_seconds_bucket"
            in exprs
        )


def test_task_dashboard_drills_into_one_task() -> None:
    task = _variables(TASK)["task"]
    assert task["type"] == "query"
    assert not task["multi"]
    assert not task["includeAll"]
    assert "task" in task["definition"]
    for panel in all_panels(TASK):
        for target in panel.get("targets", []):
            if "expr" in target:
                assert 'task="$task"' in target["expr"], (panel["title"], target["expr"])
    traces = [p for p in all_panels(TASK) if p.get("datasource", {}).get("type") == "jaeger"]
    assert traces
    assert traces[0]["targets"][0]["operation"] == "process $task"
    assert _variables(TASK)["traces"]["query"] == "jaeger"


def _links(d: dict[str, Any]) -> list[str]:
    urls = [link.get("url", "") for link in d.get("links", [])]
    for panel in all_panels(d):
        urls += [
            link["url"]
            for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        ]
    return urls


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_links_to_jaeger_search_for_process_spans(name: str) -> None:
    jaeger = [u for u in _links(DASHBOARDS[name]) if u.startswith("${jaeger_url:raw}/search?")]
    assert jaeger, "no link to the Jaeger UI"
    assert any("operation=process%20" in u for u in jaeger), "no link to a task's process spans"
    for url in jaeger:
        assert "service=${service" in url
        assert "start=${__from}000&end=${__to}000" in url, "Jaeger wants microseconds"
    variables = _variables(DASHBOARDS[name])
    assert variables["jaeger_url"]["query"] == "http://localhost:16686"
    assert variables["service"]["query"] == "observable-tasks-demo"


def test_overview_links_series_to_the_task_dashboard() -> None:
    drill = [u for u in _links(OVERVIEW) if u.startswith(f"/d/{TASK['uid']}/")]
    assert drill
    assert all("var-task=${__field.labels.task" in u for u in drill)


def test_generated_json_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen", REPO / "grafana" / "generate_dashboards.py"
    )
    assert spec
    assert spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for filename, build in gen.DASHBOARDS.items():
        current = (DASHBOARD_DIR / filename).read_text()
        assert current == gen.render(build), (
            f"{filename} differs from grafana/generate_dashboards.py: run it and commit"
        )


def test_datasource_provisioning() -> None:
    config = yaml.safe_load((PROVISIONING_DIR / "datasources" / "datasources.yml").read_text())
    assert config["apiVersion"] == 1
    by_type = {d["type"]: d for d in config["datasources"]}
    prom, jaeger = by_type["prometheus"], by_type["jaeger"]
    assert prom["url"] == "http://prometheus:9090"
    assert prom["isDefault"] is True
    assert jaeger["url"] == "http://jaeger:16686"
    assert prom["access"] == jaeger["access"] == "proxy"
    uids = [d["uid"] for d in config["datasources"]]
    assert len(uids) == len(set(uids))
    destinations = prom["jsonData"]["exemplarTraceIdDestinations"]
    # The exemplar label the library sets (trace_id) opens the trace in the Jaeger data source.
    assert destinations == [{"name": "trace_id", "datasourceUid": jaeger["uid"]}]


# Time series panels of the duration and queue-wait histograms: they show exemplars.
LATENCY_PANELS = {
    "observable-tasks-overview.json": {
        "Duration p50 / p95 / p99",
        "Duration p95 by task",
        "Wait for a slot p95 by task",
    },
    "observable-tasks-task.json": {
        "Duration p50 / p95 / p99",
        "Duration p95 by status",
        "Wait for a slot p50 / p95 / p99",
    },
}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_latency_panels_show_exemplars(name: str) -> None:
    histograms = (
        names.metric_name(names.TASK_DURATION) + "_bucket",
        names.metric_name(names.TASK_QUEUE_WAIT) + "_bucket",
    )
    with_exemplars = set()
    for panel in all_panels(DASHBOARDS[name]):
        flags = [t.get("exemplar", False) for t in panel.get("targets", [])]
        if any(flags):
            with_exemplars.add(panel["title"])
            assert panel["type"] == "timeseries", panel["title"]
            # Once per panel: every quantile of one histogram has the same exemplars.
            assert flags == [True] + [False] * (len(flags) - 1), panel["title"]
            assert any(h in panel["targets"][0]["expr"] for h in histograms), panel["title"]
    assert with_exemplars == LATENCY_PANELS[name]


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    config = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "dashboards.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
