"""``observable-tasks top --url http://host:port/console``: a live terminal view of the tasks.

It reads the console's admin API (standard library only: ``urllib``) every ``--interval``
seconds and redraws in place: counts per status, the running tasks with progress bars, the
latest failures. ``q`` or Ctrl-C quits. Everything a task supplies is printed with control
characters replaced, so a task name cannot move the cursor or retitle the terminal.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["add_top_parser", "render", "run_top"]

_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def _clean(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _bar(progress: float, width: int = 20) -> str:
    value = max(0.0, min(100.0, float(progress or 0)))
    filled = round(value / 100 * width)
    return "█" * filled + "░" * (width - filled) + f" {value:5.1f}%"


def _attempt(task: dict[str, Any]) -> str:
    """`` attempt 2/3`` for a task past its first attempt (a retry), else nothing."""
    attempts = task.get("attempts") or 0
    if not isinstance(attempts, int) or attempts < 2:
        return ""
    return f"  attempt {attempts}/{task.get('max_attempts') or '?'}"


def render(counts: dict[str, Any], running: list[dict[str, Any]], failed: list[dict[str, Any]],
           width: int = 100, url: str = "") -> str:  # fmt: skip
    """The screen as text (no escape codes)."""
    lines = [_clean(f"observable-tasks top — {url} — q quits", width)]
    line = "  ".join(f"{s} {counts.get('counts', {}).get(s, 0)}" for s in _STATUSES)
    lines += [_clean(line + f"  total {counts.get('total', 0)}", width), ""]
    lines.append(_clean(f"RUNNING ({len(running)})", width))
    name_width = max(10, width - 45)
    for task in running:
        name = _clean(task.get("name"), name_width)
        row = f"  {name:<{name_width}} {_bar(task.get('progress', 0))}{_attempt(task)}"
        lines.append(_clean(row, width))
    if not running:
        lines.append("  (none)")
    lines += ["", "LATEST FAILURES"]
    for task in failed:
        error = f"{task.get('error_type') or ''}: {task.get('error') or ''}"
        lines.append(_clean(f"  {task.get('name')}{_attempt(task)}  {error}", width))
    if not failed:
        lines.append("  (none)")
    return "\n".join(lines)


class _Api:
    def __init__(self, url: str, basic_auth: str | None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if basic_auth:
            token = base64.b64encode(basic_auth.encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.timeout = timeout

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(self.url + path + query, headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            return json.loads(answer.read())

    def screen(self, width: int) -> str:
        counts = self.get("/api/counts")
        running = self.get("/api/tasks", status="RUNNING", limit="20")["tasks"]
        failed = self.get("/api/tasks", status="FAILED", limit="5")["tasks"]
        return render(counts, running, failed, width, self.url)


@contextlib.contextmanager
def _raw(stream: TextIO) -> Iterator[bool]:
    """cbreak mode (keys without Enter, no echo) when ``stream`` is a terminal."""
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(args: argparse.Namespace) -> int:
    auth = args.basic_auth or os.environ.get("OBSERVABLE_TASKS_CONSOLE_AUTH") or None
    api = _Api(args.url, auth)
    out = sys.stdout
    out.write("\x1b[?25l")  # hide the cursor
    try:
        with _raw(sys.stdin) as keys:
            while True:
                width = shutil.get_terminal_size((100, 30)).columns
                try:
                    screen = api.screen(width)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    screen = _clean(f"cannot read {api.url}: {exc}", width)
                out.write("\x1b[H\x1b[2J" + screen.replace("\n", "\r\n") + "\r\n")
                out.flush()
                deadline = time.monotonic() + args.interval
                while (left := deadline - time.monotonic()) > 0:
                    if not keys:
                        time.sleep(left)
                        break
                    ready, _, _ = select.select([sys.stdin], [], [], left)
                    if ready and sys.stdin.read(1) in ("q", "Q"):
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\r\n")  # the cursor back
        out.flush()


def add_top_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "top",
        help="a live terminal view of the tasks (reads a console's admin API)",
        description="Counts per status, running tasks with progress bars and the latest "
        "failures, redrawn in place. q or Ctrl-C quits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url", required=True, help="the console, e.g. http://127.0.0.1:8000/console"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument(
        "--basic-auth",
        metavar="USER:PASS",
        default=None,
        help="HTTP basic auth (better: env OBSERVABLE_TASKS_CONSOLE_AUTH)",
    )
