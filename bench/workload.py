"""The workload every variant runs: a trivial coroutine, so that only per-task overhead shows."""

from __future__ import annotations


async def work(x: int) -> int:
    return x * 2


def expected_sum(n: int) -> int:
    """Sum of ``work(i)`` for ``i`` in ``range(n)``: every variant's results are checked."""
    return n * (n - 1)
