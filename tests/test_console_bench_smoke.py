"""``python -m bench.console_page`` runs (tiny sizes): it serves, pages, counts and measures."""

from __future__ import annotations

import pytest

from bench import console_page


def test_console_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert console_page.main(["--tasks", "300", "--repeat", "3", "--views", "5"]) == 0
    out = capsys.readouterr().out
    assert '"backend": "memory"' in out
    assert '"first_page_ms"' in out
