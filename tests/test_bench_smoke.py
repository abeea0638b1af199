"""The benchmark harness keeps working: its smoke mode yields a row for every variant.

Nothing about time is asserted (CI machines are noisy); only that every variant ran, produced
checked results, and that every section and target was reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (
    "raw-asyncio",
    "nexios-contrib",
    "taskiq",
    "taskiq-otel-prom",
    "ours-core",
    "ours-instrumented",
    "sdk-floor",
    "sdk-floor-in-manager",
    "sdk-floor-in-asyncio",
    "ours-noop-sdk",
    "sdk-floor-noop",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    # A subprocess: the peers configure process-wide state (logging, environment, registries).
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_variant_has_a_result_row(smoke: tuple[dict, str]) -> None:
    results, report = smoke
    rows = results["throughput"]
    assert set(rows) == set(VARIANTS)
    for key in VARIANTS:
        assert rows[key]["median_us"] > 0, key
        assert f"`{key}`" in report


def test_every_section_and_target_is_reported(smoke: tuple[dict, str]) -> None:
    results, report = smoke
    assert results["instrumented_available"] is True
    assert {"ours-core", "ours-instrumented", "nexios-contrib"} <= set(results["memory"])
    assert {"ours-core", "ours-instrumented", "nexios-contrib"} <= set(results["latency"])
    assert results["flat_memory"]["max_known_tasks"] <= results["flat_memory"]["history"]
    assert set(results["scrape"]["statuses"]) == {
        "completed", "failed", "timeout", "cancelled", "running", "pending"
    }  # fmt: skip
    assert results["scrape"]["task_labels"] == results["scrape"]["functions"]
    verdicts = [t["verdict"] for t in results["targets"]]
    assert len(verdicts) == 8
    assert set(verdicts) <= {"PASS", "MISS"}
    assert report.count("PASS") + report.count("MISS") >= 8


def test_instrumented_runs_emit_their_telemetry(smoke: tuple[dict, str]) -> None:
    results, _ = smoke
    calls = results["calls_per_task"]
    assert calls["spans"] == 2
    assert calls["log_lines"] >= 1
    assert calls["counter_inc"] >= 1
    assert calls["histogram_observe"] >= 1
    info = results["throughput"]["ours-instrumented"]["info"]
    assert info["spans_exported"] > 0
    assert info["log_lines"] > 0
    # The no-op pair really is no-op: nothing exported, nothing rendered.
    for key in ("ours-noop-sdk", "sdk-floor-noop"):
        noop = results["throughput"][key]["info"]
        assert (noop["spans_exported"], noop["log_lines"]) == (0, 0), key


def test_the_overhead_is_split_into_own_code_and_sdk_calls(smoke: tuple[dict, str]) -> None:
    _, report = smoke
    assert "the library's own code" in report
    assert "The SDK calls themselves cost" in report
    assert "from a bare observer and middleware in the same manager" in report
    assert "The same calls in plain asyncio tasks" in report


def test_profile_mode_runs(tmp_path: Path) -> None:
    """``python -m bench --profile VARIANT`` (pyinstrument) builds the variants as the run does."""
    pytest.importorskip("pyinstrument")
    args = ["--smoke", "--profile", "ours-instrumented", "--profile-out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pyinstrument profile of ours-instrumented" in proc.stdout
    assert (tmp_path / "ours-instrumented.txt").exists()
