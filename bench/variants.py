"""The side-by-side variants: each runs ``n`` trivial tasks create -> complete, in waves.

Every variant follows the same shape so that only the task system differs:

- set-up that is not per task (a manager, a broker, providers) happens before the clock starts;
- tasks are created in waves of ``wave`` through the system's documented API, then the wave is
  awaited through the system's documented way of waiting, before the next wave starts;
- the results are checked after the clock stops (every variant must return ``2 * i``).

Waves exist because taskiq's in-memory broker cannot have thousands of results awaited at once;
all variants use the same waves so the comparison stays like for like.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Callable
from typing import Any

from bench.floor import SdkFloor
from bench.instrumented import Telemetry
from bench.workload import expected_sum, work

__all__ = ["Variant", "VARIANTS", "make_variants"]


class Variant:
    """One task system under test."""

    key = ""
    title = ""
    per_task = True  # False for variants that measure something other than a task system

    async def setup(self) -> None:
        """One-time set-up (brokers, providers); not timed."""

    async def run(self, n: int, wave: int) -> float:
        """Run ``n`` tasks; return the seconds they took (set-up per run excluded)."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Release what ``setup`` made."""

    def settle(self) -> None:
        """Finish the last run's background work (span export threads), untimed.

        Without this, a batch span processor still exporting the previous variant's spans
        competes for the GIL with whatever variant is timed next. The instrumented variants
        already flush their span processor before their clock stops (each pays for exporting
        its own spans), so this is a safety net that normally finds nothing to do.
        """

    def info(self) -> dict[str, Any]:
        """Extra facts worth reporting (dropped spans, log lines written...)."""
        return {}


def _check(key: str, got: int, n: int) -> None:
    if got != expected_sum(n):
        raise AssertionError(f"{key}: results sum to {got}, expected {expected_sum(n)}")


class RawAsyncio(Variant):
    key = "raw-asyncio"
    title = "raw asyncio.create_task + gather (the floor)"

    async def run(self, n: int, wave: int) -> float:
        total = 0
        start = time.perf_counter()
        for lo in range(0, n, wave):
            tasks = [asyncio.create_task(work(i)) for i in range(lo, min(lo + wave, n))]
            for r in await asyncio.gather(*tasks):
                total += r
        elapsed = time.perf_counter() - start
        _check(self.key, total, n)
        return elapsed


class NexiosContrib(Variant):
    key = "nexios-contrib"
    title = "nexios-contrib 0.5.0 TaskManager, no telemetry"

    async def run(self, n: int, wave: int) -> float:
        from nexios_contrib.tasks.config import TaskConfig as NxConfig
        from nexios_contrib.tasks.manager import TaskManager as NxManager

        manager = NxManager(config=NxConfig(max_concurrent_tasks=n + 1))
        await manager.start()
        handles: list[Any] = []
        start = time.perf_counter()
        for lo in range(0, n, wave):
            tasks = [await manager.create_task(work, i) for i in range(lo, min(lo + wave, n))]
            for t in tasks:
                await manager.wait_for_task(t.id)
            handles.extend(tasks)
        elapsed = time.perf_counter() - start
        await manager.shutdown()
        _check(self.key, sum(t.result.result for t in handles), n)
        return elapsed


