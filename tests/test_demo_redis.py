"""The demo across processes on the Redis backend (issue 10), with real processes only.

A real redis-server (ours, on a free port), ``observable-tasks demo --workers 2 --backend URL``
(uvicorn, two worker processes), every request on a fresh connection. On the memory backend the
issue measured 44% of status lookups answering 404, ``/tasks`` alternating between two half lists
and cross-process cancels failing. Here:

- 14 tasks from every task endpoint of the page, then 280 status lookups round-robin over them
  (plus progress and result lookups): no lookup of an existing task answers 404;
- ``/tasks`` lists all 14 whichever process answers (also filtered by status);
- a running task is cancelled by whichever process gets the request and ends CANCELLED, also
  when that is not the process that runs it.

That both processes answered is proven by the request spans each process exports (OTel's process
resource detector gives every span the ``process.pid`` of its process); the pid of the process
that ran a task is on the task's CONSUMER span. The same checks run with web-only processes
(``--no-worker``) and one dedicated worker process: then every task runs in the worker.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from helpers import wait_until
from otlp_receiver import OTLPReceiver, ReceivedSpan
from redis_server import redis_server_available
from server_process import REPO, serve

from observable_tasks import cli
from observable_tasks.backends.redis import Keys
from observable_tasks.telemetry.names import ATTR

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed"),
    pytest.mark.timeout(240),
]

TASKS = 14
LOOKUPS = 280
TIME_SCALE = 0.5  # the page's delays halved: lookups see tasks pending, running and finished
SAMPLE = b"observable-tasks demo file\n" * 600  # 16 KiB: 16 chunks, a progress update each

# (path, body, final status): 14 tasks, every task endpoint of the page.
CREATE: list[tuple[str, dict[str, Any], str]] = [
    ("/process", {"user": 1}, "COMPLETED"),
    ("/process-di", {"user": 2}, "COMPLETED"),
    ("/process-with-deps", {"user": 3}, "COMPLETED"),
    ("/validate", {"valid": True}, "COMPLETED"),
    ("/validate", {"valid": False}, "FAILED"),
    ("/process-file", {"file_path": "sample.txt"}, "COMPLETED"),
    (
        "/send-bulk-emails",
        {"recipients": ["a@example.com", "nope", "c@example.com"], "subject": "s", "body": "b"},
        "COMPLETED",
    ),
    ("/export-data", {"format": "csv", "filters": {"limit": 50}}, "COMPLETED"),
    ("/export-data", {"format": "json", "filters": {"limit": 5}}, "COMPLETED"),
    ("/simulate", {"outcome": "complete", "seconds": 1.5}, "COMPLETED"),
    ("/simulate", {"outcome": "fail", "seconds": 0.5}, "FAILED"),
    ("/simulate", {"outcome": "task_error", "seconds": 0.5}, "FAILED"),
    ("/simulate", {"outcome": "timeout", "seconds": 3, "timeout": 0.5}, "TIMEOUT"),
    ("/simulate", {"outcome": "slow", "seconds": 2.5}, "COMPLETED"),
]
assert len(CREATE) == TASKS


def fresh(url: str) -> httpx.Client:
    """A client whose every request is a new TCP connection (accepted by either process)."""
    return httpx.Client(base_url=url, timeout=15.0, headers={"Connection": "close"})


def request(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with fresh(url) as client:
        return client.request(method, path, **kwargs)


def pid(span: ReceivedSpan) -> int:
    return int(span.resource["process.pid"])


def _path(span: ReceivedSpan) -> str:
    target = str(span.attributes.get("http.target") or span.attributes.get("url.path") or "")
    return target.split("?", 1)[0]


def request_spans(receiver: OTLPReceiver, path: str) -> list[ReceivedSpan]:
    """SERVER spans of the requests whose URL path is ``path`` (or starts with it, ``.../``)."""

    def matches(span: ReceivedSpan) -> bool:
        if span.kind != "SERVER":
            return False
        target = _path(span)
        return target == path or (path.endswith("/") and target.startswith(path))

    return [s for s in receiver.spans if matches(s)]


# -- processes -------------------------------------------------------------------------------


@pytest.fixture
def redis_url(fresh_redis_url: str) -> str:
    return fresh_redis_url  # a redis-server of the test's own: these tests count what it holds


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rec:
        yield rec


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "demo-data"
    folder.mkdir(mode=0o700)
    (folder / "sample.txt").write_bytes(SAMPLE)
    return folder


def demo_env(receiver: OTLPReceiver, data_dir: Path) -> dict[str, str | None]:
    return {
        "LOG_FORMAT": "json",
        "DEMO_TIME_SCALE": str(TIME_SCALE),
        # Web processes and worker read the same folder (one machine here).
        "DEMO_DATA_DIR": str(data_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",  # process.pid on every span
        "OTEL_TRACES_EXPORTER": None,
        "OBSERVABLE_TASKS_BACKEND": None,  # given with --backend
        "DEMO_NO_WORKER": None,
        "PROMETHEUS_MULTIPROC_DIR": None,
        "DEMO_DEBUG": None,
    }


def has_worker_command() -> bool:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "worker" in sub.choices


# Until ``observable-tasks worker`` exists: the same thing in a few lines (a manager over the
# Redis backend that may run the demo's functions, instrumented, alive until SIGTERM).
WORKER_SCRIPT = """
import asyncio, signal, sys
import observable_tasks.demo  # noqa: F401 - the functions this worker runs
from observable_tasks import TaskConfig, TaskManager
from observable_tasks.backends.redis import RedisBackend
from observable_tasks.telemetry import configure_logging, configure_tracing, instrument

