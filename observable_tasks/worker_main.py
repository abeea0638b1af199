"""``observable-tasks worker``: a dedicated worker process for the Redis backend.

It imports the modules it is given (their functions become the ones it may run), builds a
:class:`~observable_tasks.TaskManager` over a :class:`~observable_tasks.backends.redis.RedisBackend`
with ``execute=True``, instruments it (JSON logs to stdout, tracing from the ``OTEL_*``
environment, Prometheus metrics, optionally served on ``--metrics-port``), and runs until SIGTERM
or SIGINT. Then it stops taking tasks, lets running ones finish up to ``--shutdown-timeout`` and
hands the rest back to the queue without using an attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_worker_parser", "run_worker"]

BACKEND_ENV = "OBSERVABLE_TASKS_BACKEND"  # backends.redis.BACKEND_ENV (not imported: quick --help)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_worker_parser(commands: Any) -> argparse.ArgumentParser:
    """Register the ``worker`` subcommand on ``commands`` (an argparse subparsers action)."""
    worker: argparse.ArgumentParser = commands.add_parser(
        "worker",
        help="run tasks from a Redis backend (a dedicated worker, on any machine)",
        description="Run tasks queued in Redis by the app's web processes. Each MODULE is "
        "imported first; the functions defined in it are the ones this worker may run (add "
        "others with --allow). SIGTERM/SIGINT: stop taking tasks, let running ones finish up to "
        "--shutdown-timeout, hand the rest back to the queue.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    worker.add_argument(
        "--backend",
        default=f"${BACKEND_ENV}",  # read at run time: --help never shows a password
        help="Redis URL: redis://[:password@]host:6379/0, rediss:// for TLS",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=100,
        help="tasks run at once in this process (max_concurrent_tasks)",
    )
    worker.add_argument(
        "--lease",
        type=_positive_float,
        default=30.0,
        help="seconds before a task of a lost worker is run again elsewhere (renewed while "
        "it runs)",
    )
    worker.add_argument("--queue", default="default", help="name of the queue to take tasks from")
    worker.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        help="attempts of a task whose workers were lost before it ends FAILED",
    )
    worker.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="MODULE",
        help="also allow functions of this module or package (repeatable; not imported)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds running tasks may take to finish after SIGTERM before they are handed back",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (none if not given)",
    )
    worker.add_argument(
        "--metrics-host", default="0.0.0.0", help="address the metrics server listens on"
    )
    worker.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="level of the JSON log lines on stdout",
    )
    worker.add_argument(
        "--no-tracing",
        action="store_true",
        help="no spans; otherwise OTEL_* configure them (OTLP when OTEL_EXPORTER_OTLP_ENDPOINT "
        "is set, OTEL_TRACES_EXPORTER=console for stderr; nothing exported if neither is set)",
    )
    worker.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE",
        help="module whose task functions this worker runs (imported first, from the current "
        "directory or PYTHONPATH)",
    )
    return worker


def _import_modules(modules: Sequence[str]) -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `observable-tasks worker app.tasks` from the app's root
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SystemExit(f"observable-tasks worker: cannot import {name!r}: {exc}") from None


def _backend_url(value: str) -> str:
    if value == f"${BACKEND_ENV}":
        value = os.environ.get(BACKEND_ENV, "").strip()
        if not value:
            raise SystemExit(f"observable-tasks worker: give --backend URL or set {BACKEND_ENV}")
    return value


def _tracing_exporter() -> str | None:
    """``none`` when the environment configures no exporter (no spans on stderr by default)."""
    names = (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    )
    return None if any(os.environ.get(n) for n in names) else "none"


def run_worker(args: argparse.Namespace) -> int:
    """Run the worker described by parsed ``args`` until SIGTERM/SIGINT."""
    args.backend = _backend_url(args.backend)
    from observable_tasks.telemetry import configure_logging
    from observable_tasks.telemetry.logs import capture_stdlib_logging

    configure_logging(json=True, level=args.log_level, stream=sys.stdout)
    capture_stdlib_logging(args.log_level)
    _import_modules(args.modules)
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import structlog

    from observable_tasks import TaskConfig, TaskManager
    from observable_tasks.backends.redis import RedisBackend
    from observable_tasks.telemetry import configure_tracing, instrument

    log = structlog.get_logger("observable_tasks.worker")
    try:
        backend = RedisBackend(
            args.backend,
            queue=args.queue,
            execute=True,
            lease=args.lease,
            max_attempts=args.max_attempts,
            allow=[*args.modules, *args.allow],
        )
    except ValueError as exc:
        raise SystemExit(f"observable-tasks worker: {exc}") from None
    config = TaskConfig(
        max_concurrent_tasks=args.concurrency,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level.upper(),
    )
    manager = TaskManager(config, backend=backend)
    provider = None
    if not args.no_tracing:
        provider = configure_tracing("observable-tasks-worker", exporter=_tracing_exporter())
    instrumentation = instrument(manager, tracing=provider is not None, tracer_provider=provider)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        backend.check_connection()  # a started worker rides out outages; a wrong URL fails now
        await manager.start()
    except Exception as exc:  # Redis unreachable at start-up: say so, exit non-zero
        log.error("worker_start_failed", backend=backend.url, error=f"{type(exc).__name__}: {exc}")
        return 1
    log.info(
        "worker_started",
        backend=backend.url,
        queue=args.queue,
        worker=backend.worker.id if backend.worker is not None else None,
        concurrency=args.concurrency,
        lease=args.lease,
        modules=list(args.modules),
        pid=os.getpid(),
    )
    await stop.wait()
    log.info("worker_stopping", signal=received[0] if received else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)  # a second signal ends the process at once
    await manager.shutdown()
    instrumentation.close()
    if provider is not None:
        provider.shutdown()
    log.info("worker_stopped")
    return 0
