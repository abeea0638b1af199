"""structlog events for every task, and task ids bound into each task's own context.

``task_id`` and ``task_name`` (and the task span's ``trace_id``/``span_id``) are bound with
``structlog.contextvars`` inside the task's context, so the user's own structlog calls inside a task
carry them too (structlog's default pipeline merges contextvars). Each task runs in a fresh
context, so nothing leaks back into the request that created it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer

from observable_tasks.errors import TaskTimeoutError
from observable_tasks.status import TaskStatus
from observable_tasks.telemetry import _render
from observable_tasks.telemetry._common import error_type, trace_context_from_headers
from observable_tasks.telemetry._render import UtcIsoTimestamper
from observable_tasks.telemetry.names import (
    LOG_EVENTS,
    LOG_FIELDS,
    RELEASED,
    RETRYING,
    STATUS_LABELS,
)
from observable_tasks.telemetry.pipeline import AttemptAbandoned, TelemetryPart

if TYPE_CHECKING:
    from observable_tasks.task import Task

__all__ = ["TaskLogger", "add_trace_context", "capture_stdlib_logging", "configure_logging"]

_F = LOG_FIELDS
_get_running_loop = asyncio.events._get_running_loop  # None outside a loop, no exception
# Module constants: compared per log line (attribute lookups on the logging module are not free).
_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
_PENDING = TaskStatus.PENDING


class TaskLogger(TelemetryPart):
    """Logs part: structlog events for each task's life, task ids bound while it runs.

    ``level`` (e.g. ``TaskConfig.log_level``) drops events below it before any work is done.
    ``task.started`` is logged at ``started_level``: DEBUG by default, so a task writes two
    lines at INFO, its arrival (``task.created``) and its outcome (``task.completed``, ...), as
    Celery does; the outcome line carries ``queue_wait_s`` (what the started line added) and
    ``duration_s``. ``started_level=logging.INFO`` logs it at INFO as well.
    Progress is logged when it moved by at least ``progress_step`` points, and at 100.

    The last logged progress is remembered per running task, for at most ``max_tracked``
    tasks (the oldest entry is dropped beyond: that task may then log one extra progress
    line); an entry goes when its task ends.
    """

    name = "logs"

    def __init__(
        self,
        logger: Any = None,
        *,
        level: int = logging.INFO,
        progress_step: float = 10.0,
        max_tracked: int = 1024,
        started_level: int = logging.DEBUG,
    ) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1, got {max_tracked!r}")
        if started_level not in (_DEBUG, _INFO):
            raise ValueError(f"started_level must be DEBUG or INFO, got {started_level!r}")
        self._log = logger if logger is not None else structlog.get_logger("observable_tasks")
        # Our own logger is structlog's lazy proxy, which pays a failed attribute lookup and a
        # bind() on every call; it is swapped for the logger it gives at the first task event
        # when structlog caches loggers on first use anyway (configure_logging does).
        self._lazy = logger is None
        self._level = level
        self._started_level = started_level
        self._step = progress_step
        self._max_tracked = max_tracked
        # Insertion-ordered: the first key is the oldest entry.
        self._last_progress: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the tasks' loop, seen in begin()

    @property
    def tracked_progress(self) -> int:
        """How many tasks' last logged progress is remembered now (at most ``max_tracked``)."""
        return len(self._last_progress)

    @staticmethod
    def _fields(task: Task) -> dict[str, Any]:
        return {
            _F.TASK_ID: task.id,
            _F.TASK_NAME: task.name,
            _F.FUNCTION: task.function,
            _F.STATUS: STATUS_LABELS[task.status._value_],  # not .value: a descriptor call
        }

    # -- observer hooks -----------------------------------------------------------------------

    @staticmethod
    def _fields_outside(task: Task) -> dict[str, Any]:
        """Fields for events outside execution: the trace is that of the task's "send" span."""
        fields = TaskLogger._fields(task)
        headers = task._headers  # not .headers: that would create a dict for nothing
        found = trace_context_from_headers(headers) if headers else None
        if found is not None:  # all three: add_trace_context has nothing to look up
            fields[_F.TRACE_ID], fields[_F.SPAN_ID], fields[_F.TRACE_FLAGS] = found
        return fields

    def _bind_lazy(self) -> None:
        self._lazy = False
        if structlog.get_config()["cache_logger_on_first_use"]:
            self._log = self._log.bind()

    def on_created(self, task: Task) -> None:
        if self._lazy:
            self._bind_lazy()
        if self._level <= _INFO:
            fields = self._fields_outside(task)
            if task._next_wall is not None:  # delay=/eta=: when it may start
                fields[_F.DELAY] = round(max(0.0, task._next_wall - task._wall_created), 3)
            if task.key is not None:
                fields[_F.KEY] = task.key
            self._log.info(LOG_EVENTS["created"], **fields, timeout_s=task.timeout)

    def observes(self, hook: str) -> bool:
        if hook == "on_evicted":
            return self._level <= _DEBUG  # its only use is a DEBUG line
        if hook == "on_progress":
            return self._level <= _INFO  # no progress line is logged: nothing to keep either
        return super().observes(hook)

    def on_cancelled_pending(self, task: Task) -> None:
        self._last_progress.pop(task.id, None)  # a pending task may have reported progress
        if self._level <= _INFO:
            self._log.info(LOG_EVENTS["cancelled"], **self._fields_outside(task), was_running=False)

    def on_progress(self, task: Task, progress: float) -> None:
        seen = self._last_progress
        last = seen.get(task.id, -math.inf)
        if progress < 100.0 and progress - last < self._step:
            return
        seen[task.id] = progress
        if len(seen) > self._max_tracked:
            self._drop_oldest()
        loop = self._loop
        if loop is not None and _get_running_loop() is not loop:
            # From a worker thread, this may come right after the task's end() (a timed-out or
            # cancelled sync task's thread runs on): check again on the loop, once the task's
            # ending is complete.
            try:
                loop.call_soon_threadsafe(self._forget_if_done, task)
            except RuntimeError:  # the loop is closed: nothing of it runs any more
                seen.pop(task.id, None)
        if self._level <= _INFO:
            fields = self._fields(task)
            fields[_F.PROGRESS] = round(progress, 2)
            self._log.info(LOG_EVENTS["progress"], **fields)

    def on_loop_stall(self, task: Task | None, seconds: float) -> None:
        # From the watchdog's thread, while the loop is blocked: no task context is current.
        if self._level <= _WARNING:
            fields = self._fields_outside(task) if task is not None else {}
            fields[_F.BLOCKED] = round(seconds, 3)
            self._log.warning(LOG_EVENTS["loop_stalled"], **fields)

    def _drop_oldest(self) -> None:
        seen = self._last_progress
        while len(seen) > self._max_tracked:
            try:
                seen.pop(next(iter(seen)), None)
            except (RuntimeError, StopIteration):  # changed by another thread meanwhile
                continue

    def _forget_if_done(self, task: Task) -> None:
        if task.is_done:
            self._last_progress.pop(task.id, None)

    def on_evicted(self, task: Task) -> None:
        self._last_progress.pop(task.id, None)
        if self._level <= _DEBUG:
            self._log.debug(LOG_EVENTS["evicted"], **self._fields_outside(task))

    # -- around each execution ---------------------------------------------------------------

    def begin(self, task: Task) -> dict[str, Any]:
        if self._lazy:
            self._bind_lazy()
        bound: dict[str, Any] = {_F.TASK_ID: task.id, _F.TASK_NAME: task.name}
        self._loop = _get_running_loop()
        ctx = trace.get_current_span().get_span_context()
        valid = ctx.is_valid  # a property that compares both ids: read once
        if valid:
            # Only the trace id is bound: the span id of a user's log line is that of the span
            # current at the call (add_trace_context), which may be a child of the task's span.
            bound[_F.TRACE_ID] = format(ctx.trace_id, "032x")
        # The task's own context: these bindings end with the task and never reach the request.
        structlog.contextvars.bind_contextvars(**bound)
        fields = bound  # the bindings are already a copy; the line fields extend the dict
        fields[_F.FUNCTION] = task.function
        if valid:
            fields[_F.SPAN_ID] = format(ctx.span_id, "016x")
            # All three ids given: add_trace_context need not look the span up per line.
            fields[_F.TRACE_FLAGS] = format(ctx.trace_flags, "02x")
        if task.attempts > 1:
            fields[_F.ATTEMPT] = task.attempts  # a retry (a first attempt is not worth a field)
        fields[_F.QUEUE_WAIT] = task.queue_wait  # on the outcome line too (started is DEBUG)
        started = self._started_level
        if self._level <= started:
            if started == _INFO:
                self._log.info(LOG_EVENTS["started"], **fields, status="running")
            else:
                self._log.debug(LOG_EVENTS["started"], **fields, status="running")
        return fields

    def end(
        self, task: Task, fields: dict[str, Any], error: BaseException | None, elapsed: float
    ) -> None:
        if self._last_progress:
            self._last_progress.pop(task.id, None)
        level = self._level
        if isinstance(error, AttemptAbandoned):
            if level <= _WARNING:
                self._log.warning(
                    LOG_EVENTS["released"], **fields, status=RELEASED, duration_s=elapsed
                )
            return
        if error is None:
            if level <= _INFO:
                self._log.info(
                    LOG_EVENTS["completed"], **fields, status="completed", duration_s=elapsed
                )
        elif task.status is _PENDING:  # failed, and another attempt is planned
            if level <= _WARNING:
                self._retrying(task, fields, error, elapsed)
        elif isinstance(error, TaskTimeoutError):
            if level <= _WARNING:
                self._log.warning(
                    LOG_EVENTS["timeout"], **fields, status="timeout", duration_s=elapsed,
                    timeout_s=error.timeout,
                )  # fmt: skip
        elif isinstance(error, asyncio.CancelledError):
            if level <= _INFO:
                self._log.info(
                    LOG_EVENTS["cancelled"], **fields, status="cancelled", was_running=True,
                    duration_s=elapsed,
                )  # fmt: skip
        elif isinstance(error, Exception) and level <= _ERROR:
            self._log.error(
                LOG_EVENTS["failed"], **fields, status="failed", duration_s=elapsed,
                error_type=error_type(error), error=str(error), exc_info=error,
            )  # fmt: skip

    def _retrying(
        self, task: Task, fields: dict[str, Any], error: BaseException, elapsed: float
    ) -> None:
        fields[_F.ATTEMPT] = task.attempts
        delay: float | None = None
        next_at = task.next_attempt_at
        if task._next_wall is not None:
            delay = round(max(0.0, task._next_wall - time.time()), 3)
        self._log.warning(
            LOG_EVENTS["retrying"], **fields, status=RETRYING, duration_s=elapsed,
            max_attempts=task.max_attempts, delay_s=delay,
            next_attempt_at=next_at.isoformat() if next_at else None,
            error_type=error_type(error), error=str(error),
        )  # fmt: skip


