"""The demo app: every example of the documented Background Tasks page, served by one Nexios app.

Run it with ``observable-tasks demo`` (or ``uvicorn observable_tasks.demo:app``). Differences from
the page, all forced by Nexios 3.x: not-found answers use ``response.json(..., status_code=404)``
(a returned tuple gives a 500), and the TaskError handler is registered with
``app.add_exception_handler``. SMTP and the database are stand-ins that only sleep; files are read
from, and exports written to, the demo's own data folder.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import random
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from nexios import NexiosApp
from nexios.http import Request, Response

from observable_tasks import (
    TaskConfig,
    TaskDependency,
    TaskError,
    TaskStatus,
    create_task,
    setup_tasks,
    update_task_progress,
)

__all__ = ["create_app"]


def create_app(
    config: TaskConfig | None = None,
    *,
    time_scale: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **setup_options: Any,
) -> NexiosApp:
    """Build the demo app.

    ``time_scale`` multiplies every simulated delay (tests use 0.01; env ``DEMO_TIME_SCALE``).
    ``data_dir`` holds the files ``/process-file`` may read and where exports go (env
    ``DEMO_DATA_DIR``; default: a temporary folder with a few sample files). Without ``config``,
    at most ``DEMO_MAX_CONCURRENT_TASKS`` (default 50) tasks run at once.
    Other keyword arguments go to :func:`setup_tasks`.
    """
    scale = float(os.environ.get("DEMO_TIME_SCALE", "1")) if time_scale is None else time_scale
    data = Path(data_dir or os.environ.get("DEMO_DATA_DIR") or _sample_dir())
    data.mkdir(parents=True, exist_ok=True)
    _settings.update(time_scale=scale, data_dir=str(data))  # read by the task functions below

    app = NexiosApp(title="observable-tasks demo")
    if config is None:
        limit = int(os.environ.get("DEMO_MAX_CONCURRENT_TASKS", "50"))
        config = TaskConfig(max_concurrent_tasks=limit, default_timeout=300)
    task_manager = setup_tasks(app, config, **setup_options)
    app.state["demo_data_dir"] = str(data)

    # -- Basic usage -----------------------------------------------------------------------

    @app.post("/process")
    async def start_processing(request: Request, response: Response) -> Any:
        data = await request.json
        task = await create_task(func=process_data, data=data, name="data_processing")
        return {"task_id": task.id}

    @app.post("/process-di")
    async def start_processing_di(
        request: Request,
        response: Response,
        task_dep: TaskDependency = TaskDependency(),  # noqa: B008 - Nexios DI
    ) -> Any:
        data = await request.json
        task = await task_dep.create(func=process_data, data=data, name="data_processing")
        return {"task_id": task.id}

    @app.post("/process-with-deps")
    async def start_processing_with_deps(
        request: Request,
        response: Response,
        task_dep: TaskDependency = TaskDependency(),  # noqa: B008 - Nexios DI
    ) -> Any:
        data = await request.json
        task = await task_dep.create(
            func=process_with_deps, data=data, name="data_processing_with_deps"
        )
        return {"task_id": task.id}

    @app.get("/status/{task_id}")
    async def get_status(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        return {
            "task_id": task.id,
            "status": task.status.value,
            "result": task.result if task.status == TaskStatus.COMPLETED else None,
            "error": str(task.error) if task.error else None,
        }

    # -- Task management -------------------------------------------------------------------

    @app.get("/tasks")
    async def list_tasks(request: Request, response: Response) -> Any:
        status = request.query_params.get("status")
        if status is not None and status not in {s.value for s in TaskStatus}:
            return response.json({"error": f"unknown status {status!r}"}, status_code=400)
        return [
            {
                "id": task.id,
                "name": task.name,
                "status": task.status.value,
                "progress": task.progress,
                "created_at": task.created_at.isoformat(),
                "completed_at": task.completed_at.isoformat() if task.completed_at else None,
            }
            for task in task_manager.list_tasks(status)
        ]

    @app.post("/tasks/{task_id}/cancel")
    async def cancel_task(request: Request, response: Response, task_id: str) -> Any:
        success = await task_manager.cancel_task(task_id)
        return {"success": success, "task_id": task_id}

    @app.get("/tasks/{task_id}/progress")
    async def get_task_progress(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        return {"task_id": task_id, "progress": task.progress, "status": task.status.value}

    @app.get("/task-result/{task_id}")
    async def get_task_result(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        if task.error:
            return response.json(
                {
                    "error": "Task failed",
                    "message": str(task.error),
                    "code": getattr(task.error, "code", None),
                    "traceback": getattr(task.error, "traceback", None),
                },
                status_code=500,
            )
        return {"result": task.result, "status": task.status.value}

    # -- Custom errors ---------------------------------------------------------------------

    async def handle_task_error(request: Request, response: Response, exc: Exception) -> Any:
        assert isinstance(exc, TaskError)
        return response.json(
            {"error": exc.code, "message": exc.message, "details": exc.details}, status_code=400
        )

    app.add_exception_handler(TaskError, handle_task_error)

    async def handle_bad_body(request: Request, response: Response, exc: Exception) -> Any:
        return response.json({"error": str(exc)}, status_code=400)

    app.add_exception_handler(BadBody, handle_bad_body)

    async def handle_bad_json(request: Request, response: Response, exc: Exception) -> Any:
        # The page's handlers read ``await request.json`` as written: a malformed body is the
        # client's error, answered here rather than as a 500.
        return response.json({"error": "the request body is not valid JSON"}, status_code=400)

    app.add_exception_handler(json.JSONDecodeError, handle_bad_json)

    @app.post("/validate")
    async def start_validation(request: Request, response: Response) -> Any:
        data = await _json_object(request)
        task = await create_task(task_with_custom_error, data=data, name="validation")
        return {"task_id": task.id}

    @app.post("/validate-now")
    async def validate_now(request: Request, response: Response) -> Any:
        """Raises TaskError in the handler itself: the exception handler answers 400."""
        data = await _json_object(request)
        return await task_with_custom_error(data)

    # -- File processing -------------------------------------------------------------------

    @app.post("/process-file")
    async def start_file_processing(request: Request, response: Response) -> Any:
        body = await _json_object(request)
        file_path = body.get("file_path")
        if not file_path or not isinstance(file_path, str):
            return response.json({"error": "file_path is required"}, status_code=400)
        # The demo only reads inside its data folder, whatever path a client sends.
        resolved = (data / file_path).resolve()
        if data.resolve() not in resolved.parents:
            return response.json(
                {"error": "file_path must be inside the demo data folder"}, status_code=400
            )
        task = await create_task(
            func=process_file,
            file_path=str(resolved),
            name=f"process_file_{os.path.basename(file_path)}",
        )
        return {"task_id": task.id, "file_path": file_path}

    # -- Bulk e-mail -----------------------------------------------------------------------

    @app.post("/send-bulk-emails")
    async def start_bulk_email_sending(request: Request, response: Response) -> Any:
        body = await _json_object(request)
        missing = [k for k in ("recipients", "subject", "body") if k not in body]
        if missing or not body.get("recipients"):
            return response.json(
                {"error": f"required: recipients (non-empty), subject, body; missing {missing}"},
                status_code=400,
            )
        task = await create_task(
            func=send_bulk_emails,
            recipients=body["recipients"],
            subject=body["subject"],
            body=body["body"],
            name="bulk_email_sending",
        )
        return {"task_id": task.id, "recipient_count": len(body["recipients"])}

    # -- Data export -----------------------------------------------------------------------

    @app.post("/export-data")
    async def start_data_export(request: Request, response: Response) -> Any:
        body = await _json_object(request)
        fmt = body.get("format", "csv")
        task = await create_task(
            func=export_data,
            format=fmt,
            filters=body.get("filters", {}),
            name=f"data_export_{fmt}",
        )
        return {"task_id": task.id, "format": fmt}

    # -- Load generation: one task of a chosen outcome ---------------------------------------

    @app.post("/simulate")
    async def simulate(request: Request, response: Response) -> Any:
        """Create one task with a chosen outcome: complete, fail, task_error, timeout, slow."""
        body = await _json_object(request)
        outcome = body.get("outcome", "complete")
        if outcome not in {"complete", "fail", "task_error", "timeout", "slow"}:
            return response.json({"error": f"unknown outcome {outcome!r}"}, status_code=400)
        seconds = _seconds(body, "seconds")
        if seconds is None:
            seconds = random.uniform(0.05, 0.5)
        timeout = _seconds(body, "timeout")
        if timeout == 0:
            raise BadBody("timeout must be more than 0 seconds")
        if outcome == "timeout":
            timeout = timeout or seconds / 2
        task = await create_task(
            simulated_work, outcome, seconds, name=f"simulate_{outcome}", timeout=timeout
        )
        return {"task_id": task.id}

    return app


# -- task functions of the page's examples -----------------------------------------------
# Module level, so that their qualified names (the metric labels) are short and stable.

_settings: dict[str, Any] = {"time_scale": 1.0, "data_dir": tempfile.gettempdir()}


async def pause(seconds: float) -> None:
    """Simulated work: sleeps ``seconds`` times the demo's time scale."""
    await asyncio.sleep(seconds * _settings["time_scale"])


