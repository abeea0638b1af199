"""``observable-tasks top``, driven in a pseudo-terminal against a console served by uvicorn."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from helpers import LiveServer
from test_console_api import make_app

from observable_tasks.console.top import render


def _read_until(fd: int, needles: list[str], timeout: float = 20.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
            text = seen.decode(errors="replace")
            if all(needle in text for needle in needles):
                return text
    raise AssertionError(f"never saw {needles} in {seen[-2000:]!r}")


def test_top_shows_running_tasks_counts_and_failures_and_quits_on_q(
    live_server: Callable[[Any], LiveServer],
) -> None:
    server = live_server(make_app(None))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/make", json={"kind": "gate", "gate": "top", "name": "crunching"})
        client.post("/make", json={"kind": "fail", "name": "bad\x1b]0;pwned\x07name"})
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "observable_tasks.cli", "top", "--url",
             f"{server.url}/console", "--interval", "0.2"],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        try:
            text = _read_until(master, ["crunching", "50.0%", "FAILED 1", "ValueError"])
            assert "\x1b]0;" not in text  # a task's name cannot send escape codes
            assert "bad?]0;pwned?name" in text
            os.write(master, b"q")
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            os.close(master)
        client.post("/release/top")


def test_render_is_plain_text() -> None:
    screen = render(
        {"counts": {"RUNNING": 1}, "total": 1},
        [{"name": "x" * 300, "progress": 33.3}],
        [],
        width=60,
    )
    assert all(len(line) <= 60 for line in screen.splitlines())
    assert "33.3%" in screen
    assert "RUNNING 1" in screen


def test_render_shows_the_attempt_of_a_retried_task() -> None:
    screen = render(
        {"counts": {"RUNNING": 2, "FAILED": 1}, "total": 3},
        [
            {"name": "first-try", "progress": 10, "attempts": 1, "max_attempts": 3},
            {"name": "second-try", "progress": 20, "attempts": 2, "max_attempts": 3},
        ],
        [{"name": "gave-up", "attempts": 3, "max_attempts": 3, "error_type": "OSError"}],
        width=120,
    )
    rows = {line.split()[0]: line for line in screen.splitlines() if line.startswith("  ")}
    assert "attempt" not in rows["first-try"]
    assert "attempt 2/3" in rows["second-try"]
    assert "attempt 3/3" in rows["gave-up"]
