"""Footprint of the Redis backend's protocol: bytes per finished task and round trips per task.

``python -m bench.redis_footprint [--tasks 10000] [--url redis://...]``. Without ``--url`` it
starts its own redis-server on a free port (never 6379) with persistence off. Prints JSON.
The task is typical: a short name, a traceparent header, a small JSON result, a 1 h TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any

from observable_tasks import TaskStatus
from observable_tasks.backends.redis import JsonSerializer, Keys, Scripts, TaskRecord, connect
from observable_tasks.backends.redis.records import encode_record

JSON = JsonSerializer()


def _start_server() -> tuple[subprocess.Popen[bytes], str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="ot-redis-bench-")
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", directory]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0", directory


async def _scripted_calls(client: Any) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def _commands(client: Any) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def run(url: str, n: int, events_maxlen: int, batch: int) -> dict[str, Any]:
    client = connect(url, max_connections=32)  # a plain pool fails past 100 at once
    await client.flushall()
    scripts = Scripts(client, Keys("bench"), events_maxlen=events_maxlen)
    await scripts.ensure_group()
    await client.config_resetstat()
    base_mem = int((await client.info("memory"))["used_memory"])
    before = await _commands(client)
    t0 = time.perf_counter()
    for start in range(0, n, 200):
        recs = [
            TaskRecord(
                id=uuid.uuid4().hex,
                func="myapp.tasks:send_email",
                name="send_email",
                args=["user@example.com"],
                kwargs={"subject": "Welcome"},
                max_attempts=3,
                timeout=30.0,
                ttl=3600.0,
                created=time.time(),
                headers={"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"},
            )
            for _ in range(min(200, n - start))
        ]
        await asyncio.gather(*(scripts.enqueue(r.id, encode_record(r)) for r in recs))
    t_enqueue = time.perf_counter() - t0
    claims = 0
    result = JSON.dumps({"status": "sent", "message_id": "abc123"})
    while got := (await scripts.claim("bench-worker", count=batch, lease_ms=30_000)).started:
        claims += 1
        await asyncio.gather(
            *(
                scripts.finish(c.id, c.attempt, "bench-worker", TaskStatus.COMPLETED, result=result)
                for c in got
            )
        )
    t_total = time.perf_counter() - t0
    after = await _commands(client)
    mem = int((await client.info("memory"))["used_memory"])
    some = await client.zrange(scripts.keys.done, 0, 0)
    hash_bytes = await client.memory_usage(scripts.keys.task(some[0].decode()), samples=0)
    inner = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    top = inner.pop("evalsha", 0) + inner.pop("eval", 0)
    for k in ("info", "config|resetstat", "zrange", "memory|usage"):
        inner.pop(k, None)
    await client.aclose()
    return {
        "tasks": n,
        "events_maxlen": events_maxlen,
        "claim_batch": batch,
        "memory_usage_of_one_finished_hash_bytes": hash_bytes,
        "used_memory_delta_per_finished_task_bytes": round((mem - base_mem) / n, 1),
        "round_trips_per_task": round(top / n, 3),
        "claim_calls": claims,
        "redis_commands_inside_scripts_per_task": round(sum(inner.values()) / n, 2),
        "inner_commands": inner,
        "enqueue_per_s": round(n / t_enqueue),
        "end_to_end_per_s": round(n / t_total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found (scripts/setup-tests installs it)")
        proc, url, directory = _start_server()
    try:
        for maxlen in (0, 10_000):
            print(json.dumps(asyncio.run(run(url, args.tasks, maxlen, args.batch))))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
