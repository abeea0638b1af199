"""A real server in a subprocess (uvicorn, ``observable-tasks demo``) for end-to-end tests.

:class:`ServerProcess` starts a command that listens on ``port``, sends its stdout and stderr to
files, waits (bounded) until ``GET {url}{ready_path}`` answers, and always stops it: a signal
(SIGINT by default, like Ctrl+C), a bounded wait, then SIGKILL of its whole process group.
:meth:`ServerProcess.json_lines` parses the JSON log lines of its stdout (other lines, such as
uvicorn's access log or Nexios' ``Resolving dependency`` prints, are skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from helpers import free_port, wait_until

__all__ = ["ServerProcess", "serve", "scrape_metrics", "metric_value"]

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A server command run in its own process group (so that its workers can be killed too)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str],
        log_dir: Path,
        name: str = "server",
        ready_path: str = "/metrics",
        startup_timeout: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.env = dict(env)
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            with httpx.Client(timeout=2.0) as client:
                wait_until(
                    lambda: self._answers(client),
                    timeout=self.startup_timeout,
                    interval=0.05,
                    message=f"{self.argv[:4]} to answer on port {self.port}",
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self, client: httpx.Client) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {self.proc.returncode} before answering:\n{self.stderr()}"
            )
        try:
            return client.get(self.url + self.ready_path).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int | None:
        """Signal the server, wait up to ``timeout`` s, then SIGKILL its process group.

        Returns the exit code of a clean stop, ``None`` if it had to be killed.
        """
        proc = self.proc
        if proc is None:
            return self.returncode
        self.proc = None
        try:
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    self.returncode = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.returncode = None
            else:
                self.returncode = proc.returncode
        finally:
            if self.returncode != 0:
                # Not a clean stop: nothing of this server (its workers included) outlives it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        return self.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line that is a JSON object (the structlog output), in order."""
        lines = []
        for line in self.stdout().splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(
    args: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str | None] | None = None,
    name: str = "server",
    uvicorn: bool = True,
    startup_timeout: float = 30.0,
) -> Iterator[ServerProcess]:
    """Serve on a free loopback port; stopped (bounded, then killed) when the block ends.

    ``env`` is added to this process' environment (a ``None`` value removes that variable).

    With ``uvicorn=True`` the command is ``python -m uvicorn <args> --port P``, else
    ``observable-tasks <args> --port P`` (the console script installed next to this Python,
    else ``python -m observable_tasks.cli``).
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in (env or {}).items():  # None: unset it
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    if uvicorn:
        launcher = [sys.executable, "-m", "uvicorn", *args, "--host", "127.0.0.1"]
    else:
        script = Path(sys.executable).parent / "observable-tasks"
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "observable_tasks.cli"]
        launcher = [*cli, *args]
    for attempt in range(3):
        # The free port may be taken by someone else before the server binds it: try another.
        port = free_port()
        server = ServerProcess(
            [*launcher, "--port", str(port)],
            port=port,
            env=full_env,
            log_dir=log_dir,
            name=name,
            startup_timeout=startup_timeout,
        )
        try:
            server.start()
        except RuntimeError:
            if attempt == 2 or "address already in use" not in server.stderr().lower():
                raise
            continue
        break
    try:
        yield server
    finally:
        server.stop()


def scrape_metrics(
    client: httpx.Client, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``GET url`` (a /metrics endpoint) parsed: ``{(sample name, labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get(url)
    assert response.status_code == 200, response.text
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_value(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= lbls)
