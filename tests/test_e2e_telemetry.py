"""End to end: real uvicorn subprocesses export spans over OTLP/gRPC to a real receiver, serve
``/metrics`` over HTTP and write JSON logs to stdout; the three must tell one consistent story.

- ``tests/apps/traced_app.py`` (``configure_logging(json=True)``, ``configure_tracing()``,
  ``setup_tasks(app, trace_requests=True)``, a task that opens its own span and logs): one
  request gives ONE trace request -> ``send`` -> ``process`` -> user span, and the logs of that
  task carry its id and that trace id.
- The demo (``uvicorn observable_tasks.demo:app``, configured lazily from the environment):
  failed, timed-out and cancelled tasks end with the right span status, attributes, metrics and
  log events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import poll_task, wait_until
from otlp_receiver import OTLPReceiver, ReceivedSpan
from server_process import ServerProcess, metric_value, scrape_metrics, serve

from observable_tasks.telemetry import names
from observable_tasks.telemetry.names import ATTR

pytestmark = pytest.mark.e2e

TRACED_SERVICE = "e2e-traced-app"
DEMO_SERVICE = "e2e-demo"
TRACED_FUNCTION = "apps.traced_app.traced_work"
DEMO_FUNCTION = "observable_tasks.demo.simulated_work"
# Exported series names, from the names module (default namespace "observable").
CREATED = names.metric_name(names.TASKS_CREATED) + "_total"
FINISHED = names.metric_name(names.TASKS_FINISHED) + "_total"
ERRORS = names.metric_name(names.TASK_ERRORS) + "_total"
RUNNING = names.metric_name(names.TASKS_RUNNING)
DURATION_COUNT = names.metric_name(names.TASK_DURATION) + "_count"
assert CREATED == "observable_tasks_created_total"


def otel_env(receiver: OTLPReceiver, service: str) -> dict[str, str | None]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "LOG_FORMAT": "json",
        # Unset: configure_tracing must pick OTLP because an endpoint is set.
        "OTEL_TRACES_EXPORTER": None,
        "OTEL_RESOURCE_ATTRIBUTES": None,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rec:
        yield rec


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="module")
def traced_server(receiver: OTLPReceiver, logs_dir: Path) -> Iterator[ServerProcess]:
    with serve(
        ["apps.traced_app:app", "--app-dir", "tests"],
        env=otel_env(receiver, TRACED_SERVICE),
        log_dir=logs_dir,
        name="traced",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def demo_server(receiver: OTLPReceiver, logs_dir: Path) -> Iterator[ServerProcess]:
    with serve(
        ["observable_tasks.demo:app"],
        env=otel_env(receiver, DEMO_SERVICE),
        log_dir=logs_dir,
        name="demo",
    ) as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def _task_spans(receiver: OTLPReceiver, task_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
    """The PRODUCER and CONSUMER spans of one task (waiting, bounded, until both arrived)."""
    [send] = receiver.wait_for_spans(kind="PRODUCER", attributes={ATTR.MESSAGE_ID: task_id})
    [process] = receiver.wait_for_spans(kind="CONSUMER", attributes={ATTR.MESSAGE_ID: task_id})
    return send, process


def _task_logs(server: ServerProcess, task_id: str, final_event: str) -> list[dict[str, Any]]:
    """JSON log lines carrying ``task_id``, once ``final_event`` for it has been written."""

    def lines() -> list[dict[str, Any]]:
        found = [line for line in server.json_lines() if line.get("task_id") == task_id]
        return found if any(line["event"] == final_event for line in found) else []

    return wait_until(lines, timeout=10, message=f"log event {final_event} of {task_id}")


def _by_event(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    events: dict[str, dict[str, Any]] = {}
    for line in lines:
        assert line["event"] not in events or line["event"] == "task.progress", line
        events[line["event"]] = line
    return events


def test_request_send_process_and_user_span_form_one_trace(
    traced_server: ServerProcess, receiver: OTLPReceiver, client: httpx.Client
) -> None:
    metrics_url = traced_server.url + "/metrics"
    before = scrape_metrics(client, metrics_url)

    response = client.post(traced_server.url + "/tasks", json={"outcome": "complete"})
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    final = poll_task(client, task_id, path=traced_server.url + "/tasks/{task_id}")
    assert final["status"] == "COMPLETED"

    # -- spans: request (SERVER) -> send (PRODUCER) -> process (CONSUMER) -> the user's span
    send, process = _task_spans(receiver, task_id)
    [request] = receiver.wait_for_spans(span_id=send.parent_span_id)
    [user] = receiver.wait_for_spans(name="user.step", parent_span_id=process.span_id)

    assert request.kind == "SERVER"
    assert request.name == "POST /tasks"
    assert request.parent_span_id == ""  # the root: the client sent no trace context
    assert request.attributes["http.status_code"] == 200
    assert send.name == f"send {TRACED_FUNCTION}"
    assert process.name == f"process {TRACED_FUNCTION}"
    assert process.parent_span_id == send.span_id
    assert user.kind == "INTERNAL"
    assert user.attributes == {"app.outcome": "complete"}
    trace_id = request.trace_id
    assert {s.trace_id for s in (request, send, process, user)} == {trace_id}
    assert request.attributes["http.route"] == "/tasks"
    # ONE trace: every span of this task is in it, and it holds nothing but these four (no
    # "http receive"/"http send" children of the request span).
    assert {s.span_id for s in receiver.find(attributes={ATTR.MESSAGE_ID: task_id})} == {
        send.span_id,
        process.span_id,
    }
    # The status polls (GET /tasks/<id>) are their own traces, named by the route template.
    polls = receiver.wait_for_spans(name="GET /tasks/{task_id}", kind="SERVER")
    assert all(p.attributes["http.route"] == "/tasks/{task_id}" for p in polls)
    assert not receiver.find(predicate=lambda s: task_id in s.name)
    in_trace = receiver.find(trace_id=trace_id)
    assert sorted(s.span_id for s in in_trace) == sorted(
        s.span_id for s in (request, send, process, user)
    )
    assert not receiver.find(predicate=lambda s: s.name.endswith((" http receive", " http send")))
    assert all(s.resource["service.name"] == TRACED_SERVICE for s in in_trace)
    assert {s.scope for s in (send, process)} == {"observable_tasks"}

    for span, operation in ((send, "send"), (process, "process")):
        assert span.attributes[ATTR.MESSAGE_ID] == task_id
        assert span.attributes[ATTR.CODE_FUNCTION] == TRACED_FUNCTION
        assert span.attributes[ATTR.MESSAGING_SYSTEM] == "observable_tasks"
        assert span.attributes[ATTR.MESSAGING_OPERATION_TYPE] == operation
        assert span.attributes[ATTR.TASK_NAME] == "traced"
    assert process.attributes[ATTR.TASK_STATUS] == "completed"
    assert process.attributes[ATTR.TASK_QUEUE_WAIT] >= 0
    assert ATTR.ERROR_TYPE not in process.attributes
    assert process.status_code == "UNSET"  # success leaves the status unset
    assert send.start_time_unix_nano <= process.start_time_unix_nano
    assert process.start_time_unix_nano <= user.start_time_unix_nano
    assert user.end_time_unix_nano <= process.end_time_unix_nano

    # -- metrics, scraped over HTTP: the counters moved for this function
    after = scrape_metrics(client, metrics_url)
    for name, labels, delta in (
        (CREATED, {}, 1),
        (FINISHED, {"status": "completed"}, 1),
        (FINISHED, {"status": "failed"}, 0),
        (DURATION_COUNT, {"status": "completed"}, 1),
    ):
        moved = metric_value(after, name, task=TRACED_FUNCTION, **labels) - metric_value(
            before, name, task=TRACED_FUNCTION, **labels
        )
        assert moved == delta, (name, labels)
    assert metric_value(after, RUNNING, task=TRACED_FUNCTION) == 0

    # -- logs: every line of the task carries its id and this trace id
    lines = _task_logs(traced_server, task_id, "task.completed")
    # Arrival and outcome at INFO (task.started is DEBUG by default).
    assert [line["event"] for line in lines] == [
        "task.created",
        "user.inside_task",
        "task.completed",
    ]
    events = _by_event(lines)
    assert all(line["trace_id"] == trace_id for line in lines)
    assert all(line["task_name"] == "traced" for line in lines)
    assert events["task.created"]["span_id"] == send.span_id  # names the task's send span
    assert events["task.completed"]["span_id"] == process.span_id
    assert events["task.completed"]["status"] == "completed"
    assert events["task.completed"]["duration_s"] >= 0
    assert events["task.completed"]["queue_wait_s"] >= 0
    # The user's own line: task id bound for it, span id of the span current at the call.
    user_line = events["user.inside_task"]
    assert user_line["seen_task_id"] == task_id
    assert user_line["span_id"] == user.span_id
    assert user_line["level"] == "info"
    # The request's own line: the request's span, and no task binding leaked into it.
    [request_line] = [
        line
        for line in traced_server.json_lines()
        if line["event"] == "app.task_requested" and line.get("created_task") == task_id
    ]
    assert request_line["trace_id"] == trace_id
    assert request_line["span_id"] == request.span_id
    assert "task_id" not in request_line
    assert "task_name" not in request_line


def test_task_spans_continue_the_callers_trace(
    traced_server: ServerProcess, receiver: OTLPReceiver, client: httpx.Client
) -> None:
    """A client that sends W3C trace context gets the task's spans in its own trace."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = client.post(
        traced_server.url + "/tasks",
        json={"outcome": "complete"},
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
    )
    task_id = response.json()["task_id"]
    send, process = _task_spans(receiver, task_id)
    [request] = receiver.wait_for_spans(span_id=send.parent_span_id)
    [user] = receiver.wait_for_spans(name="user.step", parent_span_id=process.span_id)
    assert request.parent_span_id == caller_span
    assert process.parent_span_id == send.span_id
    assert {s.trace_id for s in (request, send, process, user)} == {caller_trace}
    lines = _task_logs(traced_server, task_id, "task.completed")
    assert {line["trace_id"] for line in lines} == {caller_trace}


