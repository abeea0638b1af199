"""Measurements other than throughput: memory per task, memory over time, latency, scrape."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import statistics
import sys
import time
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

from bench.workload import work

__all__ = [
    "retained_memory",
    "retained_memory_nexios",
    "flat_memory",
    "create_latency",
    "scrape_time",
    "rss_bytes",
]

MakeManager = Callable[..., Any]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


async def _run_waves(manager: Any, n: int, wave: int, start: int = 0) -> None:
    for lo in range(start, start + n, wave):
        tasks = [await manager.create_task(work, i) for i in range(lo, min(lo + wave, start + n))]
        for t in tasks:
            await manager.wait_for_task(t.id)


async def retained_memory(
    make_manager: MakeManager, n: int, wave: int, flush: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Bytes (tracemalloc) per finished task kept in history, ``n`` tasks retained."""
    manager = make_manager(n, max_task_history=n + 1000)
    await manager.start()
    await _run_waves(manager, 200, 100, start=-200)  # warm: label children, loggers, caches
    if flush is not None:
        flush()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await _run_waves(manager, n, wave)
        if flush is not None:
            flush()  # queued spans are not retained per task: let the processor drain them
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        top = tracemalloc.take_snapshot().statistics("lineno")[:8]
    finally:
        tracemalloc.stop()
    retained = len(manager.list_tasks())
    await manager.shutdown()
    return {
        "tasks": n,
        "retained": retained,
        "bytes_per_task": grown / n,
        "top_allocations": [
            {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "bytes": s.size}
            for s in top
        ],
    }


async def retained_memory_nexios(n: int, wave: int) -> dict[str, Any]:
    """The same measurement for nexios-contrib's TaskManager (it keeps every task)."""
    from nexios_contrib.tasks.config import TaskConfig as NxConfig
    from nexios_contrib.tasks.manager import TaskManager as NxManager

    manager = NxManager(config=NxConfig(max_concurrent_tasks=n + 1))
    await manager.start()
    await _run_waves(manager, 200, 100, start=-200)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await _run_waves(manager, n, wave)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    retained = len(manager.list_tasks()) - 200
    await manager.shutdown()
    return {"tasks": n, "retained": retained, "bytes_per_task": grown / n}