async def process_data(data: dict[str, Any]) -> dict[str, Any]:
    """A sample background task that processes data."""
    await pause(2)
    return {"status": "completed", "data": data}


async def process_with_deps(data: dict[str, Any]) -> dict[str, Any]:
    await pause(1)
    return {"status": "completed", "data": data, "via": "TaskDependency"}


async def task_with_custom_error(data: dict[str, Any]) -> dict[str, Any]:
    if not data.get("valid"):
        raise TaskError(
            code="INVALID_DATA", message="Data validation failed", details={"received": data}
        )
    return {"processed": data}


async def process_file(file_path: str, task_id: str) -> dict[str, Any]:
    if not os.path.exists(file_path):
        raise FileNotFoundError(f"File not found: {file_path}")
    file_size = os.path.getsize(file_path)
    processed_bytes = 0
    with open(file_path, "rb") as f:  # noqa: ASYNC230 - the page's example, small files
        while True:
            chunk = f.read(1024)
            if not chunk:
                break
            await pause(0.1)
            processed_bytes += len(chunk)
            await update_task_progress(task_id, processed_bytes / file_size * 100)
    return {
        "file_path": file_path,
        "file_size": file_size,
        "processed_bytes": processed_bytes,
        "status": "completed",
    }


async def send_single_email(recipient: str, subject: str, body: str) -> None:
    """Stand-in for SMTP: sleeps; addresses without '@' fail like a rejected recipient."""
    await pause(0.5)
    if "@" not in recipient:
        raise ValueError(f"invalid recipient {recipient!r}")


