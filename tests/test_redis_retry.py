"""Retries, delayed starts and idempotency keys on Redis: what only Redis has to keep (restarts
of every process and of Redis itself, several workers, several producers).

Real redis-server processes (AOF where a restart must keep the data), real worker processes
(``observable-tasks worker`` importing ``tests/apps/redis_tasks.py``); the test's own manager
is a web process (``execute=False``). Task functions append one line per execution to a file,
so executions are counted across processes. The behaviour-independent contract (both
backends) is in test_retry_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import async_wait_until
from redis_server import RedisServer, redis_server_available
from worker_process import APPS, ROOT, WorkerProcess, worker_env

sys.path.insert(0, str(APPS))

import redis_tasks

from observable_tasks import RetryPolicy, TaskConfig, TaskManager, TaskStatus
from observable_tasks.backends.redis import Keys, RedisBackend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WebFactory = Callable[..., TaskManager]
WorkerFactory = Callable[..., WorkerProcess]

# Retries ConnectionError and its subclasses (redis_tasks.flaky raises ConnectionResetError).
POLICY = RetryPolicy(max_attempts=3, on=(ConnectionError,), backoff=1.5, jitter=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, with AOF (fsync always): a restart keeps everything."""
    if not redis_server_available():
        pytest.skip("redis-server not installed (scripts/setup-tests installs it)")
    srv = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield srv
    srv.kill()


def lines(path: Path, prefix: str = "") -> list[str]:
    found = path.read_text().splitlines() if path.exists() else []
    return [line for line in found if line.startswith(prefix)]


async def wait_lines(path: Path, prefix: str, count: int, timeout: float = 20.0) -> list[str]:
    def enough() -> list[str]:
        found = lines(path, prefix)
        return found if len(found) >= count else []

    return await async_wait_until(enough, timeout=timeout, message=f"{count} x {prefix!r}")


async def wait_status(
    manager: TaskManager, task_id: str, status: TaskStatus, timeout: float = 20.0
) -> Any:
    async def read() -> Any:
        deadline = time.monotonic() + timeout
        while True:
            task = await manager.aget_task(task_id)
            if task is not None and task.status is status:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} not {status.value}: {task!r}")
            await asyncio.sleep(0.02)

    return await read()


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# -- a delayed task survives everything ------------------------------------------------------


async def test_a_delayed_task_survives_every_process_and_redis_restarting(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path, queue: str
) -> None:
    worker = workers(server.url)
    producer = web(server.url)
    path = tmp_path / "runs"
    task = await producer.create_task(redis_tasks.stamp, str(path), delay=3.0)
    due = task.next_attempt_at
    assert task.status is TaskStatus.PENDING
    assert due is not None
    await producer.shutdown(timeout=1.0)  # the producing process goes away...
    worker.kill()  # ...the worker dies...
    server.restart(kill=True)  # ...and Redis crashes: only the AOF remains
    assert not lines(path)
    again = workers(server.url)  # every process is a new one
    reader = web(server.url)
    waiting = await reader.aget_task(task.id)
    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING
    assert waiting.next_attempt_at == due
    done = await reader.wait_for_task(task.id, timeout=20)
    assert done.status is TaskStatus.COMPLETED
    assert done.attempts == 1
    (ran,) = lines(path)
    assert int(ran.split()[1]) == again.pid
    assert float(ran.split()[2]) >= due.timestamp() - 0.01  # not before its time
    assert client(server.url).zcard(Keys(queue).delayed) == 0


# -- a planned retry survives a worker's death and Redis' ------------------------------------


async def wait_retrying(manager: TaskManager, task_id: str, attempts: int = 1) -> Any:
    """The task once it waits for its next attempt (PENDING, ``attempts`` done, a next time)."""

    async def read() -> Any:
        deadline = time.monotonic() + 20.0
        while True:
            task = await manager.aget_task(task_id)
            if (
                task is not None
                and task.status is TaskStatus.PENDING
                and task.attempts == attempts
                and task.next_attempt_at is not None
            ):
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} never waited to retry: {task!r}")
            await asyncio.sleep(0.02)

    return await read()


async def test_a_retry_waiting_survives_a_worker_sigkill_and_runs_on_another(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    first = workers(server.url)  # its config has no retry policy: the record's applies
    manager = web(server.url)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.flaky, str(path), 1, retry=POLICY)
    waiting = await wait_retrying(manager, task.id)
    assert waiting.max_attempts == 3
    assert "attempt 1 lost its connection" in str(waiting.error)
    first.kill()  # SIGKILL while the retry waits in the delayed ZSET
    second = workers(server.url)
    done = await manager.wait_for_task(task.id, timeout=20)
    assert done.status is TaskStatus.COMPLETED
    assert done.result == "ok after 2"
    assert done.attempts == 2
    assert done.error is None
    one, two = lines(path, "attempt")
    assert int(one.split()[2]) == first.pid
    assert int(two.split()[2]) == second.pid
    assert float(two.split()[3]) - float(one.split()[3]) >= 1.5 - 0.05  # its backoff