async def flat_memory(
    make_manager: MakeManager,
    total: int,
    wave: int,
    history: int,
    samples: int = 10,
    flush: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Memory after every ``total/samples`` tasks, history bounded at ``history`` tasks.

    Python heap is read as ``sys.getallocatedblocks()`` plus RSS; no tracing, so the run goes at
    full speed. Growth is judged from the first sample taken after history is full.
    """
    manager = make_manager(total, max_task_history=history)
    await manager.start()
    step = max(wave, total // samples)
    points: list[dict[str, Any]] = []
    done = 0
    started = time.perf_counter()
    while done < total:
        count = min(step, total - done)
        await _run_waves(manager, count, wave, start=done)
        done += count
        if flush is not None:
            flush()
        gc.collect()
        points.append(
            {
                "tasks": done,
                "rss_bytes": rss_bytes(),
                "blocks": sys.getallocatedblocks(),
                "known_tasks": len(manager.list_tasks()),
            }
        )
    elapsed = time.perf_counter() - started
    await manager.shutdown()
    full = [p for p in points if p["tasks"] >= 2 * history] or points[-1:]
    first, last = full[0], points[-1]
    span = max(last["tasks"] - first["tasks"], 1)
    return {
        "total": total,
        "history": history,
        "seconds": elapsed,
        "points": points,
        "rss_growth_bytes": last["rss_bytes"] - first["rss_bytes"],
        "blocks_growth": last["blocks"] - first["blocks"],
        "rss_growth_per_task": (last["rss_bytes"] - first["rss_bytes"]) / span,
        "from_tasks": first["tasks"],
        "max_known_tasks": max(p["known_tasks"] for p in points),
    }


async def create_latency(
    make_manager: MakeManager | None, running: int, samples: int, nexios: bool = False
) -> dict[str, Any]:
    """Latency of ``await create_task(work, i)`` while ``running`` other tasks are in flight."""
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    if nexios:
        from nexios_contrib.tasks.config import TaskConfig as NxConfig
        from nexios_contrib.tasks.manager import TaskManager as NxManager

        manager: Any = NxManager(config=NxConfig(max_concurrent_tasks=running + samples + 1))
    else:
        assert make_manager is not None
        manager = make_manager(running + samples, max_task_history=running + samples + 1)
    await manager.start()
    holders = [await manager.create_task(hold) for _ in range(running)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lat: list[int] = []
    for i in range(samples):
        t0 = time.perf_counter_ns()
        await manager.create_task(work, i)
        lat.append(time.perf_counter_ns() - t0)
        await asyncio.sleep(0)  # let it run: the loop keeps moving while we sample
    still = sum(1 for h in holders if not h.is_done)
    gate.set()
    for h in holders:
        await manager.wait_for_task(h.id)
    await manager.shutdown()
    lat.sort()
    return {
        "running": still,
        "samples": samples,
        "p50_us": lat[len(lat) // 2] / 1000,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000,
        "max_us": lat[-1] / 1000,
    }


async def _scrape_job(mode: str) -> str:
    if mode == "fail":
        raise ValueError("planned failure")
    if mode == "sleep":
        await asyncio.sleep(60)
    return mode


def _labelled_function(i: int) -> Callable[..., Any]:
    """A distinct task function ``bench.measure.scrape_job_NNN`` with its own code object.

    Its own code object, not only its own ``__qualname__``: a library may cache per code object.
    """
    name = f"scrape_job_{i:03d}"
    extra = {"co_qualname": name} if sys.version_info >= (3, 11) else {}
    code = _scrape_job.__code__.replace(co_name=name, **extra)
    fn = types.FunctionType(code, _scrape_job.__globals__, name)
    fn.__qualname__ = name
    fn.__annotations__ = dict(_scrape_job.__annotations__)
    return fn


async def scrape_time(
    make_manager: MakeManager, registry: Any, functions: int, scrapes: int
) -> dict[str, Any]:
    """``/metrics`` exposition time with ``functions`` task functions in every status.

    Every function has a completed, a failed, a timed-out and a cancelled task, one running and
    one pending task at scrape time. The body is what the ``/metrics`` route serves: the
    registry's text exposition (``generate_latest``), timed without HTTP.
    """
    from prometheus_client import generate_latest

    fns = [_labelled_function(i) for i in range(functions)]
    manager = make_manager(
        functions, max_concurrent_tasks=functions, max_task_history=10 * functions
    )
    await manager.start()
    for fn in fns:
        await manager.wait_for_task((await manager.create_task(fn, "ok")).id)
        await manager.wait_for_task((await manager.create_task(fn, "fail")).id)
        await manager.wait_for_task((await manager.create_task(fn, "sleep", timeout=0.001)).id)
        victim = await manager.create_task(fn, "sleep")
        await asyncio.sleep(0)
        await manager.cancel_task(victim.id)
    running = [await manager.create_task(fn, "sleep") for fn in fns]
    pending = [await manager.create_task(fn, "sleep") for fn in fns]
    await asyncio.sleep(0)
    statuses = sorted({t.status.value.lower() for t in manager.list_tasks()})
    times: list[float] = []
    body = b""
    for _ in range(scrapes):
        gc.collect()
        t0 = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    for t in running + pending:
        await manager.cancel_task(t.id)
    await manager.shutdown()
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    labels = {m.group(1) for m in re.finditer(r'task="(scrape_job_[0-9]+)"', body.decode())}
    labels |= {
        m.group(1).rsplit(".", 1)[-1]
        for m in re.finditer(r'task="([^"]*scrape_job_[0-9]+)"', body.decode())
    }
    return {
        "task_labels": len(labels),
        "functions": functions,
        "statuses": statuses,
        "scrapes": scrapes,
        "median_ms": statistics.median(times) * 1000,
        "max_ms": max(times) * 1000,
        "bytes": len(body),
        "series": len(lines),
    }
