"""The demo app: every example of the documented Background Tasks page, served by one Nexios app.

Run it with ``observable-tasks demo`` (or ``uvicorn observable_tasks.demo:app``). Differences from
the page, all forced by Nexios 3.x: not-found answers use ``response.json(..., status_code=404)``
(a returned tuple gives a 500), and the TaskError handler is registered with
``app.add_exception_handler``. SMTP and the database are stand-ins that only sleep; files are read
from, and exports written to, the demo's own data folder.

Safety for a server anyone on the network may reach: debug is off unless asked (a 500 then says
"Internal Server Error", never a traceback); request bodies are limited in size (413) and must be
JSON that every handler can read back and echo (400 for nesting deeper than
``MAX_JSON_DEPTH``, NaN, Infinity or numbers like 1e400); lookups encode any task result, even
one JSON cannot carry; the data folder is private to the run (mode 0700) and exports are pruned.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import csv
import functools
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nexios import NexiosApp
from nexios.http import Request, Response

from observable_tasks import (
    RetryPolicy,
    TaskConfig,
    TaskDependency,
    TaskError,
    TaskStatus,
    create_task,
    current_task,
    setup_tasks,
    update_task_progress,
)
from observable_tasks.console import ConsoleOptions

__all__ = ["create_app", "make_data_dir"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Request bodies above this many bytes are refused with 413 (env ``DEMO_MAX_BODY_BYTES``)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays/objects a request body may have."""
MAX_EXPORT_LIMIT = 100_000
"""Most records ``/export-data`` writes (``filters.limit``)."""
DEFAULT_KEEP_EXPORTS = 20
"""Export files kept in the data folder; older ones are deleted after each export."""
MAX_NAME_LENGTH = 200
"""Longest display name ``/simulate`` accepts."""
MAX_ATTEMPTS = 10
"""Most attempts ``/simulate`` plans (``max_attempts``)."""
MAX_DELAY = 86_400.0
"""Longest ``delay`` and ``backoff`` (seconds) ``/simulate`` accepts."""
MAX_RECIPIENTS = 10_000


