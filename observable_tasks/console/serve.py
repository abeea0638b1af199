"""``observable-tasks console --backend URL``: the console alone, for a Redis deployment.

A small Nexios app with a web-only manager (it runs no tasks: the deployment's workers do)
whose console reads and cancels the tasks of every process of the queue.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["AUTH_ENV", "add_console_parser", "build_console_app", "run_console"]

AUTH_ENV = "OBSERVABLE_TASKS_CONSOLE_AUTH"
"""``user:password`` for the console's basic auth (keeps the password out of ``ps``)."""


def build_console_app(
    backend: Any,
    *,
    path: str = "/console",
    basic_auth: tuple[str, str] | None = None,
    read_only: bool = False,
    trace_url: str | None = None,
    queue: str = "default",
    prefix: str = "ot",
) -> Any:
    """The app: ``/`` redirects to ``path``, where the console is (no telemetry, no worker)."""
    from nexios import NexiosApp
    from nexios.http import Request, Response
    from nexios.routing import Route

    from observable_tasks import TaskConfig, setup_tasks
    from observable_tasks.backends.redis import RedisBackend

    from .options import ConsoleOptions

    app = NexiosApp(title="observable-tasks console")
    if isinstance(backend, str):
        backend = RedisBackend(backend, queue=queue, prefix=prefix, execute=False)
    options = ConsoleOptions(
        path=path, basic_auth=basic_auth, read_only=read_only, trace_url=trace_url
    )
    setup_tasks(app, TaskConfig(), telemetry=False, backend=backend, execute=False, console=options)
    if path != "/":

        async def home(request: Request, response: Response) -> Any:
            root = str(request.scope.get("root_path") or "").rstrip("/")
            return response.redirect(root + path + "/")

        app.add_route(Route("/", home, methods=["get", "head"], exclude_from_schema=True))
    return app


def add_console_parser(commands: Any) -> None:
    """The ``console`` subcommand of ``observable-tasks``."""
    parser = commands.add_parser(
        "console",
        help="serve the task console alone, for a Redis deployment",
        description="Serve the task console (page, admin API, live events) for the tasks of a "
        "Redis queue. It runs no tasks itself.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        default="$OBSERVABLE_TASKS_BACKEND",
        metavar="URL",
        help="Redis URL of the tasks (redis://[:password@]host:6379/0, rediss:// for TLS)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8001, help="TCP port to listen on")
    parser.add_argument("--path", default="/console", help="URL path of the console")
    parser.add_argument("--queue", default="default", help="Redis queue name")
    parser.add_argument(
        "--basic-auth",
        metavar="USER:PASS",
        default=None,
        help=f"require HTTP basic auth (better: env {AUTH_ENV}, not shown by ps)",
    )
    parser.add_argument("--read-only", action="store_true", help="no cancel button or API")
    parser.add_argument(
        "--trace-url",
        default=None,
        metavar="TEMPLATE",
        help="link per task, e.g. http://localhost:16686/trace/{trace_id}",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")


def _pair(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--basic-auth must be USER:PASSWORD (both non-empty)")
    return user, password


def run_console(args: argparse.Namespace) -> int:
    import uvicorn

    from observable_tasks.backends.redis.client import redact

    backend = args.backend
    if backend == "$OBSERVABLE_TASKS_BACKEND":
        backend = os.environ.get("OBSERVABLE_TASKS_BACKEND", "").strip()
    if not backend.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(
            "observable-tasks console needs a Redis --backend URL (the memory backend's "
            "tasks live in their own process: mount the console there with "
            f"setup_tasks(app, console=True)); got {redact(backend) if backend else 'none'}"
        )
    auth = args.basic_auth or os.environ.get(AUTH_ENV) or None
    try:
        app = build_console_app(
            backend,
            path=args.path,
            basic_auth=_pair(auth) if auth else None,
            read_only=args.read_only,
            trace_url=args.trace_url,
            queue=args.queue,
        )
    except ValueError as exc:
        raise SystemExit(f"observable-tasks console: {exc}") from None
    from observable_tasks.cli import _check_redis

    _check_redis(backend)
    print(
        f"observable-tasks console for {redact(backend)} at "
        f"http://{args.host}:{args.port}{args.path}/",
        flush=True,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    return 0
