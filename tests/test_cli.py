"""The ``observable-tasks`` command line: --version, the demo's options, and the demo served by it
(real processes: ``observable-tasks demo`` with one and two uvicorn workers)."""

from __future__ import annotations

import argparse
import json
import os
import stat
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, poll_task
from server_process import serve

from observable_tasks import cli, demo

DEMO_OPTIONS = {
    "--host",
    "--port",
    "--workers",
    "--log-level",
    "--max-concurrent-tasks",
    "--max-body-bytes",
    "--debug",
    "--backend",
    "--no-worker",
}
DEMO_ENV = (
    "DEMO_DEBUG",
    "DEMO_MAX_BODY_BYTES",
    "DEMO_MAX_CONCURRENT_TASKS",
    "DEMO_DATA_DIR",
    "DEMO_LOG_LEVEL",
    "PROMETHEUS_MULTIPROC_DIR",
    "DEMO_NO_WORKER",
    "OBSERVABLE_TASKS_BACKEND",
)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset DEMO_ENV for the test; whatever the CLI writes into os.environ is undone after."""
    for key in DEMO_ENV:
        monkeypatch.setenv(key, "")  # recorded, so that the test's own writes are undone too
        monkeypatch.delenv(key)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"observable-tasks {version('observable-tasks')}"


def _demo_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    demo_parser: argparse.ArgumentParser = sub.choices["demo"]
    return demo_parser


def test_demo_help_shows_every_option_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    # One entry per option: from its flag up to the next option's flag.
    entries = {}
    for block in text.split("\n  --")[1:]:
        flag = "--" + block.split()[0]
        entries[flag] = " ".join(block.split())
    options = {
        s for a in _demo_parser()._actions for s in a.option_strings if s.startswith("--")
    } - {"--help"}
    assert options >= DEMO_OPTIONS
    for option in options:
        assert option in entries, option
        assert "(default: " in entries[option], entries[option]
        assert len(entries[option]) > len(option) + 20, f"{option} has no help text"
    assert "(default: 127.0.0.1)" in entries["--host"]
    assert "(default: 1048576)" in entries["--max-body-bytes"]
    assert "(default: False)" in entries["--debug"]
    assert "(default: 50)" in entries["--max-concurrent-tasks"]
    assert "(default: $OBSERVABLE_TASKS_BACKEND)" in entries["--backend"]
    assert "(default: False)" in entries["--no-worker"]
    assert cli._MAX_BODY_BYTES == demo.DEFAULT_MAX_BODY_BYTES


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("DEMO_DEBUG", "1")
    args = cli.build_parser().parse_args(["demo"])
    assert args.max_body_bytes == 4096
    assert args.debug is True


def _run_demo(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, Any]:
    """``cli.main(argv)`` with uvicorn.run faked: what it was given, and the environment."""
    seen: dict[str, Any] = {}

    def fake_run(app: str, **kwargs: Any) -> None:
        seen.update(kwargs, app=app, env=dict(os.environ))
        data = Path(os.environ["DEMO_DATA_DIR"])
        seen["data_mode"] = stat.S_IMODE(data.stat().st_mode)
        seen["sample"] = (data / "sample.txt").is_file()

    import uvicorn

    import observable_tasks.telemetry as telemetry
    import observable_tasks.telemetry.logs as logs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(cli, "_check_redis", lambda url: seen.update(checked=url))
    # This test process keeps its own logging set-up.
    monkeypatch.setattr(telemetry, "configure_logging", lambda **kw: None)
    monkeypatch.setattr(logs, "capture_stdlib_logging", lambda level=0: None)
    assert cli.main(argv) == 0
    return seen


REDIS_URL = "redis://:s3cret@redis.example:6380/2"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (
            ["demo"],
            {
                "DEMO_DEBUG": "0",
                "DEMO_MAX_BODY_BYTES": "1048576",
                "OBSERVABLE_TASKS_BACKEND": "memory",
                "DEMO_NO_WORKER": "0",
            },
        ),
        (
            ["demo", "--debug", "--max-body-bytes", "1234", "--max-concurrent-tasks", "7"],
            {"DEMO_DEBUG": "1", "DEMO_MAX_BODY_BYTES": "1234", "DEMO_MAX_CONCURRENT_TASKS": "7"},
        ),
        (
            ["demo", "--backend", REDIS_URL, "--workers", "3", "--no-worker"],
            {"OBSERVABLE_TASKS_BACKEND": REDIS_URL, "DEMO_NO_WORKER": "1"},
        ),
        (
            ["demo", "--backend", "rediss://cache.example:6379/0", "--workers", "2"],
            {"OBSERVABLE_TASKS_BACKEND": "rediss://cache.example:6379/0", "DEMO_NO_WORKER": "0"},
        ),
    ],
)
def test_demo_passes_its_options_to_the_workers(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]
) -> None:
    _clean_env(monkeypatch)
    seen = _run_demo(monkeypatch, argv)
    assert seen["app"] == "observable_tasks.demo:app"
    assert seen["log_config"] is None  # uvicorn's loggers propagate to ours
    for key, value in env.items():
        assert seen["env"][key] == value, key
    assert seen["data_mode"] == 0o700
    assert seen["sample"]
    assert not Path(seen["env"]["DEMO_DATA_DIR"]).exists()  # removed at exit
    # Redis is checked before the server starts; the memory backend needs no check.
    backend = seen["env"]["OBSERVABLE_TASKS_BACKEND"]
    assert seen.get("checked") == (None if backend == "memory" else backend)


def test_unreachable_redis_stops_the_demo_at_once() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(SystemExit) as refused:
        cli._check_redis(url)
    message = str(refused.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in message
    assert "s3cret" not in message


def test_backend_and_no_worker_defaults_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("OBSERVABLE_TASKS_BACKEND", REDIS_URL)
    monkeypatch.setenv("DEMO_NO_WORKER", "1")
    seen = _run_demo(monkeypatch, ["demo", "--workers", "2"])
    assert seen["workers"] == 2
    assert seen["env"]["OBSERVABLE_TASKS_BACKEND"] == REDIS_URL
    assert seen["env"]["DEMO_NO_WORKER"] == "1"
    # --help names the variable, never its value (it may hold a password).
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "s3cret" not in text
    assert "$OBSERVABLE_TASKS_BACKEND" in text


def test_bad_backend_and_no_worker_without_redis_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(SystemExit) as refused:
        _run_demo(monkeypatch, ["demo", "--no-worker"])
    assert "--no-worker needs a Redis backend" in str(refused.value)
    with pytest.raises(SystemExit) as refused:
        _run_demo(monkeypatch, ["demo", "--backend", "memory", "--no-worker"])
    assert "--no-worker needs a Redis backend" in str(refused.value)
    with pytest.raises(SystemExit) as refused:
        _run_demo(monkeypatch, ["demo", "--backend", "http://user:s3cret@host:6379/0"])
    message = str(refused.value)
    assert "must be 'memory' or a Redis URL" in message
    assert "s3cret" not in message


def test_several_workers_on_the_memory_backend_warn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_env(monkeypatch)
    _run_demo(monkeypatch, ["demo", "--workers", "2"])
    assert "each process has its own tasks" in capsys.readouterr().err
    _clean_env(monkeypatch)
    _run_demo(monkeypatch, ["demo", "--workers", "2", "--backend", REDIS_URL])
    assert "each process has its own tasks" not in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_json_logs_make_a_pure_json_lines_stdout(tmp_path: Path, workers: int) -> None:
    env = {
        "LOG_FORMAT": "json",
        "DEMO_TIME_SCALE": "0.01",
        "OTEL_TRACES_EXPORTER": "none",
        "DEMO_DATA_DIR": None,
        "PROMETHEUS_MULTIPROC_DIR": None,
        "DEMO_DEBUG": None,
    }
    with (
        serve(
            ["demo", "--workers", str(workers)],
            log_dir=tmp_path,
            env=env,
            uvicorn=False,
            startup_timeout=60,
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        ids = []
        for path in ("/process-di", "/process-with-deps", "/process", "/process-di"):
            response = client.post(path, json={"via": path})
            assert response.status_code == 200, response.text
            ids.append(response.json()["task_id"])
        folders = set()
        for _ in range(6):  # spread over the workers
            response = client.post("/process-file", json={"file_path": "sample.txt"})
            ids.append(response.json()["task_id"])
        assert client.get("/status/unknown").status_code == 404
        assert client.post("/simulate", json={"outcome": "nope"}).status_code == 400
        assert client.post("/process", content=b"[" * 5000 + b"]" * 5000).status_code == 400
        for task_id in ids:
            final = poll_task(client, task_id)
            assert final["status"] == "COMPLETED", final
            if "file_path" in (final["result"] or {}):
                folders.add(Path(final["result"]["file_path"]).parent)
        assert len(folders) == 1  # every worker reads the same private folder
        (folder,) = folders
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert server.returncode == 0, server.stderr()
    assert not folder.exists()  # the CLI made it, the CLI removed it

    lines = [line for line in server.stdout().splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, not only those that look like JSON
        assert isinstance(record, dict)
        records.append(record)
    access = [r["event"] for r in records if r.get("logger") == "uvicorn.access"]
    assert any("POST /process-di" in event for event in access), access
    assert sum("POST /process-di" in event for event in access) == 2  # once each, no duplicates
    assert any(r.get("logger") == "uvicorn.error" for r in records)
    assert any(r.get("event") == "task.completed" for r in records)
    # Nexios prints "Resolving dependency:" on every resolution: with JSON logs, to stderr.
    assert "Resolving dependency" not in server.stdout()


def test_the_readme_lists_every_demo_endpoint(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Demo endpoints", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    app = demo.create_app(data_dir=tmp_path)
    for route in app.get_all_routes():
        methods = {m.upper() for m in route.methods} - {"HEAD"}
        if route.raw_path == "/redoc":
            assert "`/redoc`" in section
            continue
        method = "GET" if "GET" in methods else sorted(methods)[0]
        listed = [row for row in rows if row.startswith(f"| `{method} {route.raw_path}`")]
        assert len(listed) == 1, f"{method} {route.raw_path} is not listed once in the README"


CAPTURE_SCRIPT = """
import logging, logging.config
import uvicorn.config
logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # uvicorn's plain-text handlers
import nexios  # noqa: F401 - its logger gets its own stderr handler and propagates
from observable_tasks.telemetry import configure_logging
from observable_tasks.telemetry.logs import capture_stdlib_logging
configure_logging(json=True)
capture_stdlib_logging()
capture_stdlib_logging("INFO")  # again: still one handler
logging.getLogger("nexios").error("from nexios")
logging.getLogger("nexios").debug("nexios debug, below the level")
logging.getLogger("uvicorn.error").info("from uvicorn")
logging.getLogger("uvicorn.access").info('%s - "%s" %d', "127.0.0.1:1", "GET / HTTP/1.1", 200)
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("app").exception("it failed")
"""


def test_capture_stdlib_logging_one_json_line_per_record(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    by_event = {r["event"]: r for r in records}
    assert [r["event"] for r in records] == [
        "from nexios",
        "from uvicorn",
        '127.0.0.1:1 - "GET / HTTP/1.1" 200',
        "it failed",
    ]
    assert by_event["from nexios"]["logger"] == "nexios"
    assert by_event["from nexios"]["level"] == "error"
    assert by_event["from uvicorn"]["logger"] == "uvicorn.error"
    assert "timestamp" in by_event["from uvicorn"]
    assert "ZeroDivisionError" in json.dumps(by_event["it failed"])
    for message in ("from nexios", "from uvicorn", "GET /", "it failed"):
        assert message not in done.stderr
