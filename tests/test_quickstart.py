"""The README's quick start, as a new user runs it: a fresh virtualenv, a plain ``pip install``
of this checkout (no extras), then ``observable-tasks demo``.

It catches a dependency the demo needs but a plain install lacks (the test environment has every
extra installed, so no other test can). It downloads from PyPI; pip's cache makes reruns fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest
from helpers import free_port, poll_task
from server_process import REPO, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _clean_env() -> dict[str, str]:
    """This process' environment without anything that would let the venv see our packages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR"}
        and not k.startswith("PIP_REQUIRE")
    }
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def test_readme_quick_start_in_a_fresh_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bindir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = bindir / "python"
    env = _clean_env()
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # The venv sees only what it installed: not this checkout, not the test environment.
    where = subprocess.run(
        [str(python), "-c", "import observable_tasks, nexios; print(observable_tasks.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout

    script = bindir / "observable-tasks"
    env.update(DEMO_TIME_SCALE="0.01", OTEL_TRACES_EXPORTER="none", PYTHONUNBUFFERED="1")
    port = free_port()
    with (
        ServerProcess(
            [str(script), "demo", "--port", str(port)],
            port=port,
            env=env,
            log_dir=tmp_path,
            name="quickstart",
            startup_timeout=60,
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "# TYPE" in metrics.text
        created = client.post("/simulate", json={"outcome": "complete", "seconds": 0.05})
        assert created.status_code == 200, created.text
        final = poll_task(client, created.json()["task_id"])
        assert final["status"] == "COMPLETED"
    assert server.returncode == 0, server.stderr()