async def test_redis_down_when_a_retry_is_due_it_still_happens_once_redis_is_back(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    worker = workers(server.url)
    manager = web(server.url)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.flaky, str(path), 1, retry=POLICY)
    due = (await wait_retrying(manager, task.id)).next_attempt_at.timestamp()
    server.stop()
    # Down past the planned time (this test is about time): nothing can promote it meanwhile.
    await asyncio.sleep(max(0.0, due - time.time()) + 0.5)
    assert len(lines(path, "attempt")) == 1
    server.start()
    done = await manager.wait_for_task(task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETED
    assert done.attempts == 2
    assert [int(x.split()[2]) for x in lines(path, "attempt")] == [worker.pid] * 2


async def test_the_last_attempt_fails_the_task_with_its_error_and_releases_its_key(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path, queue: str
) -> None:
    workers(server.url)
    manager = web(server.url)
    path = tmp_path / "runs"
    policy = RetryPolicy(max_attempts=2, on=(ConnectionError,), backoff=0.05, jitter=False)
    task = await manager.create_task(redis_tasks.flaky, str(path), 5, retry=policy, key="k-1")
    done = await manager.wait_for_task(task.id, timeout=20)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 2
    assert "attempt 2 lost its connection" in str(done.error)
    assert client(server.url).exists(Keys(queue).key("k-1")) == 0  # the key is free again
    again = await manager.create_task(redis_tasks.stamp, str(tmp_path / "again"), key="k-1")
    assert again.id != task.id


# -- several workers, several producers ------------------------------------------------------


async def test_promote_with_several_workers_runs_each_delayed_task_once(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    pool = [workers(server.url) for _ in range(3)]
    manager = web(server.url)
    paths = [tmp_path / f"r{i}" for i in range(30)]
    tasks = [await manager.create_task(redis_tasks.stamp, str(p), delay=0.5) for p in paths]
    for task in tasks:
        await manager.wait_for_task(task.id, timeout=20)
    assert all(t.status is TaskStatus.COMPLETED and t.attempts == 1 for t in tasks)
    assert all(len(lines(p)) == 1 for p in paths)  # once each, whoever promoted it
    assert {int(lines(p)[0].split()[1]) for p in paths} <= {w.pid for w in pool}


_CREATE = textwrap.dedent(
    """
    import asyncio, sys, time
    import redis_tasks
    from observable_tasks import TaskConfig, TaskManager
    from observable_tasks.backends.redis import RedisBackend

    url, queue, key, path, at = sys.argv[1:6]

    async def main():
        backend = RedisBackend(url, queue=queue, execute=False)
        manager = TaskManager(TaskConfig(shutdown_timeout=1.0), backend=backend)
        await manager.start()
        await asyncio.sleep(max(0.0, float(at) - time.time()))  # every process at once
        tasks = await asyncio.gather(
            *[manager.create_task(redis_tasks.stamp, path, key=key, delay=30) for _ in range(10)]
        )
        print(" ".join(sorted({t.id for t in tasks})))
        await manager.shutdown(timeout=1.0)

    asyncio.run(main())
    """
)


def test_the_same_key_from_several_processes_gives_one_task(
    server: RedisServer, tmp_path: Path, queue: str
) -> None:
    at = time.time() + 2.0  # the processes start, then all create at this moment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE, server.url, queue, "order-42", str(tmp_path), str(at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(),
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outputs]
    ids = {out.decode().strip() for out, _ in outputs}
    assert len(ids) == 1
    assert len(next(iter(ids))) == 32
    r = client(server.url)
    keys = Keys(queue)
    assert r.get(keys.key("order-42")) == next(iter(ids)).encode()
    assert r.zcard(keys.idx) == 1
    assert r.zcard(keys.delayed) == 1


async def test_submit_with_a_key_is_refused_on_redis(server: RedisServer, web: WebFactory) -> None:
    manager = web(server.url)
    await manager.start()
    with pytest.raises(ValueError, match="create_task"):
        manager.submit(redis_tasks.add, 1, 2, key="k")


# -- cancelled while waiting ------------------------------------------------------------------


async def test_a_cancelled_delayed_task_never_runs_even_after_its_time(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path, queue: str
) -> None:
    workers(server.url)
    manager = web(server.url)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.stamp, str(path), delay=0.5, key="once")
    assert await manager.cancel_task(task.id) is True
    cancelled = await manager.aget_task(task.id)
    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.next_attempt_at is None
    r = client(server.url)
    keys = Keys(queue)
    assert r.zcard(keys.delayed) == 0
    assert r.exists(keys.key("once")) == 0
    # Past its time (the behaviour is about time): a task created after it runs, it does not.
    await asyncio.sleep(0.6)
    later = await manager.create_task(redis_tasks.stamp, str(tmp_path / "later"))
    await manager.wait_for_task(later.id, timeout=20)
    assert not lines(path)
    assert (await manager.aget_task(task.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_cancelled_retry_never_runs_again(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path, queue: str
) -> None:
    workers(server.url)
    manager = web(server.url)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.flaky, str(path), 5, retry=POLICY)
    due = (await wait_retrying(manager, task.id)).next_attempt_at.timestamp()
    assert await manager.cancel_task(task.id) is True
    await asyncio.sleep(max(0.0, due - time.time()) + 0.3)  # past its time
    assert len(lines(path, "attempt")) == 1
    final = await manager.aget_task(task.id)
    assert final is not None
    assert final.status is TaskStatus.CANCELLED
    assert final.attempts == 1
    assert client(server.url).zcard(Keys(queue).delayed) == 0


# -- precision -------------------------------------------------------------------------------


async def test_a_short_delay_starts_on_time(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    """The promoter sleeps until the earliest due time and is woken (pub/sub) when an earlier
    one is added: a 0.2 s delay does not wait for a one-second poll."""
    workers(server.url)
    manager = web(server.url)
    await manager.create_task(redis_tasks.stamp, str(tmp_path / "far"), delay=30)  # sleeps long
    late = []
    for i in range(5):
        path = tmp_path / f"r{i}"
        task = await manager.create_task(redis_tasks.stamp, str(path), delay=0.2)
        await manager.wait_for_task(task.id, timeout=10)
        assert task.next_attempt_at is None  # started: no planned time any more
        (ran,) = lines(path)
        late.append(float(ran.split()[2]) - (task.created_at.timestamp() + 0.2))
    assert min(late) >= -0.01
    assert max(late) < 0.25, late
    print("lateness of a 0.2 s delay (s):", json.dumps([round(x, 4) for x in late]))


# -- telemetry of a Redis retry ---------------------------------------------------------------

FLAKY_RUNS: list[int] = []


async def flaky_here(failures: int) -> str:
    FLAKY_RUNS.append(1)
    if len(FLAKY_RUNS) <= failures:
        raise ConnectionError(f"broker gone on attempt {len(FLAKY_RUNS)}")
    return "synced"


async def test_telemetry_tells_each_redis_retry_from_the_outcome(
    server: RedisServer, queue: str
) -> None:
    """The worker's innermost link leaves the task PENDING (error, next time set) before the
    attempt's exception reaches the middleware: spans, counters and logs see a retry."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    from prometheus_client import CollectorRegistry
    from telemetry_kit import captured_structlog

    from observable_tasks.telemetry import instrument, names
    from observable_tasks.telemetry.names import ATTR, RETRYING

    FLAKY_RUNS.clear()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    backend = RedisBackend(server.url, queue=queue, lease=2.0)
    manager = TaskManager(TaskConfig(shutdown_timeout=1.0), backend=backend)
    policy = RetryPolicy(max_attempts=3, on=(ConnectionError,), backoff=0.05, jitter=False)
    with captured_structlog() as logs:
        instrument(manager, tracer_provider=provider, registry=registry)
        try:
            task = await manager.create_task(flaky_here, 2, retry=policy)
            done = await manager.wait_for_task(task.id, timeout=20)
        finally:
            await manager.shutdown(timeout=1.0)
    assert done.status is TaskStatus.COMPLETED
    assert done.attempts == 3
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    statuses = sorted(
        (s.attributes[ATTR.TASK_ATTEMPT], s.attributes[ATTR.TASK_STATUS])  # type: ignore[index]
        for s in spans
    )
    assert statuses == [(1, RETRYING), (2, RETRYING), (3, "completed")]
    fn = task.function

    def sample(suffix: str, **labels: str) -> float | None:
        return registry.get_sample_value(names.metric_name(suffix), labels)

    assert sample(names.TASK_RETRIES + "_total", task=fn) == 2
    assert sample(names.TASKS_FINISHED + "_total", task=fn, status="completed") == 1
    assert not sample(names.TASKS_FINISHED + "_total", task=fn, status="failed")
    retrying = [e for e in logs.entries if e.get("event") == names.LOG_EVENTS["retrying"]]
    assert len(retrying) == 2
    assert all(e.get("next_attempt_at") for e in retrying)


async def test_queue_stats_count_delayed_tasks_as_pending(
    server: RedisServer, web: WebFactory, tmp_path: Path
) -> None:
    manager = web(server.url)
    await manager.create_task(redis_tasks.stamp, str(tmp_path / "a"), delay=30)
    await manager.create_task(redis_tasks.stamp, str(tmp_path / "b"))  # queued, no worker
    backend = manager.backend
    assert backend is not None
    stats = await asyncio.to_thread(backend.queue_stats)
    assert (stats["pending"], stats["delayed"], stats["running"]) == (2, 1, 0)
