"""examples/loadgen.py: its mix and pacing (fake clock), and a real run against the demo app."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stack_support import REPO, DemoProcess, wait_for

SCRIPT = REPO / "examples" / "loadgen.py"
_spec = importlib.util.spec_from_file_location("loadgen", SCRIPT)
assert _spec is not None
assert _spec.loader is not None
loadgen = importlib.util.module_from_spec(_spec)
sys.modules["loadgen"] = loadgen
_spec.loader.exec_module(loadgen)


def test_parse_mix() -> None:
    assert loadgen.parse_mix("complete=3, fail=1") == {"complete": 3.0, "fail": 1.0}
    assert set(loadgen.parse_mix(loadgen.DEFAULT_MIX)) == set(loadgen.OUTCOMES)
    for bad in ("", "complete", "explode=1", "fail=-1", "fail=0"):
        with pytest.raises(ValueError):  # noqa: PT011 - the messages vary
            loadgen.parse_mix(bad)


def test_every_outcome_maps_to_a_valid_simulate_body() -> None:
    rng = random.Random(0)
    for outcome in loadgen.OUTCOMES:
        body = loadgen.simulate_body(outcome, rng)
        assert body["outcome"] in {"complete", "fail", "task_error", "timeout", "slow"}
        assert body["seconds"] > 0
        if outcome == "timeout":
            assert 0 < body["timeout"] < body["seconds"]
    with pytest.raises(ValueError, match="unknown outcome"):
        loadgen.simulate_body("explode", rng)


class _Recorder(loadgen.LoadGenerator):  # type: ignore[misc, name-defined]
    """No network: records what would be sent, at which (fake) time."""

    def __init__(self, **kwargs: Any) -> None:
        self.now = 1000.0
        self.sent: list[tuple[float, str, dict[str, Any]]] = []
        super().__init__("http://127.0.0.1:9", clock=lambda: self.now, sleep=self._sleep, **kwargs)

    def _sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.sent.append((self.now, path, body or {}))
        return {"task_id": f"t{len(self.sent)}", "success": True}


def test_rate_is_bounded_and_every_outcome_comes_first() -> None:
    gen = _Recorder(rate=10, burst_every=0, seed=1, log=lambda _line: None)
    summary = gen.run(count=40)
    creations = [(t, body) for t, path, body in gen.sent if path == "/simulate"]
    assert len(creations) == 40
    times = [t for t, _ in creations]
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(times))
    assert times[-1] - times[0] == pytest.approx(3.9)
    assert set(summary.created) == set(loadgen.OUTCOMES)
    first = Counter(
        "cancel" if body["seconds"] == 60.0 else body["outcome"] for _, body in creations[:6]
    )
    assert first == Counter(loadgen.OUTCOMES)  # short runs still cover every outcome
    # Every cancel-task got cancelled (at the latest when the run ended).
    cancels = [path for _, path, _ in gen.sent if path.endswith("/cancel")]
    assert len(cancels) == summary.created["cancel"] == summary.cancelled


def test_bursts_of_slow_tasks() -> None:
    gen = _Recorder(rate=5, burst_every=2, burst_size=7, seed=2, log=lambda _line: None)
    summary = gen.run(duration=5)
    slow = [b for _, p, b in gen.sent if p == "/simulate" and b["outcome"] == "slow"]
    assert len(slow) >= 14  # two bursts of 7 in 5 s
    assert summary.errors == 0


@pytest.mark.e2e
def test_a_real_run_creates_every_outcome(tmp_path: Path) -> None:
    with DemoProcess(tmp_path) as demo:
        argv = [sys.executable, str(SCRIPT), "--url", demo.url, "--count", "6", "--rate", "50"]
        argv += ["--burst-every", "0", "--slow-seconds", "0.2", "--seed", "3", "--wait-ready", "5"]
        argv += ["--mix", "complete=1,fail=1,task_error=1,timeout=1,slow=1,cancel=1"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary == {
            "created": {o: 1 for o in sorted(loadgen.OUTCOMES)},
            "cancelled": 1,
            "errors": 0,
        }
        want = {"completed": 2, "failed": 2, "timeout": 1, "cancelled": 1}
        wait_for(lambda: demo.statuses() == want, timeout=20, what=f"task statuses {want}")
