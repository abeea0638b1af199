"""Redis backend under faults: real redis-server processes, real worker processes.

Each test has a queue of its own; workers are ``observable-tasks worker`` processes importing
``tests/apps/redis_tasks.py`` by module name; the test's own manager is a web process
(``execute=False``) that creates, reads, waits and cancels. Task functions append one line per
execution to a file, so executions are counted across processes. Delays are leases (0.5-1 s):
the behaviour under test is about time.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import async_wait_until
from redis_server import RedisServer, redis_server_available
from worker_process import APPS, WorkerProcess

sys.path.insert(0, str(APPS))

import redis_tasks

from observable_tasks import TaskManager, TaskStatus
from observable_tasks.backends.redis import Keys, Scripts, TaskBackendError
from observable_tasks.backends.redis.codec import JsonSerializer, encode_payload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WebFactory = Callable[..., TaskManager]
WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.skip("redis-server not installed (scripts/setup-tests installs it)")
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_lines(path: Path, prefix: str, count: int, timeout: float = 20.0) -> list[str]:
    """Wait (bounded) until ``path`` has ``count`` lines starting with ``prefix``."""

    def enough() -> list[str]:
        found = [line for line in lines(path) if line.startswith(prefix)]
        return found if len(found) >= count else []

    return await async_wait_until(enough, timeout=timeout, message=f"{count} x {prefix!r}")


def record(url: str, queue: str, task_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(url)
    try:
        raw: Any = client.hgetall(Keys(queue).task(task_id))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    finally:
        client.close()


def assert_drained(url: str, queue: str) -> None:
    """Nothing left behind: the stream is empty (entries XACK+XDEL'd) and nothing is pending."""
    client = redis.Redis.from_url(url)
    try:
        keys = Keys(queue)
        assert client.xlen(keys.stream) == 0
        pending: Any = client.xpending(keys.stream, "workers")
        assert pending["pending"] == 0
    finally:
        client.close()


def pid_of(line: str) -> int:
    return int(line.split()[1])


def by_pid(workers: list[WorkerProcess], pid: int) -> WorkerProcess:
    return next(w for w in workers if w.pid == pid)


# -- crash recovery -------------------------------------------------------------------------------


async def test_sigkill_mid_task_runs_again_after_the_lease(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    pool = [workers(server.url, lease=1.0), workers(server.url, lease=1.0)]
    manager = web(server.url, max_attempts=3)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 1.0)
    first = pid_of((await wait_lines(path, "started", 1))[0])
    by_pid(pool, first).kill()
    killed_at = time.monotonic()
    await manager.wait_for_task(task.id, timeout=30)
    assert task.status is TaskStatus.COMPLETED
    survivor = next(w for w in pool if w.pid != first).pid
    assert task.result == survivor
    assert lines(path) == [f"started {first}", f"started {survivor}", f"done {survivor}"]
    assert time.monotonic() - killed_at >= 1.0  # ran again only after the lease, plus its run
    assert record(server.url, queue, task.id)["attempts"] == "2"
    assert f"task {task.id} runs again here: attempt 2" in by_pid(pool, survivor).stdout()
    assert_drained(server.url, queue)


async def test_past_max_attempts_it_ends_failed_saying_the_worker_was_lost(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    pool = [workers(server.url, lease=0.6) for _ in range(3)]
    manager = web(server.url, max_attempts=2, lease=0.6)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 60.0)
    for n in (1, 2):
        by_pid(pool, pid_of((await wait_lines(path, "started", n))[-1])).kill()
    await manager.wait_for_task(task.id, timeout=30)
    assert task.status is TaskStatus.FAILED
    assert "worker lost" in str(task.error)
    assert getattr(task.error, "code", None) == "WORKER_LOST"
    assert len(lines(path)) == 2  # the third worker never ran it
    fields = record(server.url, queue, task.id)
    assert fields["status"] == "FAILED"
    assert "max_attempts reached" in fields["error"]
    assert_drained(server.url, queue)


async def test_a_task_longer_than_its_lease_never_runs_twice(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    for _ in range(2):
        workers(server.url, lease=0.5)
    manager = web(server.url, lease=0.5)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 3.0)  # 6 leases long
    await manager.wait_for_task(task.id, timeout=30)
    assert task.status is TaskStatus.COMPLETED
    assert len(lines(path)) == 2  # one start, one done: renewed, never taken over
    assert record(server.url, queue, task.id)["attempts"] == "1"


async def test_a_stale_workers_late_finish_is_refused(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    pool = [workers(server.url, lease=0.6), workers(server.url, lease=0.6)]
    manager = web(server.url, lease=0.6)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 1.5)
    stale = by_pid(pool, pid_of((await wait_lines(path, "started", 1))[0]))
    stale.signal(signal.SIGSTOP)  # frozen past its lease: another worker takes the task over
    try:
        fresh = pid_of((await wait_lines(path, "started", 2))[-1])
    finally:
        stale.signal(signal.SIGCONT)  # resumes while the other runs: its outcome must not land
    assert fresh != stale.pid

    def noticed() -> bool:
        out = stale.stdout()
        return "refused: another worker owns it now" in out or "lost its lease" in out

    await async_wait_until(noticed, timeout=20, message="the stale worker to be fenced out")
    await manager.wait_for_task(task.id, timeout=30)
    assert task.status is TaskStatus.COMPLETED
    assert task.result == fresh  # the stale worker's result (its pid) never overwrote it
    fields = record(server.url, queue, task.id)
    assert fields["worker"].split("-")[-2] == str(fresh)
    assert fields["attempts"] == "2"
    assert_drained(server.url, queue)


# -- cancel across processes ----------------------------------------------------------------------


async def test_cancel_a_task_running_in_another_process(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    workers(server.url, lease=2.0)
    manager = web(server.url, lease=2.0)
    latencies = []
    for n in range(5):
        path = tmp_path / f"cancel-{n}"
        task = await manager.create_task(redis_tasks.until_cancelled, str(path))
        await wait_lines(path, "started", 1)
        called = time.time()
        assert await manager.cancel_task(task.id) is True
        returned = time.time()
        cancelled_at = float((await wait_lines(path, "cancelled", 1))[0].split()[2])
        latencies.append(cancelled_at - called)
        assert task.status is TaskStatus.CANCELLED
        assert returned - called < 2.0
    median = statistics.median(latencies)
    print(f"\ncancel latency (call -> CancelledError in the worker): median {median * 1000:.1f} ms,"
          f" max {max(latencies) * 1000:.1f} ms")  # fmt: skip
    assert max(latencies) < 0.5  # pub/sub: milliseconds; the renew fallback would be lease/3


async def test_cancel_a_pending_task_ends_it_at_once_and_it_never_runs(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    manager = web(server.url)
    path = tmp_path / "never"
    task = await manager.create_task(redis_tasks.touch, str(path))  # no worker yet: pending
    called = time.monotonic()
    assert await manager.cancel_task(task.id) is True
    assert time.monotonic() - called < 0.5
    assert task.status is TaskStatus.CANCELLED
    workers(server.url)
    after = tmp_path / "after"
    later = await manager.create_task(redis_tasks.touch, str(after))  # behind it in the stream
    await manager.wait_for_task(later.id, timeout=20)
    assert later.status is TaskStatus.COMPLETED
    assert not path.exists()
    assert (await manager.aget_task(task.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


# -- Redis restart --------------------------------------------------------------------------------


async def test_redis_restart_tasks_accepted_before_all_finish_after(
    tmp_path: Path, web: WebFactory, workers: WorkerFactory, queue: str
) -> None:
    if not redis_server_available():
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        pool = [workers(server.url, lease=2.0, concurrency=2) for _ in range(2)]
        manager = web(server.url, lease=2.0)
        await manager.start()
        tasks = [
            await manager.create_task(redis_tasks.run_for, str(tmp_path / f"r{i}"), 0.3)
            for i in range(12)
        ]  # 4 run at once: most are still queued when Redis goes down
        await wait_lines(tmp_path / "r0", "started", 1)
        server.stop()
        started = time.monotonic()
        with pytest.raises(TaskBackendError, match="was not created"):
            await manager.create_task(redis_tasks.add, 1, 2)
        assert time.monotonic() - started < 3.0  # at once, never a hang
        started = time.monotonic()
        with pytest.raises(TaskBackendError):
            manager.get_task(tasks[-1].id)  # a bounded blocking read
        assert time.monotonic() - started < 3.0
        server.start()
        for task in tasks:
            await manager.wait_for_task(task.id, timeout=40)
        assert [t.status for t in tasks] == [TaskStatus.COMPLETED] * 12
        assert {t.result for t in tasks} <= {w.pid for w in pool}
        assert len(await manager.alist_tasks()) == 12  # the refused one was never stored
        after = await manager.create_task(redis_tasks.add, 2, 2)  # everyone reconnected
        await manager.wait_for_task(after.id, timeout=20)
        assert after.result == 4
        for worker in pool:  # the outage is logged once per connection, then its end
            await async_wait_until(
                lambda w=worker: "pub/sub connection to Redis restored" in w.stdout(),  # type: ignore[misc]
                timeout=15,
                message="the worker's pub/sub to resubscribe",
            )
            assert worker.stdout().count("pub/sub connection lost") == 1
        # The cancel channel works again (resubscribed): a running task is cancelled at once.
        path = tmp_path / "cancel-after"
        running = await manager.create_task(redis_tasks.until_cancelled, str(path))
        await wait_lines(path, "started", 1)
        called = time.time()
        assert await manager.cancel_task(running.id) is True
        cancelled_at = float((await wait_lines(path, "cancelled", 1))[0].split()[2])
        assert cancelled_at - called < 0.5  # pub/sub, not the renew fallback (lease / 3)
        assert_drained(server.url, queue)
    finally:
        server.kill()


# -- shutdowns ------------------------------------------------------------------------------------


async def test_sigterm_hands_a_long_task_back_without_using_an_attempt(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    leaving = workers(server.url, lease=1.0, shutdown_timeout=0.5)
    manager = web(server.url, max_attempts=1)  # one attempt: a consumed one would fail it
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 2.0)
    await wait_lines(path, "started", 1)
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(15) == 0
    fields = record(server.url, queue, task.id)
    assert fields["status"] == "PENDING"
    assert fields["attempts"] == "0"
    staying = workers(server.url, lease=1.0)
    await manager.wait_for_task(task.id, timeout=30)
    assert task.status is TaskStatus.COMPLETED
    assert task.result == staying.pid
    runs = [f"started {leaving.pid}", f"started {staying.pid}", f"done {staying.pid}"]
    assert lines(path) == runs
    assert record(server.url, queue, task.id)["attempts"] == "1"
    assert_drained(server.url, queue)


async def test_sigterm_lets_a_short_task_finish(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    leaving = workers(server.url, shutdown_timeout=10.0)
    manager = web(server.url)
    path = tmp_path / "runs"
    task = await manager.create_task(redis_tasks.run_for, str(path), 0.5)
    await wait_lines(path, "started", 1)
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(15) == 0
    await manager.wait_for_task(task.id, timeout=5)
    assert task.status is TaskStatus.COMPLETED
    assert task.result == leaving.pid


async def test_a_web_process_shutting_down_does_not_cancel_the_clusters_tasks(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, tmp_path: Path
) -> None:
    workers(server.url, concurrency=1)
    first = web(server.url)
    running = await first.create_task(redis_tasks.run_for, str(tmp_path / "a"), 0.5)
    queued = await first.create_task(redis_tasks.run_for, str(tmp_path / "b"), 0.1)
    await wait_lines(tmp_path / "a", "started", 1)
    await first.shutdown(timeout=1.0)
    second = web(server.url)
    for task_id in (running.id, queued.id):
        done = await second.wait_for_task(task_id, timeout=20)
        assert done.status is TaskStatus.COMPLETED


# -- security -------------------------------------------------------------------------------------


async def test_a_record_naming_os_system_never_runs(
    server: RedisServer, web: WebFactory, workers: WorkerFactory, queue: str, tmp_path: Path
) -> None:
    workers(server.url)
    manager = web(server.url)
    await manager.start()
    target = tmp_path / "pwned"
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        scripts = Scripts(client, Keys(queue))
        payload = encode_payload([f"touch {target}"], {}, JsonSerializer())
        fields: dict[str, bytes | str | int | float] = {
            "func": "os:system", "name": "evil", "payload": payload, "max_attempts": 1
        }  # fmt: skip
        fields["created"] = f"{time.time():.6f}"
        task_id = "evil" + secrets.token_hex(4)
        assert await scripts.enqueue(task_id, fields) is not None
    finally:
        await client.aclose()
    task = await manager.wait_for_task(task_id, timeout=20)
    assert task.status is TaskStatus.FAILED
    assert "'os:system' is not allowed in this worker" in str(task.error)
    await asyncio.sleep(0.2)  # a shell it might have started would have made the file by now
    assert not target.exists()


async def test_a_password_in_the_url_works_and_never_appears_in_output(
    tmp_path: Path, web: WebFactory, workers: WorkerFactory
) -> None:
    if not redis_server_available():
        pytest.skip("redis-server not installed")
    password = "pw-" + secrets.token_hex(8)
    server = RedisServer(tmp_path / "auth", password=password).start()
    try:
        worker = workers(server.url)
        manager = web(server.url)
        task = await manager.create_task(redis_tasks.add, 20, 22)
        await manager.wait_for_task(task.id, timeout=20)
        assert task.result == 42
        wrong = server.url.replace(password, "wrong-" + password[3:])
        refused = WorkerProcess(tmp_path / "refused", wrong)
        assert refused.wait(30) == 1  # could not start: it says so, without the password
        server.stop()  # an outage: the running worker logs that it cannot reach Redis
        await async_wait_until(lambda: "cannot reach Redis" in worker.stdout(), timeout=20)
        assert worker.stop() == 0
        for proc in (worker, refused):
            output = proc.stdout() + proc.stderr()
            assert "***@127.0.0.1" in output
            assert password not in output
            assert password[3:] not in output
    finally:
        server.kill()
