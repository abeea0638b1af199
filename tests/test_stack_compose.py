"""docker-compose.yml and the Dockerfile, checked statically (no docker on the dev/CI machine).

The services exist, every mounted host path exists in the repo, the ports are published, the app
exports traces to the jaeger service, Prometheus scrapes the app service by name with the rules
mounted, Grafana gets its provisioning, and the image runs the demo.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml
from stack_support import COMPOSE_FILE, DOCKERFILE, PROMETHEUS_CONFIG, REPO

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
    assert {"app", "prometheus", "jaeger", "grafana", "loadgen"} <= set(SERVICES)
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
            assert host.startswith("./"), f"{name}: {host} is not a repo path"
            assert (REPO / host).exists(), f"{name}: {host} does not exist"
            assert container.startswith("/")
            assert mode == "ro", f"{name}: mount {host} read-only"
            mounts += 1
    assert mounts >= 4


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
    assert app["command"][:2] == ["observable-tasks", "demo"]
    assert app["command"][app["command"].index("--host") + 1] == "0.0.0.0"
    assert app["command"][app["command"].index("--port") + 1] == "8000"
    check = " ".join(app["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/metrics" in check


def test_jaeger_accepts_otlp() -> None:
    jaeger = SERVICES["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert _env("jaeger")["COLLECTOR_OTLP_ENABLED"] == "true"


def test_prometheus_gets_config_and_rules_and_scrapes_the_app_by_name() -> None:
    prom = SERVICES["prometheus"]
    volumes = {host: container for host, container, _ in _volumes("prometheus")}
    assert volumes["./prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["rules/*.rules.yml"]  # relative to the mounted config
    assert list((REPO / "prometheus" / "rules").glob("*.rules.yml"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "observable-tasks"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["app:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


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