def test_user_task_failure_is_an_error_on_the_process_span(
    traced_server: ServerProcess, receiver: OTLPReceiver, client: httpx.Client
) -> None:
    response = client.post(traced_server.url + "/tasks", json={"outcome": "fail"})
    task_id = response.json()["task_id"]
    final = poll_task(client, task_id, path=traced_server.url + "/tasks/{task_id}")
    assert final == {"task_id": task_id, "status": "FAILED", "error_type": "ValueError"}

    send, process = _task_spans(receiver, task_id)
    assert process.parent_span_id == send.span_id
    assert process.status_code == "ERROR"
    assert process.attributes[ATTR.ERROR_TYPE] == "ValueError"
    assert process.attributes[ATTR.TASK_STATUS] == "failed"
    assert "the user's task failed" in process.status_message
    [(event, attrs)] = process.events
    assert event == "exception"
    assert attrs["exception.type"] == "ValueError"
    # The user's span is still nested in the task's, in the same trace.
    [user] = receiver.wait_for_spans(name="user.step", parent_span_id=process.span_id)
    assert user.trace_id == process.trace_id

    events = _by_event(_task_logs(traced_server, task_id, "task.failed"))
    failed = events["task.failed"]
    assert failed["error_type"] == "ValueError"
    assert failed["trace_id"] == process.trace_id
    assert failed["span_id"] == process.span_id
    assert failed["level"] == "error"
    assert "exception" in failed  # the traceback, rendered as data by dict_tracebacks