class Taskiq(Variant):
    """taskiq's InMemoryBroker; with ``telemetry`` its own OpenTelemetry + Prometheus middleware."""

    def __init__(self, telemetry: bool) -> None:
        self.telemetry = telemetry
        self.key = "taskiq-otel-prom" if telemetry else "taskiq"
        self.title = (
            "taskiq InMemoryBroker + its OpenTelemetry and Prometheus middleware"
            if telemetry
            else "taskiq InMemoryBroker, no middleware"
        )
        self._broker: Any = None
        self._task: Any = None
        self._spans: Any = None
        self._providers: list[Any] = []

    async def setup(self) -> None:
        from taskiq import InMemoryBroker

        # The result backend evicts beyond max_stored_results (default 100); a wave whose
        # results were evicted would wait forever. Keep them all; each run clears them.
        broker = InMemoryBroker(max_stored_results=-1)
        if self.telemetry:
            from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware
            from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

            from bench.sinks import make_meter_provider, make_tracer_provider

            tracer_provider, self._spans = make_tracer_provider()
            meter_provider, _ = make_meter_provider()
            self._providers = [tracer_provider, meter_provider]
            # PrometheusMiddleware points PROMETHEUS_MULTIPROC_DIR at a temp dir (for its worker
            # HTTP server, never started here: this is not a worker process) and registers in
            # prometheus_client's global registry. prometheus_client is already imported, so its
            # values stay in-process; put the environment back so nothing else changes mode.
            before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            prom = PrometheusMiddleware(server_port=0, server_addr="127.0.0.1")
            if before is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
            otel = OpenTelemetryMiddleware(
                tracer_provider=tracer_provider, meter_provider=meter_provider
            )
            broker = broker.with_middlewares(otel, prom)
        self._task = broker.register_task(work, task_name="bench.work")
        await broker.startup()
        self._broker = broker

    async def run(self, n: int, wave: int) -> float:
        broker, task = self._broker, self._task
        results: list[Any] = []
        start = time.perf_counter()
        for lo in range(0, n, wave):
            handles = [await task.kiq(i) for i in range(lo, min(lo + wave, n))]
            await broker.wait_all()
            for h in handles:
                results.append(await h.wait_result(check_interval=0.001))
        for provider in self._providers[:1]:
            provider.force_flush()  # timed: a variant pays for exporting its own spans
        elapsed = time.perf_counter() - start
        broker.result_backend.results.clear()
        _check(self.key, sum(r.return_value for r in results), n)
        if any(r.is_err for r in results):
            raise AssertionError(f"{self.key}: a task failed")
        return elapsed

    async def teardown(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
        for provider in self._providers:
            provider.shutdown()

    def settle(self) -> None:
        for provider in self._providers:
            provider.force_flush()

    def info(self) -> dict[str, Any]:
        if self._spans is None:
            return {}
        self._providers[0].force_flush()
        return {"spans_exported": self._spans.exported}


class Ours(Variant):
    """observable_tasks' TaskManager, core only or fully instrumented."""

    def __init__(self, telemetry: Telemetry | None) -> None:
        self.telemetry = telemetry
        if telemetry is None:
            self.key, self.title = "ours-core", "observable_tasks TaskManager, core only"
        elif telemetry.noop:
            self.key = "ours-noop-sdk"
            self.title = "observable_tasks instrumented, no-op tracer and logger (own code)"
            self.per_task = False
        else:
            self.key = "ours-instrumented"
            self.title = "observable_tasks, fully instrumented (span + metrics + logs per task)"

    def make_manager(self, n: int, **config: Any) -> Any:
        from observable_tasks import TaskConfig, TaskManager

        config.setdefault("max_concurrent_tasks", max(n, 1) + 1)
        manager = TaskManager(TaskConfig(**config))
        if self.telemetry is not None:
            self.telemetry.instrument(manager)
        return manager

    async def run(self, n: int, wave: int) -> float:
        manager = self.make_manager(n)
        await manager.start()
        total = 0
        start = time.perf_counter()
        for lo in range(0, n, wave):
            tasks = [await manager.create_task(work, i) for i in range(lo, min(lo + wave, n))]
            for t in tasks:
                await manager.wait_for_task(t.id)
            for t in tasks:
                total += t.result
        if self.telemetry is not None:
            self.telemetry.flush()  # timed: a variant pays for exporting its own spans
        elapsed = time.perf_counter() - start
        await manager.shutdown()
        _check(self.key, total, n)
        return elapsed

    def settle(self) -> None:
        if self.telemetry is not None:
            self.telemetry.flush()

    def info(self) -> dict[str, Any]:
        return self.telemetry.info() if self.telemetry is not None else {}


class FloorInManager(Ours):
    """Our core manager with the SDK floor's calls as its only telemetry.

    The floor's creation half runs in a bare observer (``on_created``), its execution half in a
    bare middleware: the same SDK calls as ``sdk-floor``, made where the library makes them,
    with none of the library's telemetry code. Compared with ``ours-instrumented`` it shows what
    the library's code costs; compared with ``sdk-floor`` what the place costs.
    """

    def __init__(self, floor: SdkFloor) -> None:
        super().__init__(None)
        self.floor = floor
        self.key = "sdk-floor-in-manager"
        self.title = "ours-core + the SDK floor's calls in a bare observer and middleware"
        self.per_task = False

    def make_manager(self, n: int, **config: Any) -> Any:
        from observable_tasks import TaskObserver

        manager = super().make_manager(n, **config)
        floor, sent = self.floor, {}
        numbers = iter(range(1 << 62))

        class Send(TaskObserver):
            def on_created(self, task: Any) -> None:
                sent[task.id] = floor.send(next(numbers))

        async def process(task: Any, call_next: Any) -> Any:
            floor.process(*sent.pop(task.id))
            return await call_next()

        manager.add_observer(Send())
        manager.add_middleware(process, name="floor", guarded=False)  # as the pipeline is
        return manager

    async def run(self, n: int, wave: int) -> float:
        elapsed = await super().run(n, wave)
        start = time.perf_counter()
        self.floor.tracer_provider.force_flush()  # timed, as for the instrumented variants
        return elapsed + time.perf_counter() - start

    def settle(self) -> None:
        self.floor.tracer_provider.force_flush()

    def info(self) -> dict[str, Any]:
        return self.floor.info()


class FloorInAsyncio(Variant):
    """Raw asyncio tasks making the SDK floor's calls: the creation half before each wave's
    ``create_task`` (in the caller, as ours makes it), the execution half in the task (in a fresh
    context, as ours runs it). Minus ``raw-asyncio``: what the calls cost in plain asyncio tasks."""

    key = "sdk-floor-in-asyncio"
    title = "raw asyncio tasks + the SDK floor's calls"
    per_task = False

    def __init__(self, floor: SdkFloor) -> None:
        self.floor = floor

    async def run(self, n: int, wave: int) -> float:
        floor = self.floor

        async def task(i: int, sent: tuple[str, dict[str, str], int]) -> int:
            floor.process(*sent)
            return await work(i)

        total = 0
        start = time.perf_counter()
        for lo in range(0, n, wave):
            tasks = []
            for i in range(lo, min(lo + wave, n)):
                sent = floor.send(i)
                tasks.append(asyncio.create_task(task(i, sent), context=contextvars.Context()))
            for r in await asyncio.gather(*tasks):
                total += r
        floor.tracer_provider.force_flush()  # timed, as for the instrumented variants
        elapsed = time.perf_counter() - start
        _check(self.key, total, n)
        return elapsed

    def settle(self) -> None:
        self.floor.tracer_provider.force_flush()

    def info(self) -> dict[str, Any]:
        return self.floor.info()


class Floor(Variant):
    """The OTel + prometheus_client + structlog calls ours makes per task, and nothing else."""

    key = "sdk-floor"
    title = "SDK floor: the telemetry calls ours makes per task, in a plain loop"
    per_task = False

    def __init__(self, floor: SdkFloor) -> None:
        self.floor = floor
        if floor.noop:
            self.key = "sdk-floor-noop"
            self.title = "the SDK floor's loop with the no-op tracer and logger"

    async def run(self, n: int, wave: int) -> float:
        one = self.floor.one
        start = time.perf_counter()
        for i in range(n):
            one(i)
        self.floor.tracer_provider.force_flush()  # timed, as for the instrumented variants
        return time.perf_counter() - start

    def settle(self) -> None:
        self.floor.tracer_provider.force_flush()

    def info(self) -> dict[str, Any]:
        return self.floor.info()


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


def make_variants(
    telemetry_factory: Callable[[bool], Telemetry | None],
    floor_factory: Callable[[bool], SdkFloor | None],
) -> list[Variant]:
    """Every variant, in table order (instrumented ones only if the instrumentation exists).

    The factories take ``noop``: the no-op pair (``ours-noop-sdk``, ``sdk-floor-noop``) runs the
    same code with no-op tracing and logging, which separates the library's own code from the
    cost of the SDK calls it makes.
    """
    out: list[Variant] = [RawAsyncio(), NexiosContrib(), Taskiq(False), Taskiq(True), Ours(None)]
    for noop in (False, True):
        telemetry = telemetry_factory(noop)
        if telemetry is not None:
            out.append(Ours(telemetry))
        floor = floor_factory(noop)
        if floor is not None:
            out.append(Floor(floor))
        if not noop:
            for place in (FloorInManager, FloorInAsyncio):
                placed = floor_factory(noop)
                if placed is not None:
                    out.append(place(placed))
    return out
