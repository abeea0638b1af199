"""docker-compose.yml and the Dockerfile, checked statically (no docker on the dev/CI machine).

The services exist, every mounted host path exists in the repo, the ports are published, the app
exports traces to the jaeger service, Prometheus scrapes the app service by name with the rules
mounted, Grafana gets its provisioning, and the image runs the demo. The tasks live in the redis
service (AOF on, no eviction), the app is web only on that backend and the worker service runs
them, both from the app's image, sharing the demo's data folder; their commands parse with the
real command line.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from typing import Any

import pytest
import yaml
from stack_support import COMPOSE_FILE, DOCKERFILE, PROMETHEUS_CONFIG, REPO

from observable_tasks import cli

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _published(service: str) -> set[int]:
    ports = set()
    for entry in SERVICES[service].get("ports", []):
        host, _, container = str(entry).rpartition(":")
        assert host, f"{service}: {entry} publishes no host port"
        assert host.split(":")[-1] == container.split("/")[0], f"{service}: {entry} remaps"
        ports.add(int(container.split("/")[0]))
    return ports


NAMED_VOLUMES: dict[str, Any] = COMPOSE.get("volumes") or {}
REDIS_URL = "redis://redis:6379/0"


def _volumes(service: str) -> list[tuple[str, str, str]]:
    out = []
    for entry in SERVICES[service].get("volumes", []):
        host, container, *mode = entry.split(":")
        out.append((host, container, mode[0] if mode else "rw"))
    return out


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services() -> None:
    assert {"app", "worker", "redis", "prometheus", "jaeger", "grafana", "loadgen"} <= set(SERVICES)
    assert "version" not in COMPOSE, "the compose spec has no version key any more"


def test_published_ports() -> None:
    assert 8000 in _published("app")
    assert 9090 in _published("prometheus")
    assert 3000 in _published("grafana")
    assert {16686, 4317} <= _published("jaeger")


def test_every_mounted_host_path_exists_in_the_repo() -> None:
    mounts = 0
    for name in SERVICES:
        for host, container, mode in _volumes(name):
            assert container.startswith("/")
            if host in NAMED_VOLUMES:  # a volume of compose's own (data), declared below
                continue
            assert host.startswith("./"), f"{name}: {host} is neither a repo path nor a volume"
            assert (REPO / host).exists(), f"{name}: {host} does not exist"
            assert mode == "ro", f"{name}: mount {host} read-only"
            mounts += 1
    assert mounts >= 4
    used = {host for name in SERVICES for host, _, _ in _volumes(name)}
    assert set(NAMED_VOLUMES) <= used, "a declared volume no service mounts"


def test_images_are_pinned_or_built_here() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"] in (".", {"context": "."}), name
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?", image), f"{name}: pin {image}"


def test_app_is_built_from_the_repo_and_exports_traces_to_jaeger() -> None:
    app = SERVICES["app"]
    assert app["build"] == "."
    env = _env("app")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_SERVICE_NAME"] == "observable-tasks-demo"
    assert "jaeger" in app["depends_on"]
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["command"][:2] == ["observable-tasks", "demo"]
    assert app["command"][app["command"].index("--host") + 1] == "0.0.0.0"
    assert app["command"][app["command"].index("--port") + 1] == "8000"
    check = " ".join(app["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/metrics" in check


def _subcommand(name: str) -> argparse.ArgumentParser | None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser | None = sub.choices.get(name)
    return found


def test_app_is_web_only_on_the_redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    command = SERVICES["app"]["command"]
    for key, value in _env("app").items():
        monkeypatch.setenv(key, value)
    assert "--no-worker" in command  # the worker service runs the tasks
    args = cli.build_parser().parse_args(command[1:])  # the real CLI accepts it
    assert args.no_worker is True
    assert cli._backend(args.backend) == REDIS_URL  # from OBSERVABLE_TASKS_BACKEND


def test_redis_keeps_tasks_across_restarts_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+", redis["image"]), redis["image"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in redis["healthcheck"]["test"]
    (data,) = [(h, c) for h, c, _ in _volumes("redis") if c == "/data"]
    assert data[0] in NAMED_VOLUMES  # the AOF outlives the container
    assert "ports" not in redis  # reachable by the services only


def test_worker_runs_the_demo_tasks_from_the_same_redis() -> None:
    worker = SERVICES["worker"]
    assert worker["build"] == SERVICES["app"]["build"] == "."  # the app's image
    command = worker["command"]
    assert command[:2] == ["observable-tasks", "worker"]
    assert command[command.index("--backend") + 1] == REDIS_URL
    assert command[-1] == "observable_tasks.demo"  # the module whose functions it may run
    # The demo's 50 slots (the load generator's bursts of 60 saturate them).
    assert command[command.index("--concurrency") + 1] == "50"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    env = _env("worker")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_SERVICE_NAME"] == "observable-tasks-worker"
    # One data folder for the app and the worker: /process-file and exports work anywhere.
    for service in ("app", "worker"):
        mounts = {c: h for h, c, _ in _volumes(service)}
        folder = _env(service)["DEMO_DATA_DIR"]
        assert mounts[folder] in NAMED_VOLUMES, service
    assert {c: h for h, c, _ in _volumes("app")}[_env("app")["DEMO_DATA_DIR"]] == {
        c: h for h, c, _ in _volumes("worker")
    }[_env("worker")["DEMO_DATA_DIR"]]
    # Compose waits for the worker's graceful shutdown (30 s) before it kills.
    assert int(worker["stop_grace_period"].rstrip("s")) > 30


def test_worker_command_parses_with_the_real_cli() -> None:
    if _subcommand("worker") is None:
        pytest.skip("observable-tasks worker is not on this branch yet")
    command = SERVICES["worker"]["command"]
    args = cli.build_parser().parse_args(command[1:])
    assert args.command == "worker"
    assert args.backend == REDIS_URL
    assert args.modules == ["observable_tasks.demo"]
    assert args.concurrency == 50
    assert args.metrics_port == 9100


def test_jaeger_accepts_otlp() -> None:
    jaeger = SERVICES["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert _env("jaeger")["COLLECTOR_OTLP_ENABLED"] == "true"


def test_prometheus_gets_config_and_rules_and_scrapes_the_app_by_name() -> None:
    prom = SERVICES["prometheus"]
    volumes = {host: container for host, container, _ in _volumes("prometheus")}
    assert volumes["./prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # Exemplars (trace ids on histogram buckets) are kept: the latency panels link to traces.
    assert "--enable-feature=exemplar-storage" in prom["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["rules/*.rules.yml"]  # relative to the mounted config
    assert list((REPO / "prometheus" / "rules").glob("*.rules.yml"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "observable-tasks"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["app:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Every worker replica too (outcomes are counted where tasks run), on its metrics port.
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["type"] == "A"
    worker = SERVICES["worker"]["command"]
    assert str(dns["port"]) == worker[worker.index("--metrics-port") + 1]


def test_grafana_is_provisioned_with_anonymous_view() -> None:
    volumes = {host: container for host, container, _ in _volumes("grafana")}
    assert volumes["./grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert volumes["./grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert volumes["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    env = _env("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (REPO / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).exists()
    datasources = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/datasources.yml").read_text()
    )
    urls = {d["type"]: d["url"] for d in datasources["datasources"]}
    # Data source addresses are compose service names and container ports.
    assert urls["prometheus"] == f"http://prometheus:{9090}"
    assert urls["jaeger"] == f"http://jaeger:{16686}"


def test_loadgen_targets_the_app_and_its_script_exists() -> None:
    loadgen = SERVICES["loadgen"]
    assert loadgen["build"] == "."
    assert loadgen["depends_on"]["app"]["condition"] == "service_healthy"
    command = loadgen["command"]
    assert command[:2] == ["python", "examples/loadgen.py"]
    assert (REPO / command[1]).is_file()
    assert command[command.index("--url") + 1] == "http://app:8000"
    assert float(command[command.index("--rate") + 1]) <= 20, "keep the load bounded"


def _dockerfile() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            instruction, _, rest = current.strip().partition(" ")
            lines.append((instruction.upper(), rest.strip()))
            current = ""
    return lines


def test_dockerfile_installs_the_package_and_runs_the_demo() -> None:
    instructions = _dockerfile()
    kinds = [kind for kind, _ in instructions]
    base = dict(instructions)["FROM"]
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    runs = [rest for kind, rest in instructions if kind == "RUN"]
    assert any(shlex.split(r)[:3] == ["pip", "install", "."] for r in runs)
    copies = " ".join(rest for kind, rest in instructions if kind == "COPY")
    for needed in ("pyproject.toml", "README.md", "observable_tasks", "examples"):
        assert needed in copies  # README.md: the package's readme, hatchling needs it
    assert kinds[-1] == "CMD"
    cmd = json.loads(instructions[-1][1])
    assert cmd == ["observable-tasks", "demo", "--host", "0.0.0.0", "--port", "8000"]
    assert "EXPOSE" in kinds
    assert dict(instructions)["EXPOSE"] == "8000"
    assert any(kind == "USER" for kind in kinds), "run as a non-root user"
    # The demo's data folder (mounted as a shared volume by compose): made, private, the user's.
    setup = " ".join(runs)
    assert "mkdir -m 0700 /data" in setup
    assert "chown -R app:app /data" in setup


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored
    for needed in ("pyproject.toml", "README.md", "observable_tasks", "examples"):
        assert needed not in ignored


def test_the_stack_is_documented() -> None:
    doc = (REPO / "docs" / "observability-stack.md").read_text()
    assert "docker compose up --build" in doc
    for address in ("localhost:8000", "localhost:9090", "localhost:3000", "localhost:16686"):
        assert address in doc
    assert "verified\nstatically" in doc or "verified statically" in doc
    for alert in ("HighFailureRatio", "HighTimeoutRatio", "PendingBacklogHigh", "Saturated"):
        assert f"ObservableTasks{alert}" in doc