def _simulate(client: httpx.Client, server: ServerProcess, **body: Any) -> str:
    response = client.post(server.url + "/simulate", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


@pytest.mark.parametrize(
    ("body", "status", "error_type", "log_event"),
    [
        pytest.param(
            {"outcome": "fail", "seconds": 0.02}, "failed", "ValueError", "task.failed",
            id="failed",
        ),
        pytest.param(
            {"outcome": "task_error", "seconds": 0.02}, "failed",
            "TaskError", "task.failed", id="task-error",
        ),
        pytest.param(
            {"outcome": "timeout", "seconds": 0.4, "timeout": 0.1}, "timeout",
            "TaskTimeoutError", "task.timeout", id="timeout",
        ),
    ],
)  # fmt: skip
def test_demo_failures_and_timeouts_are_errors(
    demo_server: ServerProcess,
    receiver: OTLPReceiver,
    client: httpx.Client,
    body: dict[str, Any],
    status: str,
    error_type: str,
    log_event: str,
) -> None:
    metrics_url = demo_server.url + "/metrics"
    before = scrape_metrics(client, metrics_url)
    task_id = _simulate(client, demo_server, **body)
    assert (
        poll_task(client, task_id, path=demo_server.url + "/status/{task_id}")["status"]
        == status.upper()
    )

    send, process = _task_spans(receiver, task_id)
    [request] = receiver.wait_for_spans(span_id=send.parent_span_id)
    assert (request.kind, request.name) == ("SERVER", "POST /simulate")
    assert process.parent_span_id == send.span_id
    assert process.trace_id == send.trace_id == request.trace_id
    assert process.resource["service.name"] == DEMO_SERVICE
    assert process.name == f"process {DEMO_FUNCTION}"
    assert process.status_code == "ERROR"
    assert process.attributes[ATTR.ERROR_TYPE] == error_type
    assert process.attributes[ATTR.TASK_STATUS] == status
    assert process.attributes[ATTR.CODE_FUNCTION] == DEMO_FUNCTION
    if status == "timeout":
        assert process.attributes[ATTR.TASK_TIMEOUT] == pytest.approx(0.1)
        assert send.attributes[ATTR.TASK_TIMEOUT] == pytest.approx(0.1)

    after = scrape_metrics(client, metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, task=DEMO_FUNCTION, **labels) - metric_value(
            before, name, task=DEMO_FUNCTION, **labels
        )

    assert delta(CREATED) == 1
    assert delta(FINISHED, status=status) == 1
    assert delta(FINISHED) == 1  # and no other status
    assert delta(ERRORS, error_type=error_type) == 1

    events = _by_event(_task_logs(demo_server, task_id, log_event))
    assert events[log_event]["trace_id"] == process.trace_id
    assert events[log_event]["span_id"] == process.span_id
    assert events[log_event]["status"] == status
    assert events["task.created"]["span_id"] == send.span_id
    assert "task.completed" not in events


def test_demo_cancelled_task_is_not_an_error(
    demo_server: ServerProcess, receiver: OTLPReceiver, client: httpx.Client
) -> None:
    metrics_url = demo_server.url + "/metrics"
    before = scrape_metrics(client, metrics_url)
    task_id = _simulate(client, demo_server, outcome="slow", seconds=60)
    # Cancel it while it runs.
    status_url = f"{demo_server.url}/status/{task_id}"
    wait_until(
        lambda: client.get(status_url).json()["status"] == "RUNNING",
        timeout=10,
        message=f"task {task_id} to run",
    )
    response = client.post(f"{demo_server.url}/tasks/{task_id}/cancel")
    assert response.json() == {"success": True, "task_id": task_id}
    assert (
        poll_task(client, task_id, path=demo_server.url + "/status/{task_id}")["status"]
        == "CANCELLED"
    )

    send, process = _task_spans(receiver, task_id)
    assert process.parent_span_id == send.span_id
    assert process.status_code == "UNSET"
    assert process.attributes[ATTR.TASK_STATUS] == "cancelled"
    assert ATTR.ERROR_TYPE not in process.attributes
    assert process.events == ()

    after = scrape_metrics(client, metrics_url)
    moved = metric_value(after, FINISHED, task=DEMO_FUNCTION, status="cancelled") - metric_value(
        before, FINISHED, task=DEMO_FUNCTION, status="cancelled"
    )
    assert moved == 1
    assert metric_value(after, RUNNING, task=DEMO_FUNCTION) == 0

    events = _by_event(_task_logs(demo_server, task_id, "task.cancelled"))
    assert events["task.cancelled"]["was_running"] is True
    assert events["task.cancelled"]["level"] == "info"
    assert events["task.cancelled"]["span_id"] == process.span_id
