"""End to end: the demo app behind a real uvicorn server on loopback, driven with httpx."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LiveServer, free_port, poll_task, wait_until

from observable_tasks import TaskConfig
from observable_tasks.demo import create_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-data")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[LiveServer]:
    config = TaskConfig(max_concurrent_tasks=50, default_timeout=300, shutdown_timeout=1)
    app = create_app(config, time_scale=0.01, data_dir=data_dir)
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def start(client: httpx.Client, path: str, body: Any = None) -> str:
    response = client.post(path, json=body if body is not None else {})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


# -- Basic usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/process", {}), ("/process-di", {}), ("/process-with-deps", {"via": "TaskDependency"})],
)
def test_process_endpoints_run_a_task_to_completion(
    client: httpx.Client, path: str, extra: dict[str, str]
) -> None:
    task_id = start(client, path, {"user": 7})
    final = poll_task(client, task_id)
    assert final == {
        "task_id": task_id,
        "status": "COMPLETED",
        "result": {"status": "completed", "data": {"user": 7}, **extra},
        "error": None,
    }


def test_status_of_an_unknown_task_is_a_real_404(client: httpx.Client) -> None:
    for path in ("/status/nope", "/tasks/nope/progress", "/task-result/nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "Task not found"}
    assert client.get("/no-such-route").status_code == 404


# -- Task management -----------------------------------------------------------------------------


def test_list_tasks_with_status_filter(client: httpx.Client) -> None:
    done = start(client, "/process", {"n": 1})
    poll_task(client, done)
    running = start(client, "/simulate", {"outcome": "slow", "seconds": 30})
    try:
        listing = client.get("/tasks").json()
        by_id = {t["id"]: t for t in listing}
        assert by_id[done]["status"] == "COMPLETED"
        assert by_id[done]["name"] == "data_processing"
        assert by_id[done]["completed_at"] is not None
        assert by_id[running]["status"] in ("PENDING", "RUNNING")
        assert by_id[running]["completed_at"] is None

        completed = client.get("/tasks", params={"status": "COMPLETED"}).json()
        assert done in {t["id"] for t in completed}
        assert running not in {t["id"] for t in completed}
        assert {t["status"] for t in completed} == {"COMPLETED"}
        assert client.get("/tasks", params={"status": "bogus"}).status_code == 400
    finally:
        client.post(f"/tasks/{running}/cancel")


def test_cancel_a_running_task(client: httpx.Client) -> None:
    task_id = start(client, "/simulate", {"outcome": "slow", "seconds": 30})
    wait_until(
        lambda: client.get(f"/status/{task_id}").json()["status"] == "RUNNING",
        message="the task to run",
    )
    assert client.post(f"/tasks/{task_id}/cancel").json() == {"success": True, "task_id": task_id}
    assert client.get(f"/status/{task_id}").json()["status"] == "CANCELLED"
    assert client.post(f"/tasks/{task_id}/cancel").json()["success"] is False
    assert client.post("/tasks/nope/cancel").json() == {"success": False, "task_id": "nope"}


def test_progress_and_result_of_a_simulated_task(client: httpx.Client) -> None:
    task_id = start(client, "/simulate", {"outcome": "complete", "seconds": 0.08})
    poll_task(client, task_id)
    progress = client.get(f"/tasks/{task_id}/progress").json()
    assert progress == {"task_id": task_id, "progress": 100.0, "status": "COMPLETED"}
    result = client.get(f"/task-result/{task_id}")
    assert result.status_code == 200
    assert result.json() == {
        "result": {"outcome": "complete", "seconds": 0.08},
        "status": "COMPLETED",
    }


@pytest.mark.parametrize(
    ("outcome", "status", "message", "code"),
    [
        ("fail", "FAILED", "simulated failure", None),
        ("task_error", "FAILED", "simulated task error", "SIMULATED"),
        ("timeout", "TIMEOUT", "task exceeded its timeout of 0.05s", None),
    ],
)
def test_failed_tasks_answer_500_on_task_result(
    client: httpx.Client, outcome: str, status: str, message: str, code: str | None
) -> None:
    body: dict[str, Any] = {"outcome": outcome, "seconds": 0.1}
    if outcome == "timeout":
        body["timeout"] = 0.05
    task_id = start(client, "/simulate", body)
    assert poll_task(client, task_id)["status"] == status
    response = client.get(f"/task-result/{task_id}")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Task failed"
    assert body["message"] == message
    assert body["code"] == code


def test_simulate_retries_a_task_that_fails_its_first_attempts(client: httpx.Client) -> None:
    body = {"outcome": "complete", "seconds": 0.01, "fail_attempts": 2, "backoff": 0.02}
    task_id = start(client, "/simulate", body)
    assert poll_task(client, task_id)["status"] == "COMPLETED"
    view = client.get(f"/console/api/tasks/{task_id}").json()
    assert (view["attempts"], view["max_attempts"]) == (3, 3)  # default: fail_attempts + 1
    gives_up = start(client, "/simulate", {**body, "max_attempts": 2})
    final = poll_task(client, gives_up)
    assert final["status"] == "FAILED"
    assert final["error"] == "simulated failure of attempt 2"


def test_simulate_with_a_delay_and_a_key(client: httpx.Client) -> None:
    body = {"outcome": "complete", "seconds": 0.01, "delay": 60, "key": "nightly-report"}
    task_id = start(client, "/simulate", body)
    view = client.get(f"/console/api/tasks/{task_id}").json()
    assert view["status"] == "PENDING"
    assert view["next_attempt_at"] is not None
    assert view["key"] == "nightly-report"
    assert start(client, "/simulate", body) == task_id  # the key holds it: the same task
    page = client.get("/console/").text  # the page's token (and its cookie) allow a cancel
    match = re.search(r'name="console-token" content="([^"]+)"', page)
    assert match is not None
    cancel = client.post(
        f"/console/api/tasks/{task_id}/cancel",
        headers={"X-Console-Token": match.group(1), "Origin": str(client.base_url).rstrip("/")},
    )
    assert cancel.json()["cancelled"] is True


def test_simulate_rejects_unknown_outcomes(client: httpx.Client) -> None:
    response = client.post("/simulate", json={"outcome": "explode"})
    assert response.status_code == 400
    assert "explode" in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"seconds": "soon"}', "seconds must be a number"),
        (b'{"seconds": -1}', "must not be negative"),
        (b'{"timeout": 0}', "timeout must be more than 0"),
        (b'{"seconds": 1e400}', "numbers must be finite"),
        (b'{"fail_attempts": -1}', "fail_attempts must be a whole number from 0 to 10"),
        (b'{"fail_attempts": 1.5}', "fail_attempts must be a whole number"),
        (b'{"max_attempts": 0}', "max_attempts must be a whole number from 1 to 10"),
        (b'{"max_attempts": true}', "max_attempts must be a whole number"),
        (b'{"backoff": "soon"}', "backoff must be a number of seconds"),
        (b'{"delay": -2}', "delay must not be negative"),
        (b'{"delay": 1e9}', "delay must be at most 86400 seconds"),
        (b'{"key": ""}', "key must be a string of 1 to 200 characters"),
        (b'{"key": 7}', "key must be a string"),
    ],
)
def test_bad_bodies_get_a_400_that_says_why(
    client: httpx.Client, content: bytes, message: str
) -> None:
    before = {t["id"] for t in client.get("/tasks").json()}
    response = client.post(
        "/simulate", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert {t["id"] for t in client.get("/tasks").json()} == before  # nothing was created


@pytest.mark.parametrize("path", ["/process", "/process-di", "/process-with-deps"])
@pytest.mark.parametrize("content", [b"", b"{bad"])
def test_the_page_handlers_answer_400_to_a_body_that_is_not_json(
    client: httpx.Client, path: str, content: bytes
) -> None:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "the request body is not valid JSON"}


def test_an_empty_body_means_the_defaults(client: httpx.Client) -> None:
    response = client.post("/simulate")  # no body at all
    assert response.status_code == 200
    assert poll_task(client, response.json()["task_id"])["status"] == "COMPLETED"


# -- Custom errors -------------------------------------------------------------------------------


def test_validate_in_a_task_and_in_the_handler(client: httpx.Client) -> None:
    bad = start(client, "/validate", {"valid": False})
    good = start(client, "/validate", {"valid": True})
    assert poll_task(client, bad)["status"] == "FAILED"
    assert poll_task(client, good)["result"] == {"processed": {"valid": True}}
    failed = client.get(f"/task-result/{bad}")
    assert failed.status_code == 500
    assert failed.json()["code"] == "INVALID_DATA"
    assert failed.json()["message"] == "Data validation failed"

    now_bad = client.post("/validate-now", json={"valid": False, "x": 1})
    assert now_bad.status_code == 400
    assert now_bad.json() == {
        "error": "INVALID_DATA",
        "message": "Data validation failed",
        "details": {"received": {"valid": False, "x": 1}},
    }
    now_good = client.post("/validate-now", json={"valid": True})
    assert now_good.status_code == 200
    assert now_good.json() == {"processed": {"valid": True}}


# -- File processing -----------------------------------------------------------------------------


def test_process_file_reports_progress_to_100(client: httpx.Client, data_dir: Path) -> None:
    content = b"0123456789abcdef" * 320  # 5 KiB: five chunks
    (data_dir / "input.bin").write_bytes(content)
    response = client.post("/process-file", json={"file_path": "input.bin"})
    assert response.status_code == 200
    assert response.json()["file_path"] == "input.bin"
    task_id = response.json()["task_id"]

    seen: list[float] = []

    def finished() -> bool:
        body = client.get(f"/tasks/{task_id}/progress").json()
        seen.append(body["progress"])
        return body["status"] in ("COMPLETED", "FAILED")

    wait_until(finished, message="file processing")
    assert seen == sorted(seen)  # progress never goes back
    assert seen[-1] == 100.0
    result = client.get(f"/task-result/{task_id}").json()["result"]
    assert result["file_size"] == len(content)
    assert result["processed_bytes"] == len(content)
    assert result["status"] == "completed"  # the page's own result dict, not TaskStatus
    listing = {t["id"]: t for t in client.get("/tasks").json()}
    assert listing[task_id]["name"] == "process_file_input.bin"


def test_process_file_errors(client: httpx.Client) -> None:
    assert client.post("/process-file", json={}).status_code == 400
    outside = client.post("/process-file", json={"file_path": "../../etc/passwd"})
    assert outside.status_code == 400
    assert "inside" in outside.json()["error"]

    missing = client.post("/process-file", json={"file_path": "missing.txt"}).json()["task_id"]
    final = poll_task(client, missing)
    assert final["status"] == "FAILED"
    assert "File not found" in final["error"]


# -- Bulk e-mail ---------------------------------------------------------------------------------


def test_send_bulk_emails(client: httpx.Client) -> None:
    recipients = ["a@example.com", "not-an-address", "c@example.com", "d@example.com"]
    response = client.post(
        "/send-bulk-emails", json={"recipients": recipients, "subject": "Hi", "body": "Hello"}
    )
    assert response.status_code == 200
    assert response.json()["recipient_count"] == 4
    task_id = response.json()["task_id"]
    final = poll_task(client, task_id)
    assert final["status"] == "COMPLETED"
    assert final["result"] == {
        "total_recipients": 4,
        "sent_count": 3,
        "failed_count": 1,
        "status": "completed",
    }
    assert client.get(f"/tasks/{task_id}/progress").json()["progress"] == 100.0

    incomplete = client.post("/send-bulk-emails", json={"recipients": ["a@b.c"]})
    assert incomplete.status_code == 400


# -- Data export ---------------------------------------------------------------------------------


def test_export_data_csv_and_json(client: httpx.Client, data_dir: Path) -> None:
    csv_id = start(client, "/export-data", {"format": "csv", "filters": {"limit": 250}})
    json_id = start(client, "/export-data", {"format": "json", "filters": {"limit": 30}})

    csv_result = poll_task(client, csv_id)["result"]
    assert csv_result["format"] == "csv"
    assert csv_result["total_records"] == 250
    with open(data_dir / "exports" / csv_result["filename"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 250
    assert rows[0] == {"id": "0", "name": "Record 0"}

    json_result = poll_task(client, json_id)["result"]
    assert json_result["filename"].endswith(".json")
    exported = json.loads((data_dir / "exports" / json_result["filename"]).read_text())
    assert exported[-1] == {"id": 29, "name": "Record 29"}
    assert len(exported) == 30

    for task_id in (csv_id, json_id):
        assert client.get(f"/tasks/{task_id}/progress").json()["progress"] == 100.0


def test_export_data_default_format_is_csv(client: httpx.Client) -> None:
    response = client.post("/export-data", json={"filters": {"limit": 3}})
    assert response.json()["format"] == "csv"
    assert poll_task(client, response.json()["task_id"])["result"]["total_records"] == 3


def test_export_data_unsupported_format_fails_the_task(client: httpx.Client) -> None:
    task_id = start(client, "/export-data", {"format": "xml", "filters": {"limit": 5}})
    final = poll_task(client, task_id)
    assert final["status"] == "FAILED"
    assert final["error"] == "Unsupported format: xml"
    assert client.get(f"/task-result/{task_id}").status_code == 500


# -- The console script --------------------------------------------------------------------------


def test_cli_demo_serves_the_app(tmp_path: Path) -> None:
    port = free_port()
    script = shutil.which("observable-tasks")
    command = [script] if script else [sys.executable, "-m", "observable_tasks.cli"]
    env = {
        **os.environ,
        "DEMO_TIME_SCALE": "0.01",
        "DEMO_DATA_DIR": str(tmp_path),
        "OTEL_TRACES_EXPORTER": "none",
    }
    proc = subprocess.Popen(
        [*command, "demo", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the demo exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                httpx.get(f"{base}/tasks", timeout=1)
            except httpx.TransportError:
                return False
            return True

        wait_until(answers, timeout=30, message="the demo to listen")
        with httpx.Client(base_url=base, timeout=10) as http:
            task_id = start(http, "/process", {"cli": True})
            final = poll_task(http, task_id)
            assert final["result"] == {"status": "completed", "data": {"cli": True}}
            assert http.get("/status/unknown").status_code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
