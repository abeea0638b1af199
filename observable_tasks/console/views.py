"""TaskView: what the console's API says about one task (JSON-ready, all of it data)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from observable_tasks.task import Task

if TYPE_CHECKING:
    from observable_tasks.manager import TaskManager

    from .options import ConsoleOptions

__all__ = ["task_view", "trace_id_of"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_MAX_PAYLOAD = 20_000  # characters of an argument or result shown at most


def trace_id_of(task: Task) -> str | None:
    """The trace id of the task's W3C ``traceparent`` header, if it has a valid one."""
    headers = task._headers
    if not headers:
        return None
    match = _TRACEPARENT.match(headers.get("traceparent", ""))
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def _iso(moment: datetime | None) -> str | None:
    # Milliseconds: every browser's Date parses three fractional digits.
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _payload(value: Any) -> Any:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    if len(text) > _MAX_PAYLOAD:
        return {"truncated": True, "preview": text[:_MAX_PAYLOAD]}
    return json.loads(text)


def task_view(task: Task, manager: TaskManager, options: ConsoleOptions) -> dict[str, Any]:
    """The TaskView of ``task`` (see the README's console section)."""
    error = task.error
    error_type = None
    error_code = None
    if error is not None:
        error_type = getattr(error, "type", None) or type(error).__name__
        code = getattr(error, "code", None)
        error_code = code if isinstance(code, str) else None
    worker = args = kwargs = None
    backend = manager.backend
    if backend is not None:
        worker, args, kwargs = backend.extras(task)
    elif options.show_payloads:
        job = manager._jobs.get(task.id)
        if job is not None:
            args, kwargs = list(job.args), dict(job.kwargs)
    trace_id = trace_id_of(task)
    trace_url = None
    if trace_id is not None and options.trace_url is not None:
        trace_url = options.trace_url.replace("{trace_id}", trace_id)
    view: dict[str, Any] = {
        "id": task.id,
        "name": task.name,
        "function": task.function,
        "status": task.status.value,
        "progress": task.progress,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.completed_at),
        "duration_s": _rounded(task.duration),
        "queue_wait_s": _rounded(task.queue_wait),
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        # While PENDING until a planned start (delay=/eta=) or its next attempt (a retry).
        "next_attempt_at": _iso(task.next_attempt_at),
        "key": task.key,
        "worker": worker,
        "error_type": error_type,
        "error_code": error_code,
        "error": None if error is None else str(error),
        "trace_id": trace_id,
        "trace_url": trace_url,
    }
    if options.show_payloads:
        view["args"] = None if args is None else _payload(args)
        view["kwargs"] = None if kwargs is None else _payload(kwargs)
        view["result"] = _payload(task.result) if task.status.value == "COMPLETED" else None
    return view