async def main() -> None:
    configure_logging(json=True)
    provider = configure_tracing("observable-tasks-worker")
    backend = RedisBackend(sys.argv[1], allow=["observable_tasks.demo"])
    manager = TaskManager(TaskConfig(max_concurrent_tasks=50, shutdown_timeout=2), backend=backend)
    parts = instrument(manager, tracer_provider=provider, metrics=False)
    await manager.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await manager.shutdown()
    parts.close()
    provider.shutdown()

asyncio.run(main())
"""


@pytest.fixture
def dedicated_worker(
    redis_url: str, receiver: OTLPReceiver, data_dir: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OTEL_SERVICE_NAME": "demo-worker"}
    for key, value in demo_env(receiver, data_dir).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if has_worker_command():
        argv = [sys.executable, "-m", "observable_tasks.cli", "worker", "--backend", redis_url]
        argv += ["--shutdown-timeout", "2", "observable_tasks.demo"]
    else:
        argv = [sys.executable, "-c", WORKER_SCRIPT, redis_url]
    with (tmp_path / "worker.stdout").open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    client = redis.Redis.from_url(redis_url)
    try:
        # Ready once it has announced itself in the queue's registry of live workers.
        wait_until(
            lambda: proc.poll() is None and client.zcard(Keys().workers) >= 1,
            timeout=30,
            message="the dedicated worker to register",
        )
        yield proc
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- the checks ------------------------------------------------------------------------------


def both_processes_serving(url: str, receiver: OTLPReceiver) -> set[int]:
    """Ask ``/tasks`` on fresh connections until request spans come from two processes."""

    def two() -> set[int]:
        assert request(url, "GET", "/tasks").status_code == 200
        pids = {pid(s) for s in request_spans(receiver, "/tasks")}
        return pids if len(pids) >= 2 else set()

    pids: set[int] = wait_until(two, timeout=40, interval=0.05, message="both web processes")
    return pids


def create_tasks(url: str) -> dict[str, str]:
    """The 14 tasks, each created on a fresh connection: task id -> expected final status."""
    expected = {}
    for path, body, status in CREATE:
        response = request(url, "POST", path, json=body)
        assert response.status_code == 200, (path, response.text)
        expected[response.json()["task_id"]] = status
    return expected


def check_lookups(url: str, receiver: OTLPReceiver, expected: dict[str, str]) -> None:
    ids = list(expected)
    seen: collections.Counter[str] = collections.Counter()
    answers: collections.Counter[int] = collections.Counter()
    for i in range(LOOKUPS):
        task_id = ids[i % len(ids)]
        response = request(url, "GET", f"/status/{task_id}")
        answers[response.status_code] += 1
        assert response.status_code == 200, f"lookup {i} of {task_id}: {response.text}"
        body = response.json()
        assert body["task_id"] == task_id
        seen[body["status"]] += 1
    assert answers == {200: LOOKUPS}
    # The lookups saw tasks waiting or running as well as finished ones.
    assert seen["RUNNING"] + seen["PENDING"] > 0, seen

    def finished() -> bool:
        return all(
            request(url, "GET", f"/status/{t}").json()["status"] == s for t, s in expected.items()
        )

    wait_until(finished, timeout=30, interval=0.2, message="every task to end as expected")
    for task_id, status in expected.items():
        progress = request(url, "GET", f"/tasks/{task_id}/progress")
        assert progress.status_code == 200, progress.text
        assert progress.json()["status"] == status
        result = request(url, "GET", f"/task-result/{task_id}")
        assert result.status_code == (200 if status == "COMPLETED" else 500), result.text
    # /process-file reported its progress from the process that ran it, readable from any.
    file_task = list(expected)[5]
    assert request(url, "GET", f"/tasks/{file_task}/progress").json()["progress"] == 100.0
    file_result = request(url, "GET", f"/task-result/{file_task}").json()["result"]
    assert file_result["processed_bytes"] == len(SAMPLE)
    export = request(url, "GET", f"/task-result/{list(expected)[7]}").json()["result"]
    assert export["total_records"] == 50
    failed = request(url, "GET", f"/task-result/{list(expected)[4]}").json()
    assert failed["code"] == "INVALID_DATA"  # a TaskError's code survives the trip

    # Both processes answered the lookups (each exports its own request spans).
    def status_spans() -> list[ReceivedSpan]:
        spans = request_spans(receiver, "/status/")
        return spans if len(spans) >= LOOKUPS else []

    spans: list[ReceivedSpan] = wait_until(status_spans, timeout=15, message="request spans")
    per_process = collections.Counter(pid(s) for s in spans)
    assert len(per_process) == 2, per_process
    # ... and many of them were answered by a process that did not create the task (the
    # task's PRODUCER span is exported by the process that created it): each one of those was
    # a 404 on the memory backend.
    producers = receiver.wait_for_spans(
        kind="PRODUCER", count=len(ids), timeout=15, predicate=lambda s: _task_of(s) in expected
    )
    created_by = {_task_of(s): pid(s) for s in producers}
    cross = sum(1 for s in spans if pid(s) != created_by[_path(s).rsplit("/", 1)[1]])
    assert cross > 0, (per_process, collections.Counter(created_by.values()))


def check_listing(url: str, receiver: OTLPReceiver, expected: dict[str, str]) -> None:
    before = len(request_spans(receiver, "/tasks"))
    for _ in range(10):
        listing = request(url, "GET", "/tasks").json()
        assert {t["id"] for t in listing} == set(expected)
        assert {t["id"]: t["status"] for t in listing} == expected
        completed = request(url, "GET", "/tasks", params={"status": "COMPLETED"}).json()
        assert {t["id"] for t in completed} == {t for t, s in expected.items() if s == "COMPLETED"}
    wait_until(
        lambda: len(request_spans(receiver, "/tasks")) >= before + 20, message="listing spans"
    )
    listing_spans = request_spans(receiver, "/tasks")[before:]
    assert len({pid(s) for s in listing_spans}) == 2, "one process answered every /tasks"


def consumer_span(receiver: OTLPReceiver, task_id: str) -> ReceivedSpan:
    (span,) = receiver.wait_for_spans(
        kind="CONSUMER", count=1, timeout=15, predicate=lambda s: _task_of(s) == task_id
    )
    return span


def _task_of(span: ReceivedSpan) -> Any:
    return span.attributes.get(ATTR.MESSAGE_ID)


def cancel_one(url: str, receiver: OTLPReceiver) -> tuple[int, int]:
    """Cancel a running task: (pid of the process that ran it, pid that answered the cancel)."""
    response = request(url, "POST", "/simulate", json={"outcome": "slow", "seconds": 60})
    task_id = response.json()["task_id"]
    wait_until(
        lambda: request(url, "GET", f"/status/{task_id}").json()["status"] == "RUNNING",
        timeout=15,
        message="the slow task to run",
    )
    started = time.monotonic()
    cancel = request(url, "POST", f"/tasks/{task_id}/cancel")
    took = time.monotonic() - started
    assert cancel.json() == {"success": True, "task_id": task_id}
    assert took < 2.0, f"cancel took {took:.2f}s"  # about 30-60 ms here, HTTP included
    assert request(url, "GET", f"/status/{task_id}").json()["status"] == "CANCELLED"
    # Again, from any process: nothing is left to cancel.
    assert request(url, "POST", f"/tasks/{task_id}/cancel").json()["success"] is False
    ran_in = pid(consumer_span(receiver, task_id))
    path = f"/tasks/{task_id}/cancel"
    answers = wait_until(
        lambda: request_spans(receiver, path), timeout=15, message="the cancel's request span"
    )
    return ran_in, pid(answers[0])


def check_cancels(url: str, receiver: OTLPReceiver, *, tries: int = 12) -> list[tuple[int, int]]:
    """Cancel running tasks until one cancel landed on a process that does not run the task
    (at least three): (pid that ran it, pid that answered the cancel) per task."""
    pairs: list[tuple[int, int]] = []
    for _ in range(tries):
        pairs.append(cancel_one(url, receiver))
        if len(pairs) >= 3 and any(ran != answered for ran, answered in pairs):
            break
    assert any(ran != answered for ran, answered in pairs), pairs
    return pairs


# -- the tests -------------------------------------------------------------------------------


def test_two_web_processes_with_embedded_workers_share_every_task(
    redis_url: str, receiver: OTLPReceiver, data_dir: Path, tmp_path: Path
) -> None:
    args = ["demo", "--workers", "2", "--backend", redis_url, "--log-level", "warning"]
    with serve(
        args,
        log_dir=tmp_path,
        env=demo_env(receiver, data_dir),
        name="demo",
        uvicorn=False,
        startup_timeout=60,
    ) as server:
        web = both_processes_serving(server.url, receiver)
        expected = create_tasks(server.url)
        check_lookups(server.url, receiver, expected)
        check_listing(server.url, receiver, expected)
        # Tasks ran in the web processes themselves (embedded workers), in both of them.
        ran = {pid(consumer_span(receiver, task_id)) for task_id in expected}
        assert ran <= web
        pairs = check_cancels(server.url, receiver)
        assert {ran for ran, _ in pairs} <= web
    assert server.returncode == 0, server.stderr()[-3000:]


def test_web_only_processes_and_a_dedicated_worker(
    redis_url: str,
    receiver: OTLPReceiver,
    data_dir: Path,
    tmp_path: Path,
    dedicated_worker: subprocess.Popen[bytes],
) -> None:
    # As docker-compose.yml runs the app: the backend from OBSERVABLE_TASKS_BACKEND.
    args = ["demo", "--workers", "2", "--no-worker"]
    with serve(
        [*args, "--log-level", "warning"],
        log_dir=tmp_path,
        env={**demo_env(receiver, data_dir), "OBSERVABLE_TASKS_BACKEND": redis_url},
        name="demo",
        uvicorn=False,
        startup_timeout=60,
    ) as server:
        web = both_processes_serving(server.url, receiver)
        expected = create_tasks(server.url)
        check_lookups(server.url, receiver, expected)
        check_listing(server.url, receiver, expected)
        # Every task ran in the dedicated worker, none in a web process.
        ran = {pid(consumer_span(receiver, task_id)) for task_id in expected}
        assert ran == {dedicated_worker.pid}
        pairs = check_cancels(server.url, receiver, tries=3)
        assert pairs == [(dedicated_worker.pid, answered) for _, answered in pairs]
        assert {answered for _, answered in pairs} <= web
        # Only the worker is registered as a live worker: the web processes run no tasks.
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.zcard(Keys().workers) == 1
        finally:
            client.close()
    assert server.returncode == 0, server.stderr()[-3000:]
    assert dedicated_worker.poll() is None  # a web process stopping leaves the worker alone
