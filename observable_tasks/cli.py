"""``observable-tasks`` command line: ``demo`` serves the demo app; ``worker`` runs Redis tasks;
``console`` serves the task console alone."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["main"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_MAX_BODY_BYTES = 1024 * 1024  # demo.DEFAULT_MAX_BODY_BYTES (not imported: --help stays quick)
BACKEND_ENV = "OBSERVABLE_TASKS_BACKEND"  # backends.redis.BACKEND_ENV (not imported, as above)
_FROM_ENV = f"${BACKEND_ENV}"  # --backend's default, read at run time: --help shows no password
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("observable-tasks")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout that is not installed
        return "unknown"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"observable-tasks: {name}={value!r} is not a whole number") from None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every ``demo`` option shows its default in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="observable-tasks",
        description="Background tasks for Nexios apps, with spans, metrics and logs per task.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="serve the demo app (every example of the API page)",
        description="Serve the demo app with uvicorn. Defaults come from the environment "
        "variables named below when they are set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server worker processes; >1 turns on Prometheus multiprocess mode (they share "
        "their tasks only on a Redis --backend)",
    )
    demo.add_argument(
        "--log-level",
        default="info",
        choices=_LOG_LEVELS,
        help="level of uvicorn's and the standard library's log lines",
    )
    demo.add_argument(
        "--max-concurrent-tasks",
        type=int,
        default=_env_int("DEMO_MAX_CONCURRENT_TASKS", 50),
        help="tasks each executing process runs at once, the rest wait "
        "(env DEMO_MAX_CONCURRENT_TASKS)",
    )
    demo.add_argument(
        "--max-body-bytes",
        type=int,
        default=_env_int("DEMO_MAX_BODY_BYTES", _MAX_BODY_BYTES),
        help="larger request bodies are refused with 413 (env DEMO_MAX_BODY_BYTES)",
    )
    demo.add_argument(
        "--debug",
        action="store_true",
        default=_env_flag("DEMO_DEBUG"),
        help="Nexios debug mode: a 500 shows the traceback; never on a reachable server "
        "(env DEMO_DEBUG=1)",
    )
    demo.add_argument(
        "--backend",
        default=_FROM_ENV,
        metavar="URL",
        help="where tasks live: 'memory' (each process its own tasks) or a Redis URL "
        "(redis://[:password@]host:6379/0, rediss:// for TLS) that every worker process and "
        f"machine shares; 'memory' when {BACKEND_ENV} is not set either",
    )
    demo.add_argument(
        "--no-worker",
        action="store_true",
        default=_env_flag("DEMO_NO_WORKER"),
        help="web only: these processes run no tasks, dedicated workers do "
        "('observable-tasks worker --backend URL observable_tasks.demo'); needs a Redis "
        "--backend (env DEMO_NO_WORKER=1)",
    )
    from observable_tasks.worker_main import add_worker_parser

    add_worker_parser(commands)
    from observable_tasks.console.serve import add_console_parser

    add_console_parser(commands)
    from observable_tasks.console.top import add_top_parser

    add_top_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``observable-tasks`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "worker":
        from observable_tasks.worker_main import run_worker

        return run_worker(args)
    if args.command == "console":
        from observable_tasks.console.serve import run_console

        return run_console(args)
    if args.command == "top":
        from observable_tasks.console.top import run_top

        return run_top(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _demo(args: argparse.Namespace) -> int:
    import uvicorn

    from observable_tasks.demo import make_data_dir
    from observable_tasks.telemetry import configure_logging
    from observable_tasks.telemetry.logs import capture_stdlib_logging

    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.max_concurrent_tasks < 1:
        raise SystemExit("--max-concurrent-tasks must be >= 1")
    if args.max_body_bytes < 1:
        raise SystemExit("--max-body-bytes must be >= 1")
    backend = _backend(args.backend)
    if args.no_worker and backend == "memory":
        raise SystemExit(
            "--no-worker needs a Redis backend (--backend redis://host:6379/0): with the "
            "memory backend no process would run the tasks"
        )
    if args.workers > 1 and backend == "memory":
        print(
            f"observable-tasks: warning: {args.workers} worker processes with the memory "
            "backend: each process has its own tasks, so a lookup answered by another process "
            "is a 404; share them with --backend redis://host:6379/0",
            file=sys.stderr,
        )
    if backend != "memory":
        _check_redis(backend)
    os.environ[BACKEND_ENV] = backend  # setup_tasks reads it in every worker process
    os.environ["DEMO_NO_WORKER"] = "1" if args.no_worker else "0"
    # Environment variables reach every worker process (they import the app anew).
    os.environ["DEMO_MAX_CONCURRENT_TASKS"] = str(args.max_concurrent_tasks)
    os.environ["DEMO_MAX_BODY_BYTES"] = str(args.max_body_bytes)
    os.environ["DEMO_DEBUG"] = "1" if args.debug else "0"
    os.environ["DEMO_LOG_LEVEL"] = args.log_level
    # This process' own lines (uvicorn's start-up, the worker supervisor) in the app's format.
    configure_logging()
    capture_stdlib_logging(logging.DEBUG if args.log_level == "trace" else args.log_level)
    made: list[str] = []
    if not os.environ.get("DEMO_DATA_DIR"):
        # One private folder for every worker, so that they all see the same files.
        data_dir = make_data_dir()
        made.append(data_dir)
        os.environ["DEMO_DATA_DIR"] = data_dir
    supplied = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if supplied and os.path.isdir(supplied) and os.listdir(supplied):
        print(
            f"observable-tasks: warning: PROMETHEUS_MULTIPROC_DIR={supplied} is not empty; "
            "metric files of earlier runs will be added into the totals",
            file=sys.stderr,
        )
    if args.workers > 1 and not supplied:
        # prometheus_client needs this set before the workers start, and empty.
        metrics_dir = tempfile.mkdtemp(prefix="observable-tasks-metrics-")
        made.append(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "observable_tasks.demo:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=None,  # logging is ours (capture_stdlib_logging), in each worker too
            # Open console pages (event streams) must not hold up Ctrl+C for long.
            timeout_graceful_shutdown=5,
        )
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _backend(value: str) -> str:
    """``--backend`` checked: ``"memory"`` or a Redis URL (errors never show a password)."""
    if value == _FROM_ENV:
        value = os.environ.get(BACKEND_ENV, "").strip() or "memory"
    if value == "memory" or value.startswith(_REDIS_SCHEMES):
        return value
    from observable_tasks.backends.redis.client import redact

    raise SystemExit(
        f"--backend must be 'memory' or a Redis URL (redis://, rediss://, unix://), "
        f"got {redact(value)!r}"
    )


def _check_redis(url: str) -> None:
    """Exit with a clear message now if Redis cannot be reached: the app's start-up hooks are
    run by Nexios, which logs a failing one and serves on (every create_task would fail)."""
    import redis
    from redis.exceptions import RedisError

    from observable_tasks.backends.redis.client import redact

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except RedisError as exc:
        raise SystemExit(
            f"observable-tasks: cannot reach Redis at {redact(url)} ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        client.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
