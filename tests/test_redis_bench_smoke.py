"""bench.redis_throughput keeps working on our own systems (no peer venvs: nothing installed).

Nothing about time is asserted; only that a run of each of our variants finishes and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import redis_server_available

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed"),
]


def test_throughput_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.redis_throughput", "--systems", "ours,ours-bare",
         "--tasks", "200", "--repeat", "1", "--json", "--cache-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["system"] for r in rows] == ["ours", "ours-bare"]
    assert all(r["tasks_per_s"] > 0 and r["commands_per_task"] > 0 for r in rows)
    assert "| ours-bare |" in done.stdout
    assert "round trips/task" in done.stdout
    assert list(tmp_path.iterdir()) == []  # no peer venv was made for our own systems
