"""Task functions that test workers import by module name (``PYTHONPATH=tests/apps``).

Side effects go to files named by the caller, so that a test can count executions across
processes (one line per execution, with the pid that ran it).
"""

from __future__ import annotations

import asyncio
import os
import time


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


async def noop() -> None:
    """Does nothing (the benchmark's task)."""


async def add(a: int, b: int) -> int:
    return a + b


async def run_for(path: str, seconds: float) -> int:
    """Append ``started <pid>`` to ``path``, sleep ``seconds``, append ``done <pid>``; the pid."""
    _append(path, f"started {os.getpid()}")
    await asyncio.sleep(seconds)
    _append(path, f"done {os.getpid()}")
    return os.getpid()


async def until_cancelled(path: str, seconds: float = 60.0) -> str:
    """Append ``started <pid>``; when cancelled, append ``cancelled <pid> <wall time>``."""
    _append(path, f"started {os.getpid()}")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _append(path, f"cancelled {os.getpid()} {time.time():.6f}")
        raise
    return "not cancelled"


async def touch(path: str) -> str:
    _append(path, f"ran {os.getpid()}")
    return path


async def stamp(path: str) -> str:
    """Append ``ran <pid> <wall time>`` (when a delayed or retried task really started)."""
    _append(path, f"ran {os.getpid()} {time.time():.6f}")
    return path


def _attempts_in(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.startswith("attempt"))
    except FileNotFoundError:
        return 0


async def flaky(path: str, failures: int) -> str:
    """Append ``attempt <n> <pid> <wall time>``; the first ``failures`` attempts raise
    ``ConnectionResetError`` (a ``ConnectionError``: a policy's ``on`` matches it by its MRO)."""
    n = _attempts_in(path) + 1
    _append(path, f"attempt {n} {os.getpid()} {time.time():.6f}")
    if n <= failures:
        raise ConnectionResetError(f"attempt {n} lost its connection")
    return f"ok after {n}"
