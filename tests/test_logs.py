"""structlog events: task ids everywhere, bound into the task only, levels and throttling."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from typing import Any

import pytest
import structlog
from telemetry_kit import captured_structlog, instrumented

from observable_tasks import TaskConfig, TaskManager, TaskStatus, update_task_progress
from observable_tasks.telemetry import TaskLogger, configure_logging

log = structlog.get_logger("user")


async def test_lifecycle_events_carry_task_fields_and_user_logs_carry_the_task_id() -> None:
    async def work(task_id: str) -> int:
        log.info("user.step", n=1)
        return 1

    with instrumented() as kit:
        structlog.contextvars.bind_contextvars(request_id="r-1")
        task = await kit.manager.create_task(work, name="nice name")
        await kit.manager.wait_for_task(task.id)
        # Nothing the task bound leaks back into the creating context.
        assert "task_id" not in structlog.contextvars.get_contextvars()
        events = [e["event"] for e in kit.events() if e.get("task_id") == task.id]
        # Arrival and outcome at INFO (task.started is DEBUG by default, see below).
        assert events == ["task.created", "user.step", "task.completed"]
        created, user, completed = [e for e in kit.events() if e.get("task_id") == task.id]
        assert created["task_name"] == "nice name"
        assert created["task_function"] == task.function
        assert created["status"] == "pending"
        assert completed["status"] == "completed"
        assert completed["duration_s"] >= 0
        assert completed["queue_wait_s"] >= 0  # what the started line told
        assert completed["task_function"] == task.function
        assert user["task_name"] == "nice name"
        assert "request_id" not in user  # the task runs in a fresh context
        trace_ids = {e["trace_id"] for e in (created, user, completed)}
        assert len(trace_ids) == 1
        assert user["span_id"] == completed["span_id"]  # the process span
        assert created["span_id"] != completed["span_id"]  # the send span


@pytest.mark.parametrize("how", ["log_started", "debug_level"])
async def test_task_started_line_on_request(how: str) -> None:
    async def work() -> int:
        log.info("user.step")
        return 1

    if how == "log_started":  # at INFO, beside the default INFO lines
        kit_cm = instrumented(log_started=True)
    else:  # TaskConfig(log_level="DEBUG"): every event, task.started at DEBUG
        kit_cm = instrumented(TaskConfig(log_level="DEBUG"))
    with kit_cm as kit:
        task = await kit.manager.create_task(work)
        await kit.manager.wait_for_task(task.id)
        events = [e for e in kit.events() if e.get("task_id") == task.id]
        assert [e["event"] for e in events] == [
            "task.created",
            "task.started",
            "user.step",
            "task.completed",
        ]
        created, started, user, _ = events
        assert started["log_level"] == ("info" if how == "log_started" else "debug")
        assert started["status"] == "running"
        assert started["queue_wait_s"] >= 0
        assert started["task_function"] == task.function
        assert user["span_id"] == started["span_id"]  # the process span
        assert created["span_id"] != started["span_id"]  # the send span


def test_started_level_is_debug_or_info() -> None:
    assert TaskLogger(level=10, started_level=20)._started_level == 20
    with pytest.raises(ValueError, match="started_level"):
        TaskLogger(started_level=30)


async def test_failure_and_timeout_events() -> None:
    async def fails() -> None:
        raise ValueError("broken input")

    async def slow() -> None:
        await asyncio.sleep(5)

    with instrumented() as kit:
        failed = await kit.manager.create_task(fails)
        timed = await kit.manager.create_task(slow, timeout=0.05)
        await kit.manager.wait_for_task(failed.id)
        await kit.manager.wait_for_task(timed.id)
        (f,) = kit.events("task.failed")
        assert f["task_id"] == failed.id
        assert f["error_type"] == "ValueError"
        assert f["error"] == "broken input"
        assert isinstance(f["exc_info"], ValueError)
        assert f["log_level"] == "error"
        (t,) = kit.events("task.timeout")
        assert t["task_id"] == timed.id
        assert t["log_level"] == "warning"
        assert t["timeout_s"] == 0.05


async def test_log_level_from_config_is_honoured() -> None:
    async def ok() -> None:
        return None

    async def fails() -> None:
        raise ValueError("x")

    with instrumented(TaskConfig(log_level="WARNING")) as kit:
        a = await kit.manager.create_task(ok)
        b = await kit.manager.create_task(fails)
        await kit.manager.wait_for_task(a.id)
        await kit.manager.wait_for_task(b.id)
        assert [e["event"] for e in kit.events()] == ["task.failed"]


async def test_progress_is_logged_in_steps_not_per_update() -> None:
    async def steps(task_id: str) -> None:
        for i in range(1, 201):
            await update_task_progress(task_id, i / 2)

    with instrumented() as kit:
        task = await kit.manager.create_task(steps)
        await kit.manager.wait_for_task(task.id)
        progress = [e["progress"] for e in kit.events("task.progress")]
        assert progress[-1] == 100.0
        assert 10 <= len(progress) <= 11
        assert progress == sorted(progress)
        assert task.progress == 100.0


async def test_cancel_while_pending_is_logged_with_the_send_trace() -> None:
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    with instrumented(TaskConfig(max_concurrent_tasks=1)) as kit:
        first = await kit.manager.create_task(blocked)
        second = await kit.manager.create_task(blocked)
        assert await kit.manager.cancel_task(second.id)
        gate.set()
        await kit.manager.wait_for_task(first.id)
        (cancelled,) = [e for e in kit.events("task.cancelled") if e["task_id"] == second.id]
        assert cancelled["was_running"] is False
        (created,) = [e for e in kit.events("task.created") if e["task_id"] == second.id]
        assert cancelled["trace_id"] == created["trace_id"]


def test_configure_logging_renders_json_with_trace_ids() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    stream = io.StringIO()
    try:
        configure_logging(json=True, stream=stream, cache_loggers=False)
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("s") as span:
            structlog.get_logger("x").info("hello", k=1)
        structlog.get_logger("x").debug("hidden")  # below the INFO default
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "hello"
    assert record["level"] == "info"
    assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert record["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "timestamp" in record


def test_configure_logging_console_and_bad_level() -> None:
    stream = io.StringIO()
    try:
        configure_logging(json=False, stream=stream, cache_loggers=False)
        structlog.get_logger().info("readable", a=1)
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging(level="LOUD")
    finally:
        structlog.reset_defaults()
    assert "readable" in stream.getvalue()
    assert not stream.getvalue().lstrip().startswith("{")


def test_captured_structlog_helper_restores_defaults() -> None:
    with captured_structlog():
        pass
    assert not structlog.is_configured()


@pytest.mark.parametrize("cache", [True, False])
async def test_the_default_logger_follows_structlogs_caching(cache: bool) -> None:
    # The default logger is structlog's lazy proxy, bound once at the first task event only
    # when structlog would cache it itself: without caching, a reconfiguration still counts.
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from observable_tasks.telemetry import instrument

    first, second = io.StringIO(), io.StringIO()
    manager = TaskManager(TaskConfig(shutdown_timeout=1.0))
    instrument(manager, tracer_provider=TracerProvider(), registry=CollectorRegistry())
    try:
        configure_logging(json=True, stream=first, cache_loggers=cache)
        task = await manager.create_task(echo_number, 1)
        await manager.wait_for_task(task.id)
        configure_logging(json=True, stream=second, cache_loggers=cache)
        task = await manager.create_task(echo_number, 2)
        await manager.wait_for_task(task.id)
    finally:
        await manager.shutdown(timeout=1.0)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    events = [json.loads(line)["event"] for line in first.getvalue().splitlines()]
    later = [json.loads(line)["event"] for line in second.getvalue().splitlines()]
    if cache:  # frozen at first use, as structlog's own cache does
        assert events == ["task.created", "task.completed"] * 2
        assert later == []
    else:
        assert events == later == ["task.created", "task.completed"]


async def echo_number(x: int) -> int:
    return x


def _run_failing_task(**logging_options: Any) -> str:
    """Everything a real app writes for one task that raises with a secret in a local."""
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from observable_tasks import TaskManager
    from observable_tasks.telemetry import instrument

    def leaky(user: str) -> None:
        password = "hunter2"
        raise PermissionError(f"login refused for {user} ({len(password)} chars)")

    async def main() -> None:
        manager = TaskManager(TaskConfig(shutdown_timeout=1.0))
        instrument(manager, tracer_provider=TracerProvider(), registry=CollectorRegistry())
        try:
            task = await manager.create_task(leaky, "alice")
            await manager.wait_for_task(task.id)
        finally:
            await manager.shutdown(timeout=1.0)

    stream = io.StringIO()
    try:
        configure_logging(stream=stream, cache_loggers=False, **logging_options)
        asyncio.run(main())
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    return stream.getvalue()


def test_failed_task_json_line_has_the_traceback_but_no_local_variables() -> None:
    out = _run_failing_task(json=True)
    (failed,) = [r for r in map(json.loads, out.splitlines()) if r["event"] == "task.failed"]
    assert failed["error_type"] == "PermissionError"
    assert failed["error"] == "login refused for alice (7 chars)"
    (stack,) = failed["exception"]
    assert stack["exc_type"] == "PermissionError"
    assert stack["exc_value"] == "login refused for alice (7 chars)"
    assert stack["frames"][-1]["name"] == "leaky"
    assert all("locals" not in frame for frame in stack["frames"])
    assert "hunter2" not in out
    assert len(json.dumps(failed)) < 2000


def test_local_variables_only_on_explicit_opt_in() -> None:
    out = _run_failing_task(json=True, show_locals=True)
    (failed,) = [r for r in map(json.loads, out.splitlines()) if r["event"] == "task.failed"]
    assert failed["exception"][0]["frames"][-1]["locals"]["password"] == "'hunter2'"


def test_console_renderer_prints_the_traceback_without_locals() -> None:
    out = _run_failing_task(json=False)
    assert "task.failed" in out
    assert "PermissionError: login refused for alice" in out
    assert "in leaky" in out
    assert "hunter2" not in out


class _Reporters:
    """Plain ``def`` tasks that report progress from their threads until released (so a
    timed-out task's thread goes on reporting while the task ends), and a way to await
    that every thread that started has stopped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._live = 0
        self._cond = threading.Condition()

    def work(self, task_id: str) -> None:
        with self._cond:
            self._live += 1
        try:
            i = 0
            while not self.release.is_set():
                i += 1
                update_task_progress(task_id, float(i % 101))
        except LookupError:  # evicted from history: nothing more to report
            pass
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    async def stopped(self) -> None:
        self.release.set()

        def wait() -> None:
            with self._cond:
                self._cond.wait_for(lambda: self._live == 0)

        await asyncio.to_thread(wait)


async def test_progress_state_of_sync_tasks_ending_while_their_threads_report_is_released() -> None:
    """Timed-out sync tasks whose threads keep reporting progress while the task ends, over
    several rounds: nothing is left behind once every thread has stopped."""
    rounds, per_round = 5, 24
    with instrumented(TaskConfig(max_concurrent_tasks=4, max_task_history=16)) as kit:
        logger = kit.parts.logger
        assert logger is not None
        for _ in range(rounds):
            reporters = _Reporters()
            tasks = [
                await kit.manager.create_task(reporters.work, timeout=0.02)
                for _ in range(per_round)
            ]
            for task in tasks:
                await kit.manager.wait_for_task(task.id)
                assert logger.tracked_progress <= 1024
            await reporters.stopped()
            await asyncio.sleep(0)  # one loop turn: the threads' last checks were queued before
            assert {t.status for t in tasks} == {TaskStatus.TIMEOUT}
            assert logger.tracked_progress == 0


async def test_progress_state_is_bounded_even_with_more_running_tasks() -> None:
    logger = TaskLogger(structlog.testing.CapturingLogger(), max_tracked=4)
    manager = TaskManager(TaskConfig(max_concurrent_tasks=20, shutdown_timeout=1.0))
    manager.add_observer(logger)
    manager.add_middleware(logger)
    gate, all_reported = asyncio.Event(), asyncio.Event()
    reported = 0

    async def reports(task_id: str) -> None:
        nonlocal reported
        await update_task_progress(task_id, 50.0)
        reported += 1
        assert logger.tracked_progress <= 4
        if reported == 20:
            all_reported.set()
        await gate.wait()

    try:
        tasks = [await manager.create_task(reports) for _ in range(20)]
        await all_reported.wait()
        assert logger.tracked_progress == 4
        gate.set()
        for task in tasks:
            await manager.wait_for_task(task.id)
        assert logger.tracked_progress == 0
        with pytest.raises(ValueError, match="max_tracked"):
            TaskLogger(max_tracked=0)
    finally:
        await manager.shutdown(timeout=1.0)


async def test_above_info_progress_is_neither_logged_nor_tracked() -> None:
    async def reports(task_id: str) -> None:
        await update_task_progress(task_id, 50.0)
        assert logger.tracked_progress == 0

    with instrumented(TaskConfig(log_level="WARNING")) as kit:
        logger = kit.parts.logger
        assert logger is not None
        task = await kit.manager.create_task(reports)
        await kit.manager.wait_for_task(task.id)
        assert task.status is TaskStatus.COMPLETED
        assert task.progress == 50.0
        assert kit.events() == []
