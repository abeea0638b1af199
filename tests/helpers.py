"""Helpers shared by the test modules (import as ``from helpers import ...``).

- :func:`free_port`: a free TCP port on loopback.
- :func:`wait_until` / :func:`async_wait_until`: bounded polling (for external servers only;
  inside one event loop, await an event or ``wait_for_task`` instead).
- :class:`LiveServer`: a real uvicorn server for an ASGI app, in a background thread.
- :func:`poll_task`: poll ``GET {base}/status/{id}`` until the task has a final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import uvicorn

T = TypeVar("T")

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T:
    """Async :func:`wait_until` (for state another thread or server changes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


class LiveServer:
    """A real uvicorn server on a free loopback port, run in a background thread.

    Use as a context manager; ``url`` is the base URL. Lifespan events run (so ``setup_tasks``
    starts and shuts down its manager), and leaving the block stops the server, bounded.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0):
        self.host = host
        self.port = free_port()
        self.startup_timeout = startup_timeout
        config = uvicorn.Config(
            app, host=host, port=self.port, lifespan="on", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout=self.startup_timeout,
            message="uvicorn to start",
        )
        if not self.server.started:
            raise RuntimeError("uvicorn exited before it started (see its log above)")
        # Started means listening; one real request proves it answers.
        wait_until(self._answers, timeout=self.startup_timeout, message="uvicorn to answer")
        return self

    def _answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/__readiness_probe__", timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "uvicorn did not stop within 15 s"


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[LiveServer]:
    """``with live_server(app) as server: httpx.get(server.url + "/...")``."""
    with LiveServer(app) as server:
        yield server


def poll_task(
    client: httpx.Client,
    task_id: str,
    *,
    timeout: float = 10.0,
    path: str = "/status/{task_id}",
) -> dict[str, Any]:
    """Poll a status endpoint until the task's status is final; return the last JSON body."""
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        response = client.get(path.format(task_id=task_id))
        assert response.status_code == 200, response.text
        last = response.json()
        return last["status"] in FINAL

    wait_until(done, timeout=timeout, message=f"task {task_id} to finish (last: {last})")
    return last


async def gather_bounded(*aws: Awaitable[T], timeout: float = 10.0) -> list[T]:
    """``asyncio.gather`` that fails the test instead of hanging forever."""
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
