"""``python -m bench.console_page``: the console's first page with 100,000 finished tasks.

For each backend (memory; Redis when ``redis-server`` is on PATH or ``--redis URL`` is given):
fill the history with ``--tasks`` finished tasks (memory: real tasks run by the manager; Redis:
finished records written straight in the backend's layout, which is what a long-running
deployment leaves behind), serve the app with uvicorn over TCP, then time ``GET
/console/api/tasks`` (first page of 50; median of ``--repeat``), a filtered page, a deep page
and ``/api/counts`` with httpx; finally load the page and its first API page ``--views`` times
and report the server process' RSS before and after (``gc`` first; the client runs in the
same process, so growth of either shows).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import uvicorn

from observable_tasks import TaskConfig, TaskManager, setup_tasks


async def noop(i: int) -> int:
    return i


async def stepping(task_id: str) -> None:
    from observable_tasks import update_task_progress

    for step in range(1, 5):
        await asyncio.sleep(0.05)
        await update_task_progress(task_id, step * 25.0)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _fill_memory(manager: TaskManager, n: int) -> None:
    batch = 5000
    for start in range(0, n, batch):
        tasks = [manager.submit(noop, i, name=f"job-{i}") for i in range(start, start + batch)]
        for task in tasks:
            await manager.wait_for_task(task.id)


def _fill_redis(url: str, queue: str, n: int) -> None:
    import redis

    from observable_tasks.backends.redis.keys import Keys
    from observable_tasks.backends.redis.records import TaskRecord, encode_record
    from observable_tasks.status import TaskStatus
    from observable_tasks.task import new_task_id

    keys = Keys(queue)
    client = redis.Redis.from_url(url)
    now = time.time() - n * 0.001
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        created = now + i * 0.001
        status = TaskStatus.FAILED if i % 100 == 0 else TaskStatus.COMPLETED
        record = TaskRecord(
            id=new_task_id(),
            func="bench.console_page:noop",
            name=f"job-{i}",
            status=status,
            progress=100.0,
            attempts=1,
            created=created,
            started=created + 0.0001,
            finished=created + 0.0005,
            worker="bench-worker",
            result=i if status is TaskStatus.COMPLETED else None,
            error={"type": "ValueError", "message": "boom", "code": None, "details": {}}
            if status is TaskStatus.FAILED
            else None,
        )
        fields = encode_record(record)
        fields["label"] = b"bench.console_page.noop"
        pipe.hset(keys.task(record.id), mapping=fields)  # type: ignore[arg-type]
        pipe.zadd(keys.idx, {record.id: f"{created:.6f}"})
        pipe.zadd(keys.done, {record.id: f"{created + 0.0005:.6f}"})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.close()


def _time(client: httpx.Client, url: str, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        answer = client.get(url)
        timings.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.text
    return statistics.median(timings) * 1000


def _live(client: httpx.Client) -> dict[str, Any]:
    """Read the event stream while /burst makes 700 task events in a second."""
    finished: set[str] = set()
    events = 0
    with client.stream("GET", "/console/api/events") as stream:
        lines = stream.iter_lines()
        next(lines)
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        poster = threading.Thread(
            target=lambda: answer.update(client.post("/burst").json()), daemon=True
        )
        poster.start()
        for line in lines:
            if not line.startswith("data: "):
                continue
            view = json.loads(line[6:])
            events += 1
            if view["event"] == "finished":
                finished.add(view["id"])
                if len(finished) == 100:
                    break
        took = time.perf_counter() - started
        poster.join()
    return {"burst_events_received": events, "burst_all_finished_seen_s": round(took, 2)}


def _run(backend: Any, label: str, n: int, repeat: int, views: int) -> dict[str, Any]:
    from nexios import NexiosApp

    app = NexiosApp()
    config = TaskConfig(max_task_history=n + 1000, max_concurrent_tasks=1000)
    manager = setup_tasks(app, config, telemetry=False, backend=backend, console=True)
    if backend is None:

        async def fill() -> None:
            await _fill_memory(manager, n)

        app.on_startup(fill)

    @app.post("/burst")
    async def burst(request: Any, response: Any) -> Any:
        # 100 tasks over one second, each with four progress updates: 700 events a second.
        from bench import console_page  # not __main__: a Redis worker imports it by name

        ids = []
        for _ in range(100):
            ids.append((await manager.create_task(console_page.stepping)).id)
            await asyncio.sleep(0.01)
        return {"ids": ids}

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    while not server.started:
        time.sleep(0.05)
    result: dict[str, Any] = {"backend": label, "tasks": n}
    result["fill_s"] = round(time.perf_counter() - started, 2)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            first = client.get("/console/api/tasks").json()
            assert len(first["tasks"]) == 50, first
            result["first_page_ms"] = round(_time(client, "/console/api/tasks", repeat), 2)
            deep = "/console/api/tasks?limit=50"
            cursor = first["next_cursor"]
            for _ in range(20):  # 1,000 tasks down
                if cursor is None:
                    break
                cursor = client.get(deep + f"&cursor={cursor}").json()["next_cursor"]
            if cursor is not None:
                page = deep + f"&cursor={cursor}"
                result["page_21_ms"] = round(_time(client, page, repeat), 2)
            result["search_ms"] = round(
                _time(client, "/console/api/tasks?q=job-9999", max(5, repeat // 10)), 2
            )
            from observable_tasks.console import api

            api.COUNTS_MAX_AGE = 0.0  # time the count itself, not the shared answer
            result["counts_ms"] = round(_time(client, "/console/api/counts", 5), 2)
            result.update(_live(client))
            gc.collect()
            before = _rss_kib()
            for _ in range(views):
                client.get("/console/")
                client.get("/console/api/tasks")
            gc.collect()
            after = _rss_kib()
            result["rss_before_mib"] = round(before / 1024, 1)
            result["rss_after_views_mib"] = round(after / 1024, 1)
            result["views"] = views
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_page", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--views", type=int, default=1000)
    parser.add_argument("--redis", default=None, help="Redis URL (default: a private server)")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    results = [_run(None, "memory", args.tasks, args.repeat, args.views)]
    print(json.dumps(results[-1]), flush=True)
    if not args.no_redis:
        folder = tempfile.mkdtemp(prefix="bench-console-redis-")
        proc = None
        url = args.redis
        try:
            if url is None and shutil.which("redis-server"):
                port = _free_port()
                proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--save", "", "--dir", folder],
                    stdout=subprocess.DEVNULL,
                )
                url = f"redis://127.0.0.1:{port}/0"
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
            if url is not None:
                from observable_tasks.backends.redis import RedisBackend

                queue = secrets.token_hex(4)
                started = time.perf_counter()
                _fill_redis(url, queue, args.tasks)
                fill = time.perf_counter() - started
                backend = RedisBackend(url, queue=queue)  # its worker runs the burst
                results.append(_run(backend, "redis", args.tasks, args.repeat, args.views))
                results[-1]["fill_s"] = round(fill, 2)
                print(json.dumps(results[-1]), flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