async def send_bulk_emails(
    recipients: list[str], subject: str, body: str, task_id: str
) -> dict[str, Any]:
    total = len(recipients)
    sent_count = failed_count = 0
    for i, recipient in enumerate(recipients):
        try:
            await send_single_email(recipient, subject, body)
            sent_count += 1
        except Exception:
            failed_count += 1
        await update_task_progress(task_id, (i + 1) / total * 100)
    return {
        "total_recipients": total,
        "sent_count": sent_count,
        "failed_count": failed_count,
        "status": "completed",
    }


async def fetch_data_from_database(filters: dict[str, Any]) -> list[dict[str, Any]]:
    await pause(1)
    return [{"id": i, "name": f"Record {i}"} for i in range(int(filters.get("limit", 1000)))]


async def export_to_csv(rows: list[dict[str, Any]], filename: Path, task_id: str) -> None:
    with open(filename, "w", newline="") as csvfile:  # noqa: ASYNC230 - the page's example
        if rows:
            writer = csv.DictWriter(csvfile, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow(row)
                if i % 100 == 0:
                    await update_task_progress(task_id, i / len(rows) * 100)
    await update_task_progress(task_id, 100)


async def export_to_json(rows: list[dict[str, Any]], filename: Path, task_id: str) -> None:
    with open(filename, "w") as jsonfile:  # noqa: ASYNC230 - the page's example
        json.dump(rows, jsonfile, indent=2)
    await update_task_progress(task_id, 100)


async def export_data(format: str, filters: dict[str, Any], task_id: str) -> dict[str, Any]:
    rows = await fetch_data_from_database(filters)
    timestamp = datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    filename = Path(_settings["data_dir"]) / "exports" / f"export_{timestamp}.{format}"
    filename.parent.mkdir(exist_ok=True)
    if format == "csv":
        await export_to_csv(rows, filename, task_id)
    elif format == "json":
        await export_to_json(rows, filename, task_id)
    else:
        raise ValueError(f"Unsupported format: {format}")
    return {
        "filename": filename.name,
        "format": format,
        "total_records": len(rows),
        "status": "completed",
    }


async def simulated_work(outcome: str, seconds: float, task_id: str) -> dict[str, Any]:
    """Ends as asked: completed, failed (ValueError or TaskError) or (via timeout) timeout."""
    steps = 4
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        await update_task_progress(task_id, (step + 1) / steps * 100)
    if outcome == "fail":
        raise ValueError("simulated failure")
    if outcome == "task_error":
        raise TaskError(code="SIMULATED", message="simulated task error")
    return {"outcome": outcome, "seconds": seconds}


class BadBody(ValueError):
    """A request body the demo cannot use: answered 400 with the message (never a 500)."""


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``."""
    raw = await request.body
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=_finite_float)
    except BadBody:
        raise
    except ValueError:
        raise BadBody("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadBody("the request body must be a JSON object")
    return body


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which no JSON response can carry back: refuse it at the door.
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(f"numbers must be finite, got {text}")
    return value


def _seconds(body: dict[str, Any], key: str) -> float | None:
    """``body[key]`` as a finite number of seconds >= 0 (``None`` when absent)."""
    if key not in body:
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadBody(f"{key} must be a number of seconds, got {value!r}")
    if value < 0:
        raise BadBody(f"{key} must not be negative, got {value!r}")
    return float(value)


def _sample_dir() -> str:
    folder = Path(tempfile.gettempdir()) / "observable-tasks-demo"
    folder.mkdir(exist_ok=True)
    sample = folder / "sample.txt"
    if not sample.exists():
        sample.write_bytes(b"observable-tasks demo file\n" * 400)  # about 11 KB
    return str(folder)


def __getattr__(name: str) -> Any:
    # ``uvicorn observable_tasks.demo:app`` reads ``app``: only then are tracing and logging
    # configured globally, so importing this module (e.g. for create_app in tests) changes nothing.
    if name == "app":
        global _app
        if _app is None:
            from observable_tasks.telemetry import configure_logging, configure_tracing

            configure_logging()
            provider = configure_tracing("observable-tasks-demo")
            _app = create_app(tracer_provider=provider, trace_requests=True)
        return _app
    raise AttributeError(name)


_app: NexiosApp | None = None
