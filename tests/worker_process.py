"""``observable-tasks worker`` as a real process, for tests (``from worker_process import ...``).

Output goes to files (never a pipe that could fill up); :meth:`WorkerProcess.wait_ready` polls
stdout, bounded, for the ``worker_started`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

__all__ = ["APPS", "ROOT", "WorkerProcess", "worker_env"]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker: this checkout and ``tests/apps`` importable."""
    env = dict(os.environ)
    env.pop("OBSERVABLE_TASKS_BACKEND", None)
    for name in [n for n in env if n.startswith("OTEL_")]:
        env.pop(name)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(APPS)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """One worker process: ``python -m observable_tasks.cli worker ...``."""

    def __init__(
        self,
        directory: Path,
        backend: str | None,
        *,
        modules: tuple[str, ...] = ("redis_tasks",),
        queue: str = "default",
        lease: float = 1.0,
        concurrency: int = 10,
        shutdown_timeout: float = 5.0,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = directory / f"worker-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        args = [sys.executable, "-m", "observable_tasks.cli", "worker"]
        if backend is not None:
            args += ["--backend", backend]
        args += ["--queue", queue, "--lease", str(lease), "--concurrency", str(concurrency)]
        args += ["--shutdown-timeout", str(shutdown_timeout), *extra, *modules]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=err, env=env or worker_env(), cwd=ROOT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines of stdout, parsed."""
        out = []
        for line in self.stdout().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_ready(self, timeout: float = 20.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while '"worker_started"' not in self.stdout():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode}: {self.stdout()}\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready: {self.stdout()}\n{self.stderr()}")
            time.sleep(0.02)
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful) and wait; SIGKILL if it does not end in ``timeout``."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
