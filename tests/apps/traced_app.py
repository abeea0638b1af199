"""A tiny Nexios app for the end-to-end telemetry tests (served by a real uvicorn subprocess).

Configured like a production app would be: JSON logs to stdout (``configure_logging``), an
OTLP tracer provider from the ``OTEL_*`` environment (``configure_tracing``) and
``setup_tasks(app, trace_requests=True)``. Its task function opens its own span and logs with
structlog, so a test can check that user code inside a task nests under the task's span and
that its log lines carry the task id and the trace id.

- ``POST /tasks`` ``{"outcome": "complete"|"fail"|"block", "timeout": s}`` -> ``{"task_id"}``
  (``block`` waits until cancelled or timed out);
- ``GET /tasks/{task_id}`` -> ``{"task_id", "status", "error_type"}``;
- ``POST /tasks/{task_id}/cancel`` -> ``{"cancelled": bool}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nexios import NexiosApp
from nexios.http import Request, Response
from opentelemetry import trace

from observable_tasks import TaskConfig, create_task, setup_tasks
from observable_tasks.telemetry import configure_logging, configure_tracing

USER_SPAN = "user.step"
USER_EVENT = "user.inside_task"
REQUEST_EVENT = "app.task_requested"

configure_logging(json=True)
provider = configure_tracing("traced-test-app")
app = NexiosApp(title="traced test app")
manager = setup_tasks(
    app,
    TaskConfig(max_concurrent_tasks=10, shutdown_timeout=1.0),
    tracer_provider=provider,
    trace_requests=True,
)

tracer = trace.get_tracer("traced_app")
log = structlog.get_logger("traced_app")


async def traced_work(outcome: str, task_id: str) -> dict[str, Any]:
    """The user's task: one span of its own, one log line inside it, then the outcome."""
    with tracer.start_as_current_span(USER_SPAN, attributes={"app.outcome": outcome}):
        log.info(USER_EVENT, outcome=outcome, seen_task_id=task_id)
        if outcome == "fail":
            raise ValueError("the user's task failed")
        if outcome == "block":
            await asyncio.Event().wait()  # until cancelled (or timed out)
    return {"outcome": outcome}


@app.post("/tasks")
async def start(request: Request, response: Response) -> Any:
    body = await request.json
    timeout = body.get("timeout")
    task = await create_task(
        traced_work, body.get("outcome", "complete"), name="traced", timeout=timeout
    )
    # In the request's context: trace ids of the request span, no task bindings.
    log.info(REQUEST_EVENT, created_task=task.id)
    return {"task_id": task.id}


@app.get("/tasks/{task_id}")
async def status(request: Request, response: Response, task_id: str) -> Any:
    task = manager.get_task(task_id)
    if task is None:
        return response.json({"error": "not found"}, status_code=404)
    return {
        "task_id": task.id,
        "status": task.status.value,
        "error_type": type(task.error).__name__ if task.error is not None else None,
    }


@app.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, response: Response, task_id: str) -> Any:
    return {"cancelled": await manager.cancel_task(task_id)}
