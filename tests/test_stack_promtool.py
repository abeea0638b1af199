"""promtool (Debian's ``prometheus`` package) on the shipped config, rules, rule tests and on a
real ``/metrics`` scrape of the demo app started with the shipped command.

Skipped where promtool is missing, except under CI=true (then they fail: .ci/run must install
``prometheus`` with --no-install-recommends).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from stack_support import (
    DEMO_TASK,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    RULE_TESTS,
    DemoProcess,
    load_rule_groups,
    require_tool,
    wait_for,
)

from observable_tasks.telemetry import names

pytestmark = pytest.mark.e2e


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # The rule files are found through the config's glob, relative to the config file.
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_check_rules() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [r for g in load_rule_groups()["observable-tasks.rules.yml"] for r in g["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    import yaml

    alerts = {
        r["alert"]
        for groups in load_rule_groups().values()
        for g in groups
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts == {
        "ObservableTasksHighFailureRatio",
        "ObservableTasksHighTimeoutRatio",
        "ObservableTasksRetryStorm",
        "ObservableTasksPendingBacklogHigh",
        "ObservableTasksSaturated",
        "ObservableTasksQueueLagHigh",
        "ObservableTasksNoLiveWorker",
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == alerts, f"no firing case for {alerts - firing}"
    assert quiet == alerts, f"no not-firing case for {alerts - quiet}"


def test_alerts_have_for_severity_and_use_rate_on_counters() -> None:
    for groups in load_rule_groups().values():
        for group in groups:
            for rule in group["rules"]:
                assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
                assert int(rule["for"][:-1]) >= 5, f"{rule['alert']}: `for` too short to be sure"
                assert rule["labels"]["severity"] in {"warning", "critical"}
                assert rule["annotations"]["summary"]
                assert rule["annotations"]["description"]
                # Counters only through rate()/increase(), never raw or avg_over_time.
                for counter in re.findall(r"\w+_total\b", rule["expr"]):
                    for use in re.finditer(rf"(\w+)\(\s*{counter}", rule["expr"]):
                        assert use.group(1) in {"rate", "increase"}, (rule["alert"], use.group())
                assert "avg_over_time(observable_tasks_finished_total" not in rule["expr"]


def _drive(demo: DemoProcess, *, cancel: bool) -> int:
    ids = [
        demo.simulate("complete", 0.05),
        demo.simulate("fail", 0.05),
        demo.simulate("task_error", 0.05),
        demo.simulate("timeout", 2.0, timeout=0.05),
    ]
    if cancel:
        slow = demo.simulate("slow", 60)
        wait_for(lambda: demo.statuses([slow]).get("running"), timeout=10, what="slow task runs")
        assert demo.cancel(slow)
        ids.append(slow)
    return len(ids)


def _finished(text: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^observable_tasks_finished_total\{[^}]*\} (\S+)$", text, re.M)
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "multiprocess"])
def test_check_metrics_on_a_real_scrape(tmp_path: Path, workers: int) -> None:
    require_tool("promtool")
    with DemoProcess(tmp_path, workers=workers) as demo:
        created = _drive(demo, cancel=workers == 1)

        def scrape_when_done() -> str | None:
            text = demo.metrics_text()
            return text if _finished(text) == created else None

        text = wait_for(scrape_when_done, timeout=20, what=f"{created} finished tasks in /metrics")
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    lint = result.stdout + result.stderr
    assert lint.strip() == "", f"promtool check metrics found problems:\n{lint}"
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    samples = set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.M))
    for suffix, (kind, labels) in names.METRICS.items():
        family = names.metric_name(suffix)
        if suffix in (names.TELEMETRY_ERRORS,) and workers > 1:
            continue  # no sample yet, and multiprocess mode lists only metrics with samples
        assert family in families or f"{family}_total" in families, family
        if suffix != names.TELEMETRY_ERRORS:
            series = {"counter": f"{family}_total", "histogram": f"{family}_bucket"}
            assert series.get(kind, family) in samples, f"no sample of {family}"
        for label in labels:
            if suffix != names.TELEMETRY_ERRORS:
                assert re.search(rf"^{family}\w*\{{[^}}]*\b{label}=", text, re.M), (family, label)
    assert f'task="{DEMO_TASK}"' in text
    limit = re.search(r"^observable_tasks_concurrency_limit (\S+)$", text, re.M)
    assert limit is not None
    # The demo's limit is 50 per process; multiprocess mode sums the workers (livesum), which
    # is what the dashboards' and alerts' sum(running) / sum(limit) relies on.
    assert float(limit.group(1)) == 50 * workers
