"""Helpers for the observability-stack tests (``tests/test_stack_*.py``).

- :func:`require_tool`: a Debian ``prometheus``/``promtool`` binary, or skip (fail under CI=true).
- :class:`DemoProcess`: the demo app in a real uvicorn subprocess on a loopback port.
- :class:`PrometheusServer`: a real Prometheus server scraping it, with the repo's alert rules.
- Readers for the dashboards and rule files, PromQL variable substitution and metric-name
  extraction.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from helpers import free_port

from observable_tasks.telemetry import names

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
PROVISIONING_DIR = REPO / "grafana" / "provisioning"
PROMETHEUS_DIR = REPO / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

JOB = "observable-tasks"
"""The scrape job of the app, in prometheus/prometheus.yml and in the test's Prometheus."""
DEMO_TASK = "observable_tasks.demo.simulated_work"
"""The ``task`` label of every task ``POST /simulate`` creates."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of ``name``; skips when it is missing, except under CI (then the test fails)."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed (Debian: apt-get install --no-install-recommends prometheus)"
        )
        if in_ci():
            pytest.fail(message + " and CI=true: .ci/run must install it")
        pytest.skip(message)
    return path


def wait_for(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError) as exc:  # a server that is still starting
            value, last_error = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def _stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group this test started, by its id
        process.wait(5)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without OTEL_* (no exporter may reach past loopback), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(OTEL_TRACES_EXPORTER="none", PYTHONUNBUFFERED="1", **extra)
    return env


# -- the demo app ---------------------------------------------------------------------------------

_DEMO_SCRIPT = """
import sys, uvicorn
from observable_tasks import TaskConfig
from observable_tasks.demo import create_app
limit, port = int(sys.argv[1]), int(sys.argv[2])
config = TaskConfig(max_concurrent_tasks=limit, default_timeout=120, shutdown_timeout=1)
uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")
"""


class DemoProcess:
    """The demo app served by a real uvicorn in a subprocess on ``127.0.0.1:<free port>``.

    ``max_concurrent_tasks`` given: ``create_app(TaskConfig(max_concurrent_tasks=...))`` (the CLI
    has no such knob); otherwise the shipped command, ``observable-tasks demo`` (``workers`` > 1
    turns on Prometheus multiprocess mode, with its folder under ``workdir``). ``extra_env`` is
    added to the environment (which has no ``OTEL_*`` variable but ``OTEL_TRACES_EXPORTER=none``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        max_concurrent_tasks: int | None = None,
        workers: int = 1,
        time_scale: float = 0.01,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        env = _clean_env(DEMO_TIME_SCALE=str(time_scale), DEMO_DATA_DIR=str(workdir / "data"))
        env.update(extra_env or {})  # e.g. OTEL_* of a loopback OTLP receiver
        if max_concurrent_tasks is not None:
            argv = [sys.executable, "-c", _DEMO_SCRIPT, str(max_concurrent_tasks), str(self.port)]
        else:
            argv = [sys.executable, "-m", "observable_tasks.cli", "demo"]
            argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
            argv += ["--workers", str(workers)]
            if workers > 1:
                multiproc = workdir / "multiproc"
                multiproc.mkdir(exist_ok=True)
                env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
        self.log_path = workdir / "demo.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(self._ready, timeout=30, what=f"the demo app at {self.url}")
        except BaseException:
            self.close()
            raise
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the demo app exited early:\n{self.log()}")
        return httpx.get(self.url + "/metrics", timeout=1).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def simulate(
        self, outcome: str, seconds: float, timeout: float | None = None, **extra: Any
    ) -> str:
        """``POST /simulate``: create one task, return its id (``extra``: more body fields,
        e.g. ``fail_attempts``, ``backoff``, ``delay``)."""
        body: dict[str, Any] = {"outcome": outcome, "seconds": seconds, **extra}
        if timeout is not None:
            body["timeout"] = timeout
        response = self.client.post("/simulate", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["task_id"])

    def cancel(self, task_id: str) -> bool:
        response = self.client.post(f"/tasks/{task_id}/cancel")
        assert response.status_code == 200, response.text
        return bool(response.json()["success"])

    def tasks(self) -> list[dict[str, Any]]:
        response = self.client.get("/tasks")
        assert response.status_code == 200, response.text
        tasks: list[dict[str, Any]] = response.json()
        return tasks

    def statuses(self, ids: list[str] | None = None) -> dict[str, int]:
        """How many tasks (all, or those of ``ids``) are in each status."""
        counts: dict[str, int] = {}
        wanted = set(ids) if ids is not None else None
        for task in self.tasks():
            if wanted is None or task["id"] in wanted:
                key = task["status"].lower()  # compared with metric label values
                counts[key] = counts.get(key, 0) + 1
        return counts

    def metrics_text(self) -> str:
        response = self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        _stop(self.process)
        self._log.close()

    def __enter__(self) -> DemoProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Prometheus -------------------------------------------------------------------------------


class PrometheusServer:
    """A real Prometheus (Debian's binary) on a loopback port, with a temporary config and TSDB.

    It scrapes ``targets`` (job :data:`JOB`) every second and evaluates the repo's rule files
    every second; exemplar storage is on (as in docker-compose.yml).
    """

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                # As in docker-compose.yml: keep the exemplars of OpenMetrics scrapes.
                "--enable-feature=exemplar-storage",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        try:
            wait_for(self._ready, timeout=30, what="Prometheus to be ready")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited early:\n{self.log()}")
        return self.client.get("/-/ready", timeout=1).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def _api(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (a scalar result becomes one sample)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> Any:
        data = self._api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step
        )
        return data["result"]

    def values(self, expr: str, by: str, at: float | None = None) -> dict[str, float]:
        """``{label value: sample value}`` of an instant query grouped by one label."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(expr, at)}

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: ``[{"seriesLabels": ..., "exemplars": [...]}]``."""
        result: list[dict[str, Any]] = self._api(
            "query_exemplars", query=expr, start=f"{start:.3f}", end=f"{end:.3f}"
        )
        return result

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._api("targets")["activeTargets"]
        return targets

    def close(self) -> None:
        self.client.close()
        _stop(self.process)
        self._log.close()


# -- dashboards and rules ---------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    """``{file name: dashboard JSON}`` of every dashboard in ``grafana/dashboards/``."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One PromQL expression found in a dashboard or a rule file."""

    source: str  # file name
    where: str  # panel title or alert name
    expr: str
    instant: bool = False
    legend: str = ""

    def __str__(self) -> str:
        return f"{self.source} / {self.where}: {self.expr}"


def dashboard_queries() -> list[Query]:
    """Every PromQL target of every panel (non-Prometheus targets, e.g. Jaeger, left out)."""
    found = []
    for name, dashboard in load_dashboards().items():
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" in target:
                    instant = bool(target.get("instant")) and not target.get("range", False)
                    legend = target.get("legendFormat", "")
                    found.append(Query(name, panel["title"], target["expr"], instant, legend))
    return found


def load_rule_groups() -> dict[str, list[dict[str, Any]]]:
    return {p.name: yaml.safe_load(p.read_text())["groups"] for p in RULE_FILES}


def rule_queries() -> list[Query]:
    found = []
    for name, groups in load_rule_groups().items():
        for group in groups:
            for rule in group["rules"]:
                found.append(Query(name, rule.get("alert") or rule["record"], rule["expr"]))
    return found


def grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus data source escapes a variable's value inside ``=~"..."``."""
    return re.sub(r"[\\^$*+?.()|\[\]{}]", lambda m: "\\\\" + m.group(), value)


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$name``, ``${name}``, ``${name:format}``) in ``expr``.

    Inside a regex matcher (``=~"$var"``) the value is regex-escaped, as Grafana does.
    """
    expr = re.sub(
        r'(=~")\$(\w+)(")',
        lambda m: m.group(1) + grafana_regex_escape(variables[m.group(2)]) + m.group(3),
        expr,
    )

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no test value for variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip


REDIS_ONLY = {
    names.metric_name(suffix) + {"counter": "_total"}.get(kind, "")
    for suffix, (kind, _) in names.QUEUE_METRICS.items()
}
"""Series only processes on the Redis backend export (the live stack runs the memory demo)."""


def redis_only(query: Query) -> bool:
    """Whether ``query`` reads Redis queue metrics (no data from a memory-backend demo)."""
    return bool(metric_names(query.expr) & REDIS_ONLY)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range / subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        found.add(word)
    return found


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