def add_trace_context(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: top-level ``trace_id``, ``span_id``, ``trace_flags`` of the current
    span (OTel's convention for trace context in non-OTLP logs). No span, no fields.

    An event that names all three already (the task events do) is left as it is, without
    looking the current span up."""
    if _F.TRACE_FLAGS in event_dict and _F.TRACE_ID in event_dict and _F.SPAN_ID in event_dict:
        return event_dict
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        # An event that names its span (e.g. task.created names the task's "send" span, not
        # the request's) keeps it; only missing fields are formatted (this runs per log line).
        if _F.TRACE_ID not in event_dict:
            event_dict[_F.TRACE_ID] = format(ctx.trace_id, "032x")
        if _F.SPAN_ID not in event_dict:
            event_dict[_F.SPAN_ID] = format(ctx.span_id, "016x")
        if _F.TRACE_FLAGS not in event_dict:
            event_dict[_F.TRACE_FLAGS] = format(ctx.trace_flags, "02x")
    return event_dict


def _console_tracebacks(show_locals: bool) -> structlog.typing.ExceptionRenderer:
    """The console renderer's exception formatter; locals only when asked for.

    structlog's default is Rich's traceback *with* locals when Rich is installed (and
    better-exceptions, which prints variable values, when only that is): without
    ``show_locals``, Rich without locals, else structlog's plain formatter (no locals).
    """
    dev = structlog.dev
    if show_locals:
        return dev.default_exception_formatter
    if getattr(dev, "rich", None) is not None:
        return dev.RichTracebackFormatter(show_locals=False)
    return dev.plain_traceback


def configure_logging(
    *,
    json: bool | None = None,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    cache_loggers: bool = True,
    show_locals: bool = False,
) -> None:
    """Configure structlog for an app using observable_tasks (call it once, at start-up).

    ``json=True`` renders one JSON object per line (production); ``False`` renders coloured
    console lines (development); ``None`` picks JSON unless ``stream`` is a terminal (env
    ``LOG_FORMAT=json|console`` overrides). ``cache_loggers=False`` keeps
    ``structlog.testing.capture_logs`` working. The library never calls this on import.

    An exception (``task.failed`` carries one) is rendered as its type, message and frames
    (file, line, function), never with the frames' local variables: they hold whatever the
    code had at hand (passwords, tokens, personal data) and make every line kilobytes long.
    ``show_locals=True`` adds them, for debugging only (JSON: values as structlog abbreviates
    them; console: only with Rich installed, whose traceback shows them).
    """
    import os

    out = stream if stream is not None else sys.stdout
    if json is None:
        fmt = os.environ.get("LOG_FORMAT", "").lower()
        json = fmt == "json" or (fmt != "console" and not out.isatty())
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcIsoTimestamper(),  # TimeStamper(fmt="iso", utc=True)'s format, formatted once a second
        add_trace_context,
    ]
    if json:
        # Not structlog.processors.dict_tracebacks: its transformer shows locals by default.
        tracebacks = ExceptionDictTransformer(show_locals=show_locals)
        processors += [
            structlog.processors.ExceptionRenderer(tracebacks),
            structlog.processors.JSONRenderer(serializer=_render.dumps),  # orjson, as ASCII
        ]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(exception_formatter=_console_tracebacks(show_locals))
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache_loggers,
    )


def capture_stdlib_logging(level: int | str = logging.INFO) -> None:
    """Send the standard library's logging through the structlog pipeline set up by
    :func:`configure_logging` (call that first), so that one stream carries one format.

    The root logger gets a single handler whose ``structlog.stdlib.ProcessorFormatter`` runs the
    configured processors (context, level, timestamp, trace ids) on foreign records, adds
    ``logger``, and renders them with the configured renderer (JSON lines under
    ``LOG_FORMAT=json``) to the same stream. Handlers that would print plain text are removed:
    every handler of the ``uvicorn``, ``nexios`` and ``granian`` loggers (Nexios' own logger has
    a stderr handler and propagates too, which would print its lines twice) and, on any logger,
    stream handlers writing to stdout or stderr. Those loggers then propagate to the root.
    Records below ``level`` are dropped. Calling it again replaces the earlier handler.

    Servers that configure logging themselves must be told not to (``uvicorn.run(...,
    log_config=None)``); with several worker processes, call it in each worker after the server
    set its logging up (e.g. where the app is built).
    """
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown log level {level!r}")
        level = named
    config = structlog.get_config()
    chain = list(config["processors"])
    renderer = chain.pop() if chain else structlog.processors.JSONRenderer()
    stream = getattr(config["logger_factory"], "_file", None) or sys.stdout
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *chain],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    std_streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    std_streams.add(id(stream))

    def prints_plain_text(handler: logging.Handler) -> bool:
        if getattr(handler, "_observable_tasks_capture", False):
            return True  # ours, from an earlier call
        return (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and id(handler.stream) in std_streams
        )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.setLevel(level)
    handler._observable_tasks_capture = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if prints_plain_text(old):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    servers = ("uvicorn", "nexios", "granian")
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue  # a placeholder
        owned = name.split(".", 1)[0] in servers
        removed = False
        for old in list(logger.handlers):
            if owned or prints_plain_text(old):
                logger.removeHandler(old)
                removed = True
        if owned or (removed and not logger.handlers):
            logger.propagate = True