def create_app(
    config: TaskConfig | None = None,
    *,
    time_scale: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    debug: bool | None = None,
    max_body_bytes: int | None = None,
    keep_exports: int = DEFAULT_KEEP_EXPORTS,
    **setup_options: Any,
) -> NexiosApp:
    """Build the demo app.

    ``time_scale`` multiplies every simulated delay (tests use 0.01; env ``DEMO_TIME_SCALE``).
    ``data_dir`` holds the files ``/process-file`` may read and where exports go (env
    ``DEMO_DATA_DIR``; default: a private temporary folder with a sample file, made by
    :func:`make_data_dir` and removed at shutdown). ``debug`` turns on Nexios' debug pages, which
    show tracebacks (env ``DEMO_DEBUG=1``; default off). Bodies over ``max_body_bytes`` (env
    ``DEMO_MAX_BODY_BYTES``, default 1 MiB) get a 413. Only the newest ``keep_exports`` export
    files are kept. Without ``config``, at most ``DEMO_MAX_CONCURRENT_TASKS`` (default 50) tasks
    run at once. Other keyword arguments go to :func:`setup_tasks`: ``backend=`` (default: the
    ``OBSERVABLE_TASKS_BACKEND`` environment variable, else memory) and ``execute=`` (default:
    true unless ``DEMO_NO_WORKER=1``).

    On a Redis backend every task function is a module-level function of this module
    (setup_tasks allows the module that calls it, so the embedded worker may run them; start a
    dedicated worker with ``observable-tasks worker --backend URL observable_tasks.demo``) and
    every argument is JSON: a task made by one process is looked up, listed and cancelled from
    any other.

    One demo app per process: the task functions (module level, for stable metric labels) read
    the time scale and data folder of the app created last.
    """
    scale = float(os.environ.get("DEMO_TIME_SCALE", "1")) if time_scale is None else time_scale
    if debug is None:
        debug = _env_flag("DEMO_DEBUG")
    if max_body_bytes is None:
        max_body_bytes = int(os.environ.get("DEMO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be at least 1")
    supplied = data_dir or os.environ.get("DEMO_DATA_DIR")
    owned = not supplied
    data = Path(supplied) if supplied else Path(make_data_dir())
    if owned:
        atexit.register(shutil.rmtree, data, ignore_errors=True)  # if never shut down
    data.mkdir(parents=True, exist_ok=True)
    exports = data / "exports"
    exports_made_here = not exports.exists()
    # read by the task functions below
    _settings.update(time_scale=scale, data_dir=str(data), keep_exports=keep_exports)

    app = NexiosApp(title="observable-tasks demo", debug=debug)
    # Inside the request tracing that setup_tasks adds: refused bodies are traced too.
    app.wrap_asgi(functools.partial(BodyGuard, max_bytes=max_body_bytes))
    if config is None:
        limit = int(os.environ.get("DEMO_MAX_CONCURRENT_TASKS", "50"))
        config = TaskConfig(max_concurrent_tasks=limit, default_timeout=300)
    # Where tasks live: setup_tasks reads OBSERVABLE_TASKS_BACKEND (``--backend``) unless a
    # ``backend=`` is given; DEMO_NO_WORKER=1 (``--no-worker``) makes this a web-only process.
    setup_options.setdefault("execute", not _env_flag("DEMO_NO_WORKER"))
    # The task console at /console, with trace links to Jaeger (env DEMO_TRACE_URL changes it).
    setup_options.setdefault("console", _console_options())
    task_manager = setup_tasks(app, config, **setup_options)
    app.state["demo_data_dir"] = str(data)

    async def remove_files() -> None:
        # After setup_tasks' own shutdown hook (registered first): no task writes any more.
        if owned:
            shutil.rmtree(data, ignore_errors=True)
        elif exports_made_here:
            shutil.rmtree(exports, ignore_errors=True)

    app.on_shutdown(remove_files)

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
            "result": json_safe(task.result) if task.status == TaskStatus.COMPLETED else None,
            "error": _text(task.error) if task.error else None,
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
                    "message": _text(task.error),
                    "code": json_safe(getattr(task.error, "code", None)),
                    "traceback": json_safe(getattr(task.error, "traceback", None)),
                },
                status_code=500,
            )
        return {"result": json_safe(task.result), "status": task.status.value}

    # -- Custom errors ---------------------------------------------------------------------

    async def handle_task_error(request: Request, response: Response, exc: Exception) -> Any:
        assert isinstance(exc, TaskError)
        return response.json(
            {"error": exc.code, "message": exc.message, "details": json_safe(exc.details)},
            status_code=400,
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
        if "\x00" in file_path or len(file_path) > 1024:
            return response.json(
                {"error": "file_path must be a path without NUL, at most 1024 characters"},
                status_code=400,
            )
        # The demo only reads inside its data folder, whatever path a client sends.
        try:
            resolved = (data / file_path).resolve()
        except (OSError, ValueError, RuntimeError):
            return response.json({"error": "file_path is not a usable path"}, status_code=400)
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
        recipients = body["recipients"]
        if (
            not isinstance(recipients, list)
            or not all(isinstance(r, str) for r in recipients)
            or len(recipients) > MAX_RECIPIENTS
        ):
            raise BadBody(
                f"recipients must be a non-empty list of at most {MAX_RECIPIENTS} strings"
            )
        for key in ("subject", "body"):
            if not isinstance(body[key], str):
                raise BadBody(f"{key} must be a string")
        task = await create_task(
            func=send_bulk_emails,
            recipients=recipients,
            subject=body["subject"],
            body=body["body"],
            name="bulk_email_sending",
        )
        return {"task_id": task.id, "recipient_count": len(recipients)}

    # -- Data export -----------------------------------------------------------------------

    @app.post("/export-data")
    async def start_data_export(request: Request, response: Response) -> Any:
        body = await _json_object(request)
        fmt = body.get("format", "csv")
        if not isinstance(fmt, str) or len(fmt) > 20:
            raise BadBody("format must be a string such as 'csv' or 'json'")
        filters = body.get("filters", {})
        if not isinstance(filters, dict):
            raise BadBody("filters must be a JSON object")
        limit = filters.get("limit", 1000)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise BadBody(f"filters.limit must be a whole number >= 0, got {_brief(limit)}")
        if limit > MAX_EXPORT_LIMIT:
            raise BadBody(f"filters.limit must be at most {MAX_EXPORT_LIMIT}, got {limit}")
        task = await create_task(
            func=export_data,
            format=fmt,
            filters=filters,
            name=f"data_export_{fmt}",
        )
        return {"task_id": task.id, "format": fmt}

    # -- Load generation: one task of a chosen outcome ---------------------------------------

    @app.post("/simulate")
    async def simulate(request: Request, response: Response) -> Any:
        """Create one task with a chosen outcome: complete, fail, task_error, timeout, slow.

        ``name`` (optional) is the task's display name, a string of 1 to 200 characters.
        Retries and planned starts (all optional): ``fail_attempts`` (its first N attempts fail
        with ValueError before the outcome), ``max_attempts`` (1 to 10; default
        ``fail_attempts + 1``), ``backoff`` (seconds before the second attempt, doubled after;
        default 1), ``delay`` (seconds before the first attempt) and ``key`` (idempotency key).
        """
        body = await _json_object(request)
        outcome = body.get("outcome", "complete")
        if not isinstance(outcome, str) or outcome not in _OUTCOMES:
            return response.json(
                {"error": f"unknown outcome {_brief(outcome)}; one of {sorted(_OUTCOMES)}"},
                status_code=400,
            )
        name = body.get("name", f"simulate_{outcome}")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise BadBody(f"name must be a string of 1 to {MAX_NAME_LENGTH} characters")
        seconds = _seconds(body, "seconds")
        if seconds is None:
            seconds = random.uniform(0.05, 0.5)
        timeout = _seconds(body, "timeout")
        if timeout == 0:
            raise BadBody("timeout must be more than 0 seconds")
        if outcome == "timeout":
            timeout = timeout or seconds / 2
        extra, plan = _retry_plan(body)
        task = await create_task(
            simulated_work, outcome, seconds, name=name, timeout=timeout, **extra, **plan
        )
        return {"task_id": task.id}

    return app


# -- task functions of the page's examples -----------------------------------------------
# Module level, so that their qualified names (the metric labels) are short and stable.


def _settings_from_env() -> dict[str, Any]:
    # A dedicated worker (``observable-tasks worker ... observable_tasks.demo``) runs these
    # functions without calling create_app: it reads the same environment as the web processes.
    return {
        "time_scale": float(os.environ.get("DEMO_TIME_SCALE", "1")),
        "data_dir": os.environ.get("DEMO_DATA_DIR") or tempfile.gettempdir(),
        "keep_exports": DEFAULT_KEEP_EXPORTS,
    }


_settings: dict[str, Any] = _settings_from_env()
_OUTCOMES = frozenset({"complete", "fail", "task_error", "timeout", "slow"})
_EXPORT_CHUNK_ROWS = 5_000  # rows written per worker-thread call (progress between chunks)


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
    limit = int(filters.get("limit", 1000))
    return await asyncio.to_thread(lambda: [{"id": i, "name": f"Record {i}"} for i in range(limit)])


def _write_csv_rows(writer: csv.DictWriter[str], rows: list[dict[str, Any]]) -> None:
    """Runs in a worker thread: the event loop keeps serving while an export is written."""
    writer.writerows(rows)


async def export_to_csv(rows: list[dict[str, Any]], filename: Path, task_id: str) -> None:
    # The page writes row by row with progress every 100 rows; here chunks of rows are written
    # off the event loop, with a progress update after each chunk.
    with open(filename, "w", newline="") as csvfile:  # noqa: ASYNC230 - opening is quick
        if rows:
            writer = csv.DictWriter(csvfile, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            for start in range(0, len(rows), _EXPORT_CHUNK_ROWS):
                await asyncio.to_thread(
                    _write_csv_rows, writer, rows[start : start + _EXPORT_CHUNK_ROWS]
                )
                await update_task_progress(task_id, start / len(rows) * 100)
    await update_task_progress(task_id, 100)


def _write_json(rows: list[dict[str, Any]], filename: Path) -> None:
    with open(filename, "w") as jsonfile:
        json.dump(rows, jsonfile, indent=2)


async def export_to_json(rows: list[dict[str, Any]], filename: Path, task_id: str) -> None:
    await asyncio.to_thread(_write_json, rows, filename)
    await update_task_progress(task_id, 100)


async def export_data(format: str, filters: dict[str, Any], task_id: str) -> dict[str, Any]:
    rows = await fetch_data_from_database(filters)
    timestamp = datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    folder = Path(_settings["data_dir"]) / "exports"
    filename = folder / f"export_{timestamp}_{task_id[:8]}.{format}"
    if format not in ("csv", "json"):
        raise ValueError(f"Unsupported format: {format}")
    folder.mkdir(mode=0o700, exist_ok=True)
    try:
        if format == "csv":
            await export_to_csv(rows, filename, task_id)
        else:
            await export_to_json(rows, filename, task_id)
    finally:
        _prune_exports(folder, keep=_settings["keep_exports"])
    return {
        "filename": filename.name,
        "format": format,
        "total_records": len(rows),
        "status": "completed",
    }


def _prune_exports(folder: Path, *, keep: int) -> None:
    """Delete all but the ``keep`` newest export files (their names sort by time)."""
    files = sorted(p for p in folder.glob("export_*") if p.is_file() and not p.is_symlink())
    for old in files[: max(len(files) - keep, 0)]:
        with contextlib.suppress(FileNotFoundError):  # another export pruned it first
            old.unlink()


async def simulated_work(
    outcome: str, seconds: float, task_id: str, fail_attempts: int = 0
) -> dict[str, Any]:
    """Ends as asked: completed, failed (ValueError or TaskError) or (via timeout) timeout.

    Its first ``fail_attempts`` attempts fail with ValueError (retried by its policy) instead.
    """
    steps = 4
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        await update_task_progress(task_id, (step + 1) / steps * 100)
    task = current_task()
    attempt = task.attempts if task is not None else 1
    if attempt <= fail_attempts:
        raise ValueError(f"simulated failure of attempt {attempt}")
    if outcome == "fail":
        raise ValueError("simulated failure")
    if outcome == "task_error":
        raise TaskError(code="SIMULATED", message="simulated task error")
    return {"outcome": outcome, "seconds": seconds}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}


class BadBody(ValueError):
    """A request body the demo cannot use: answered 400 with the message (never a 500)."""


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``."""
    raw = await request.body
    if not raw.strip():
        return {}
    body = _parse_json(raw)
    if not isinstance(body, dict):
        raise BadBody("the request body must be a JSON object")
    return body


def _parse_json(raw: bytes) -> Any:
    """``raw`` parsed as JSON the demo can echo back; :class:`BadBody` says why not."""
    try:
        value = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except BadBody:
        raise
    except RecursionError:
        raise BadBody(_TOO_DEEP) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, ints of too many digits
        raise BadBody("the request body is not valid JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadBody(_TOO_DEEP)
    return value


_TOO_DEEP = f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            break  # deep enough to refuse
        stack.extend((child, level + 1) for child in children)
    return deepest


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which no JSON response can carry back: refuse it at the door.
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(f"numbers must be finite, got {_brief(text)}")
    return value


def _no_constant(name: str) -> Any:
    raise BadBody(f"numbers must be finite, got {name}")


def _seconds(body: dict[str, Any], key: str) -> float | None:
    """``body[key]`` as a finite number of seconds >= 0 (``None`` when absent)."""
    if key not in body:
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadBody(f"{key} must be a number of seconds, got {_brief(value)}")
    if value < 0:
        raise BadBody(f"{key} must not be negative, got {value!r}")
    return float(value)


def _whole(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    """``body[key]`` as a whole number from ``low`` to ``high`` (``None`` when absent)."""
    if key not in body:
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadBody(f"{key} must be a whole number from {low} to {high}, got {_brief(value)}")
    return value


def _retry_plan(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``/simulate``'s retry fields: (``simulated_work`` keywords, ``create_task`` keywords)."""
    fail_attempts = _whole(body, "fail_attempts", 0, MAX_ATTEMPTS) or 0
    max_attempts = _whole(body, "max_attempts", 1, MAX_ATTEMPTS)
    if max_attempts is None:
        max_attempts = min(fail_attempts + 1, MAX_ATTEMPTS)
    backoff = _seconds(body, "backoff")
    delay = _seconds(body, "delay")
    for what, value in (("backoff", backoff), ("delay", delay)):
        if value is not None and value > MAX_DELAY:
            raise BadBody(f"{what} must be at most {MAX_DELAY:g} seconds, got {value!r}")
    key = body.get("key")
    if key is not None and not (isinstance(key, str) and 1 <= len(key) <= MAX_NAME_LENGTH):
        raise BadBody(f"key must be a string of 1 to {MAX_NAME_LENGTH} characters")
    extra: dict[str, Any] = {"fail_attempts": fail_attempts} if fail_attempts else {}
    plan: dict[str, Any] = {}
    if max_attempts > 1 or backoff is not None:
        plan["retry"] = RetryPolicy(
            max_attempts=max_attempts,
            on=(ValueError,),
            backoff=1.0 if backoff is None else backoff,
            jitter=False,
        )
    if delay:
        plan["delay"] = delay
    if key is not None:
        plan["key"] = key
    return extra, plan


def _brief(value: Any, limit: int = 80) -> str:
    """A short ``repr`` for messages (a client may send megabytes)."""
    text = _text(value, use_repr=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any, *, use_repr: bool = False) -> str:
    """``str`` (or ``repr``) of anything, even of an object whose ``__str__`` raises."""
    try:
        return repr(value) if use_repr else str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def json_safe(value: Any) -> Any:
    """``value`` as something a JSON response can always carry.

    A task may return anything. Values JSON cannot carry (NaN and infinities, sets, arbitrary
    objects, cycles, non-string keys other than numbers, bools and None) become a placeholder
    string ``"<not JSON: TYPE REPR>"``; everything else is kept as it is.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _safe(value, depth=0, seen=set())
    return value


def _placeholder(value: Any) -> str:
    return f"<not JSON: {type(value).__name__} {_brief(value)}>"


def _safe(value: Any, *, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _placeholder(value)
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen or depth > MAX_JSON_DEPTH:
            return _placeholder(value)
        seen = seen | {id(value)}
        if isinstance(value, dict):
            return {_key(k): _safe(v, depth=depth + 1, seen=seen) for k, v in value.items()}
        return [_safe(v, depth=depth + 1, seen=seen) for v in value]
    return _placeholder(value)


def _key(key: Any) -> str | None:
    if isinstance(key, str):
        return key
    if (
        key is None
        or isinstance(key, (bool, int))
        or (isinstance(key, float) and math.isfinite(key))
    ):
        return json.dumps(key)
    return _placeholder(key)


# -- request bodies --------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyGuard:
    """ASGI middleware: reads each request body (bounded) before the app sees it.

    A body over ``max_bytes`` (by its Content-Length, or counted as it streams in) gets a 413; a
    non-empty body that is not JSON the demo can echo (see :func:`_parse_json`) gets a 400. Both
    answers are JSON ``{"error": ...}``. Accepted bodies are handed on unchanged.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.max_bytes} bytes"
        for name, value in scope.get("headers", ()):
            declared = name == b"content-length" and value.strip().isdigit()
            if declared and int(value) > self.max_bytes:
                await _answer(send, 413, too_large)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _answer(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip():
            try:
                _parse_json(raw)
            except BadBody as exc:
                await _answer(send, 400, str(exc))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the data folder -------------------------------------------------------------------------


def make_data_dir() -> str:
    """A new private data folder (mode 0700, made by ``tempfile.mkdtemp``) with a sample file.

    Never a fixed path: a folder or symlink someone else planted cannot redirect the demo.
    The caller removes it (``shutil.rmtree``) when done.
    """
    folder = Path(tempfile.mkdtemp(prefix="observable-tasks-demo-"))
    (folder / "sample.txt").write_bytes(b"observable-tasks demo file\n" * 400)  # about 11 KB
    return str(folder)


def _console_options() -> ConsoleOptions:
    """The demo's console: ``/console``, trace links to Jaeger on localhost:16686 (env
    ``DEMO_TRACE_URL``), HTTP basic auth when ``DEMO_CONSOLE_AUTH=user:password`` is set."""
    trace_url = os.environ.get("DEMO_TRACE_URL", "http://localhost:16686/trace/{trace_id}")
    auth = os.environ.get("DEMO_CONSOLE_AUTH", "")
    user, sep, password = auth.partition(":")
    return ConsoleOptions(
        path="/console",
        trace_url=trace_url or None,
        basic_auth=(user, password) if sep and user and password else None,
    )


def _build_module_app() -> NexiosApp:
    """The app of ``uvicorn observable_tasks.demo:app``: logging, tracing, then the app."""
    import logging
    import sys

    import structlog

    from observable_tasks.telemetry import configure_logging, configure_tracing
    from observable_tasks.telemetry.logs import capture_stdlib_logging

    configure_logging()
    level = os.environ.get("DEMO_LOG_LEVEL", "info").upper()
    capture_stdlib_logging(logging.DEBUG if level == "TRACE" else level)
    renderer = structlog.get_config()["processors"][-1]
    if isinstance(renderer, structlog.processors.JSONRenderer):
        # stdout is the JSON-lines log stream (structlog and stdlib logging hold it already);
        # stray print() calls, such as Nexios' "Resolving dependency:", go to stderr instead.
        sys.stdout = sys.stderr
    provider = configure_tracing("observable-tasks-demo")
    return create_app(tracer_provider=provider, trace_requests=True)


def __getattr__(name: str) -> Any:
    # ``uvicorn observable_tasks.demo:app`` reads ``app``: only then are tracing and logging
    # configured globally, so importing this module (e.g. for create_app in tests) changes nothing.
    if name == "app":
        global _app
        if _app is None:
            _app = _build_module_app()
        return _app
    raise AttributeError(name)


_app: NexiosApp | None = None
