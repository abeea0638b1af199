"""One system of :mod:`bench.redis_throughput`: its worker or its producer, in its own process.

``python -m bench._peer SYSTEM worker URL N DIR`` runs the worker of SYSTEM (``ours``,
``ours-bare``, ``arq``, ``arq-default``, ``saq``, ``taskiq``) until killed: ``warm()`` writes
``DIR/warm``; the N-th ``noop()`` writes the wall time to ``DIR/done``. ``... produce URL N DIR``
enqueues ``warm`` until the worker answers, then N ``noop`` tasks (100 in flight at once) and
writes the wall time it started to ``DIR/start``. Peers run in their own virtualenvs: this
module imports only the standard library and the system it runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

CONCURRENCY = 100  # tasks at once in the worker, every system
IN_FLIGHT = 100  # enqueues at once in the producer, every system

_state: dict[str, Any] = {"n": 0, "target": 0, "dir": Path(".")}


def _count() -> None:
    _state["n"] += 1
    if _state["n"] == _state["target"]:
        (_state["dir"] / "done").write_text(f"{time.time():.6f}")
        _profiled("worker")


def _profiled(role: str) -> None:
    """With ``BENCH_PROFILE=DIR``: cProfile of the worker and producer, written there."""
    profiler = _state.get("profiler")
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(os.environ["BENCH_PROFILE"], f"{role}.prof"))


def _warm() -> None:
    (_state["dir"] / "warm").write_text("1")


# -- task functions, in the form each system wants --------------------------------------------


async def noop() -> None:
    _count()


async def warm() -> None:
    _warm()


async def ctx_noop(ctx: Any) -> None:  # arq, saq
    _count()


async def ctx_warm(ctx: Any) -> None:
    _warm()


# -- ours -----------------------------------------------------------------------------------------


def _our_backend(url: str, execute: bool) -> Any:
    from observable_tasks.backends.redis import RedisBackend

    return RedisBackend(url, execute=execute, allow=["bench._peer"], queue="bench")


def _our_telemetry(manager: Any, system: str) -> None:
    if system == "ours-bare":
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from prometheus_client import CollectorRegistry

    from observable_tasks.telemetry import instrument

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    instrument(
        manager, tracer_provider=provider, registry=CollectorRegistry(), logs=system == "ours-logs"
    )
    if system == "ours-logs":
        import structlog

        from observable_tasks.telemetry import configure_logging

        configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
        del structlog


async def _ours_worker(system: str, url: str) -> None:
    from observable_tasks import TaskConfig, TaskManager

    manager = TaskManager(
        TaskConfig(max_concurrent_tasks=CONCURRENCY), backend=_our_backend(url, True)
    )
    _our_telemetry(manager, system)
    await manager.start()
    await asyncio.Event().wait()


async def _ours_producer(system: str, url: str) -> tuple[Callable[[], Awaitable[Any]], Any]:
    from observable_tasks import TaskConfig, TaskManager

    manager = TaskManager(TaskConfig(), backend=_our_backend(url, False))
    _our_telemetry(manager, system)
    await manager.start()
    return (lambda: manager.create_task(noop)), (lambda: manager.create_task(warm))


# -- arq ------------------------------------------------------------------------------------------


async def _arq_worker(system: str, url: str) -> None:
    from arq.connections import RedisSettings  # type: ignore[import-not-found]
    from arq.worker import Worker  # type: ignore[import-not-found]

    poll = {"poll_delay": 0.01} if system == "arq" else {}  # default: 0.5 s
    worker = Worker(
        functions=[ctx_noop, ctx_warm],
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=CONCURRENCY,
        handle_signals=False,
        **poll,
    )
    await worker.main()


async def _arq_producer(system: str, url: str) -> tuple[Any, Any]:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(url))
    return (lambda: pool.enqueue_job("ctx_noop")), (lambda: pool.enqueue_job("ctx_warm"))


# -- saq ------------------------------------------------------------------------------------------


async def _saq_worker(system: str, url: str) -> None:
    from saq import Queue, Worker  # type: ignore[import-not-found]

    queue = Queue.from_url(url)
    worker = Worker(queue, functions=[ctx_noop, ctx_warm], concurrency=CONCURRENCY)
    await worker.start()


async def _saq_producer(system: str, url: str) -> tuple[Any, Any]:
    from saq import Queue

    queue = Queue.from_url(url)
    await queue.connect()
    return (lambda: queue.enqueue("ctx_noop")), (lambda: queue.enqueue("ctx_warm"))


# -- taskiq-redis ---------------------------------------------------------------------------------


def _taskiq_broker(url: str) -> Any:
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker  # type: ignore[import-not-found]

    broker = RedisStreamBroker(url, consumer_id="0").with_result_backend(
        RedisAsyncResultBackend(url, result_ex_time=3600)
    )
    return broker, broker.register_task(noop, "noop"), broker.register_task(warm, "warm")


async def _taskiq_worker(system: str, url: str) -> None:
    from taskiq.api import run_receiver_task

    broker, _, _ = _taskiq_broker(url)
    broker.is_worker_process = True
    await broker.startup()
    await run_receiver_task(broker, max_async_tasks=CONCURRENCY)


async def _taskiq_producer(system: str, url: str) -> tuple[Any, Any]:
    broker, noop_task, warm_task = _taskiq_broker(url)
    await broker.startup()
    return noop_task.kiq, warm_task.kiq


WORKERS = {
    "ours": _ours_worker, "ours-bare": _ours_worker, "ours-logs": _ours_worker,
    "arq": _arq_worker, "arq-default": _arq_worker, "saq": _saq_worker, "taskiq": _taskiq_worker,
}  # fmt: skip
PRODUCERS = {
    "ours": _ours_producer, "ours-bare": _ours_producer, "ours-logs": _ours_producer,
    "arq": _arq_producer, "arq-default": _arq_producer, "saq": _saq_producer,
    "taskiq": _taskiq_producer,
}  # fmt: skip


async def _produce(system: str, url: str, n: int, directory: Path) -> None:
    send, send_warm = await PRODUCERS[system](system, url)
    deadline = time.monotonic() + 60
    while not (directory / "warm").exists():  # the worker is up and reading
        if time.monotonic() > deadline:
            raise SystemExit(f"{system}: the worker never ran the warm-up task")
        await send_warm()
        for _ in range(50):
            if (directory / "warm").exists():
                break
            await asyncio.sleep(0.02)
    import redis.asyncio as aioredis  # every system's venv has redis-py

    marker = aioredis.from_url(url)
    await marker.config_resetstat()  # the counts start here (not with the idle polling before)
    used = (await marker.info("memory"))["used_memory"]
    cpu = await marker.info("cpu")
    used = f"{used} {cpu['used_cpu_user'] + cpu['used_cpu_sys']:.6f}"
    await marker.echo("bench-start")  # where a MONITOR starts counting
    await marker.aclose()
    started = time.time()
    for first in range(0, n, IN_FLIGHT):
        await asyncio.gather(*(send() for _ in range(min(IN_FLIGHT, n - first))))
    (directory / "start").write_text(f"{started:.6f} {time.time():.6f} {used}")


def main(argv: list[str]) -> None:
    system, mode, url, n, directory = argv
    _state["target"], _state["dir"] = int(n), Path(directory)
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        _state["profiler"] = cProfile.Profile()
        _state["profiler"].enable()
    if mode == "worker":
        asyncio.run(WORKERS[system](system, url))
    else:
        asyncio.run(_produce(system, url, int(n), Path(directory)))
        _profiled("producer")
        os._exit(0)  # no slow teardown of clients: the measurement is written


if __name__ == "__main__":
    # Run from the module itself (not __main__), so that task functions have an import path.
    from bench import _peer

    _peer.main(sys.argv[1:])
