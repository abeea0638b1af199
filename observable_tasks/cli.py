"""``observable-tasks`` command line: ``observable-tasks demo`` serves the demo app."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``observable-tasks`` console script."""
    parser = argparse.ArgumentParser(prog="observable-tasks")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="serve the demo app (every example of the API page)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server worker processes; >1 turns on Prometheus multiprocess mode",
    )
    demo.add_argument("--log-level", default="info", help="uvicorn's own log level")
    demo.add_argument(
        "--max-concurrent-tasks",
        type=int,
        default=None,
        help="the demo's concurrency limit (default 50; env DEMO_MAX_CONCURRENT_TASKS)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _demo(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.max_concurrent_tasks is not None:
        if args.max_concurrent_tasks < 1:
            raise SystemExit("--max-concurrent-tasks must be >= 1")
        # An environment variable reaches every worker process (they import the app anew).
        os.environ["DEMO_MAX_CONCURRENT_TASKS"] = str(args.max_concurrent_tasks)
    made = None
    supplied = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if supplied and os.path.isdir(supplied) and os.listdir(supplied):
        print(
            f"observable-tasks: warning: PROMETHEUS_MULTIPROC_DIR={supplied} is not empty; "
            "metric files of earlier runs will be added into the totals",
            file=sys.stderr,
        )
    if args.workers > 1 and not supplied:
        # prometheus_client needs this set before the workers start, and empty.
        made = tempfile.mkdtemp(prefix="observable-tasks-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    try:
        uvicorn.run(
            "observable_tasks.demo:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
