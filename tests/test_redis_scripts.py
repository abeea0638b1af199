"""The Redis backend's Lua scripts against a real redis-server (started here, on a free port)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis_server import RedisServer, redis_server_available

from observable_tasks import TaskStatus
from observable_tasks.backends.redis import (
    GROUP,
    Batch,
    FunctionNotAllowedError,
    FunctionPolicy,
    JsonSerializer,
    Keys,
    Scripts,
    TaskRecord,
    connect,
    decode_record,
    encode_record,
)
from observable_tasks.backends.redis.records import error_info

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed")

K = Keys("q")
JSON = JsonSerializer()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
async def r(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = connect(server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def scripts(r: aioredis.Redis) -> Scripts:
    return Scripts(r, K)


async def add(s: Scripts, task_id: str, **kw: Any) -> str:
    kw.setdefault("func", "myapp.tasks:work")
    kw.setdefault("args", [1])
    kw.setdefault("kwargs", {"x": "y"})
    msg = await s.enqueue(task_id, encode_record(TaskRecord(id=task_id, **kw)))
    assert msg is not None
    return msg


async def record(r: aioredis.Redis, task_id: str) -> TaskRecord:
    return decode_record(await r.hgetall(K.task(task_id)))


async def test_enqueue_then_claim_gives_attempt_1(r: aioredis.Redis, scripts: Scripts) -> None:
    msg = await add(scripts, "t1", name="job", timeout=5.0, headers={"traceparent": "00-ab-cd-01"})
    rec = await record(r, "t1")
    assert (rec.status, rec.attempts, rec.msg, rec.args, rec.kwargs) == (
        TaskStatus.PENDING, 0, msg, [1], {"x": "y"}
    )  # fmt: skip
    assert rec.created is not None
    assert abs(rec.created - time.time()) < 5
    assert await r.xlen(K.stream) == 1
    assert await r.zscore(K.idx, "t1") == pytest.approx(rec.created)
    assert await scripts.enqueue("t1", {"func": "x:y"}) is None  # the id exists

    (c,) = (await scripts.claim("w1", count=10, lease_ms=30_000)).started
    assert (c.id, c.attempt, c.func, c.name, c.timeout, c.msg) == (
        "t1", 1, "myapp.tasks:work", "job", 5.0, msg
    )  # fmt: skip
    assert JSON.loads(c.payload or b"") == [[1], {"x": "y"}]
    assert c.headers == {"traceparent": "00-ab-cd-01"}
    rec = await record(r, "t1")
    assert (rec.status, rec.attempts, rec.worker) == (TaskStatus.RUNNING, 1, "w1")
    assert rec.started is not None
    assert rec.started >= (rec.created or 0)
    assert (await scripts.claim("w2", count=10, lease_ms=30_000)).started == []
    kinds = [f[b"event"] for _, f in await r.xrange(K.events)]
    assert kinds == [b"created", b"started"]


async def test_claim_respects_count_and_order(scripts: Scripts) -> None:
    for i in range(5):
        await add(scripts, f"t{i}")
    first = (await scripts.claim("w1", count=2, lease_ms=30_000)).started
    rest = (await scripts.claim("w1", count=10, lease_ms=30_000)).started
    assert [c.id for c in first] == ["t0", "t1"]
    assert [c.id for c in rest] == ["t2", "t3", "t4"]


async def test_blocking_read_then_start(scripts: Scripts) -> None:
    await scripts.ensure_group()
    await scripts.ensure_group()  # idempotent
    t0 = time.monotonic()
    assert (await scripts.read("w1", count=5, block_ms=100)).started == []
    assert time.monotonic() - t0 >= 0.09
    await add(scripts, "t1")
    (c,) = (await scripts.read("w1", count=5, block_ms=100)).started
    assert (c.id, c.attempt) == ("t1", 1)


async def test_blocking_read_recreates_a_lost_group(r: aioredis.Redis, scripts: Scripts) -> None:
    await scripts.ensure_group()
    await r.flushall()  # as after a restart without persistence
    assert await scripts.read("w1", count=5, block_ms=10) == Batch()
    await add(scripts, "t1")
    assert [c.id for c in (await scripts.read("w1", count=5, block_ms=10)).started] == ["t1"]


async def test_reclaim_after_lease_fences_the_first_worker(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", max_attempts=3)
    (c1,) = (await scripts.claim("w1", count=1, lease_ms=100)).started
    assert (await scripts.claim("w2", count=1, lease_ms=100)).started == []  # lease not over yet
    await asyncio.sleep(0.15)  # w1 "died": no renew
    (c2,) = (await scripts.claim("w2", count=1, lease_ms=100)).started
    assert (c2.id, c2.attempt) == ("t1", 2)
    # the stale worker is refused everywhere
    assert await scripts.progress("t1", c1.attempt, "w1", 50.0) == -1
    done = JSON.dumps("stale")
    assert not await scripts.finish("t1", c1.attempt, "w1", TaskStatus.COMPLETED, result=done)
    assert (await scripts.renew("w1", [("t1", c1.attempt)], lease_ms=100)).lost == ["t1"]
    assert await scripts.progress("t1", 2, "w2", 50.0) == 0
    result = JSON.dumps({"ok": True})
    assert await scripts.finish("t1", 2, "w2", TaskStatus.COMPLETED, result=result)
    rec = await record(r, "t1")
    assert (rec.status, rec.result, rec.worker, rec.progress) == (
        TaskStatus.COMPLETED, {"ok": True}, "w2", 50.0
    )  # fmt: skip
    assert not await scripts.finish("t1", 2, "w2", TaskStatus.FAILED)  # once only


async def test_renew_keeps_a_task_from_being_reclaimed(r: aioredis.Redis, scripts: Scripts) -> None:
    await add(scripts, "t1")
    (c,) = (await scripts.claim("w1", count=1, lease_ms=100)).started
    for _ in range(6):  # 0.3 s, three leases
        await asyncio.sleep(0.05)
        renewed = await scripts.renew("w1", [(c.id, c.attempt)], lease_ms=100)
        assert (renewed.lost, renewed.cancel_requested) == ([], [])
        assert (await scripts.claim("w2", count=1, lease_ms=100)).started == []
    assert 0 < await r.pttl(K.worker("w1")) <= 100
    assert await r.zscore(K.workers, "w1") == pytest.approx(time.time(), abs=5)
    assert (await record(r, "t1")).attempts == 1


async def test_cancel_pending(r: aioredis.Redis, scripts: Scripts) -> None:
    await add(scripts, "t1")
    pubsub = r.pubsub()
    await pubsub.subscribe(K.done_channel("t1"))
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    assert await scripts.cancel("t1") == "cancelled"
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert msg is not None
    assert msg["data"] == b"CANCELLED"
    await pubsub.aclose()
    rec = await record(r, "t1")
    assert rec.status is TaskStatus.CANCELLED
    assert rec.finished is not None
    assert await r.xlen(K.stream) == 0
    assert (await scripts.claim("w1", count=1, lease_ms=1000)).started == []
    assert await scripts.cancel("t1") is None
    assert await scripts.cancel("nope") is None


async def test_cancel_pending_entry_already_read_is_skipped(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1")
    await scripts.ensure_group()
    reply = await r.xreadgroup(GROUP, "w1", {K.stream: ">"}, count=1)
    (msg_id, _fields) = reply[0][1][0]
    assert await scripts.cancel("t1") == "cancelled"
    assert await scripts.start("w1", [("t1", msg_id.decode())]) == Batch()
    assert (await r.xpending(K.stream, GROUP))["pending"] == 0
    assert (await record(r, "t1")).attempts == 0


async def test_cancel_running(r: aioredis.Redis, scripts: Scripts) -> None:
    await add(scripts, "t1")
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    pubsub = r.pubsub()
    await pubsub.subscribe(K.cancel_channel)
    await pubsub.get_message(timeout=1)
    assert await scripts.cancel("t1") == "running"
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert msg is not None
    assert msg["data"] == b"t1"
    await pubsub.aclose()
    assert (await record(r, "t1")).status is TaskStatus.RUNNING  # the owner ends it
    assert await scripts.progress("t1", c.attempt, "w1", 10.0) == 1
    renewed = await scripts.renew("w1", [("t1", c.attempt)], lease_ms=30_000)
    assert renewed.cancel_requested == ["t1"]
    assert await scripts.finish("t1", c.attempt, "w1", TaskStatus.CANCELLED)
    rec = await record(r, "t1")
    assert rec.status is TaskStatus.CANCELLED
    assert not rec.cancel
    assert await scripts.cancel("t1") is None


async def test_cancel_flag_of_a_lost_worker_is_honoured_on_reclaim(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", max_attempts=3)
    await scripts.claim("w1", count=1, lease_ms=50)
    assert await scripts.cancel("t1") == "running"
    await asyncio.sleep(0.1)  # w1 died before acting on it
    batch = await scripts.claim("w2", count=1, lease_ms=50)
    assert (batch.started, batch.ended) == ([], [("t1", TaskStatus.CANCELLED)])
    assert (await record(r, "t1")).status is TaskStatus.CANCELLED
    assert await r.xlen(K.stream) == 0


async def test_max_attempts_exceeded_fails_with_worker_lost(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", max_attempts=2)
    assert [c.attempt for c in (await scripts.claim("w1", count=1, lease_ms=50)).started] == [1]
    await asyncio.sleep(0.08)
    assert [c.attempt for c in (await scripts.claim("w2", count=1, lease_ms=50)).started] == [2]
    await asyncio.sleep(0.08)
    batch = await scripts.claim("w3", count=1, lease_ms=50)
    assert (batch.started, batch.ended) == ([], [("t1", TaskStatus.FAILED)])
    rec = await record(r, "t1")
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error["type"] == "WorkerLost"
    assert rec.error["code"] == "WORKER_LOST"
    assert rec.error["message"].startswith("worker lost")
    assert rec.error["details"] == {"attempts": 2, "last_worker": "w2"}
    assert await r.xlen(K.stream) == 0
    assert (await r.xpending(K.stream, GROUP))["pending"] == 0


async def test_release_gives_the_task_back_without_using_an_attempt(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    old = await add(scripts, "t1")
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    await scripts.renew("w1", [(c.id, c.attempt)], lease_ms=30_000)
    assert await scripts.release("w1", [(c.id, c.attempt), ("unknown", 1)]) == 1
    rec = await record(r, "t1")
    assert (rec.status, rec.attempts, rec.worker, rec.started) == (
        TaskStatus.PENDING, 0, None, None
    )  # fmt: skip
    assert rec.msg is not None
    assert rec.msg != old
    assert await r.xlen(K.stream) == 1
    assert await r.exists(K.worker("w1")) == 0
    assert await r.zscore(K.workers, "w1") is None
    assert not await scripts.finish("t1", c.attempt, "w1", TaskStatus.COMPLETED)
    (again,) = (await scripts.claim("w2", count=1, lease_ms=30_000)).started
    assert (again.id, again.attempt) == ("t1", 1)


async def test_finish_keeps_the_stream_empty_and_applies_the_ttl(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    n = 1000
    for start in range(0, n, 100):
        await asyncio.gather(*(add(scripts, f"t{i}", ttl=60.0) for i in range(start, start + 100)))
    assert await r.xlen(K.stream) == n
    finished = 0
    while claimed := (await scripts.claim("w1", count=100, lease_ms=30_000)).started:
        oks = await asyncio.gather(
            *(scripts.finish(c.id, c.attempt, "w1", TaskStatus.COMPLETED) for c in claimed)
        )
        finished += sum(oks)
    assert finished == n
    assert await r.xlen(K.stream) == 0
    assert (await r.xpending(K.stream, GROUP))["pending"] == 0
    assert await r.zcard(K.done) == n
    assert await r.zcard(K.idx) == n
    assert 59_000 < await r.pttl(K.task("t7")) <= 60_000
    assert await r.hexists(K.task("t7"), "payload") == 0


async def test_ttl_expiry_then_sweep_cleans_the_indexes(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", ttl=0.1)
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    pubsub = r.pubsub()
    await pubsub.subscribe(K.done_channel("t1"))
    await pubsub.get_message(timeout=1)
    assert await scripts.finish("t1", c.attempt, "w1", TaskStatus.FAILED, error=b'{"type":"X"}')
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert msg is not None
    assert msg["data"] == b"FAILED"
    await pubsub.aclose()
    await asyncio.sleep(0.2)
    assert await r.exists(K.task("t1")) == 0
    assert await r.zcard(K.idx) == 1  # the hash expired, the index entries remain
    assert await scripts.sweep(time.time()) == 1
    assert await r.zcard(K.idx) == 0
    assert await r.zcard(K.done) == 0


async def test_max_history_evicts_the_oldest(r: aioredis.Redis) -> None:
    s = Scripts(r, K, max_history=3)
    for i in range(5):
        await add(s, f"t{i}")
        (c,) = (await s.claim("w1", count=1, lease_ms=30_000)).started
        assert await s.finish(c.id, c.attempt, "w1", TaskStatus.COMPLETED)
    assert [await r.exists(K.task(f"t{i}")) for i in range(5)] == [0, 0, 1, 1, 1]
    assert await r.zrange(K.done, 0, -1) == [b"t2", b"t3", b"t4"]
    assert await r.zrange(K.idx, 0, -1) == [b"t2", b"t3", b"t4"]


async def test_max_history_does_not_evict_pending_tasks(r: aioredis.Redis) -> None:
    s = Scripts(r, K, max_history=1)
    await add(s, "waiting")
    for i in range(3):
        await add(s, f"t{i}")
        assert await s.cancel(f"t{i}") == "cancelled"
    assert await r.zrange(K.idx, 0, -1) == [b"waiting", b"t2"]


async def test_sweep_is_bounded_and_uses_the_cutoff(r: aioredis.Redis, scripts: Scripts) -> None:
    for i in range(5):
        await add(scripts, f"t{i}")
        assert await scripts.cancel(f"t{i}") == "cancelled"
    cutoff = (await r.zscore(K.done, "t2")) or 0.0
    assert await scripts.sweep(cutoff, count=2) == 2
    assert await scripts.sweep(cutoff, count=2) == 1
    assert await scripts.sweep(cutoff, count=2) == 0
    assert await r.zrange(K.done, 0, -1) == [b"t3", b"t4"]
    assert await r.exists(K.task("t0"), K.task("t2"), K.task("t3")) == 1


async def test_a_record_naming_os_system_is_refused_and_recorded_failed(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "evil", func="os:system", args=["echo pwned"], kwargs={})
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    policy = FunctionPolicy(allow_modules=["myapp"])
    with pytest.raises(FunctionNotAllowedError, match="not allowed") as info:
        policy.resolve(c.func)
    error = JSON.dumps(error_info(info.value))
    assert await scripts.finish(c.id, c.attempt, "w1", TaskStatus.FAILED, error=error)
    rec = await record(r, "evil")
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error["type"] == "FunctionNotAllowedError"
    assert rec.error["code"] == "FUNCTION_NOT_ALLOWED"


async def test_scripts_survive_script_flush(r: aioredis.Redis, scripts: Scripts) -> None:
    await add(scripts, "t1")
    await r.script_flush()
    await add(scripts, "t2")  # NOSCRIPT -> EVAL fallback
    assert len((await scripts.claim("w1", count=5, lease_ms=1000)).started) == 2


async def test_finish_rejects_a_non_terminal_status(scripts: Scripts) -> None:
    with pytest.raises(ValueError, match="final status"):
        await scripts.finish("t1", 1, "w1", TaskStatus.RUNNING)


@pytest.mark.parametrize("queue", ["default", "emails", "a:b", "tenant-42:high"])
def test_every_key_of_a_queue_is_in_one_cluster_slot(queue: str) -> None:
    keys = Keys(queue)
    slots = {key_slot(k.encode()) for k in keys.all_keys("0" * 32, "host-1:123")}
    assert slots == {key_slot(queue.encode())}
    assert all(k.startswith(f"ot:{{{queue}}}:") for k in keys.all_keys())


@pytest.mark.parametrize("bad", ["", "a{b", "c}d"])
def test_queue_names_that_would_break_the_hash_tag_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        Keys(bad)


async def test_state_survives_a_redis_crash_with_aof(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        client = connect(srv.url)
        s = Scripts(client, K)
        await add(s, "t1", max_attempts=3)
        await add(s, "t2")
        (c,) = (await s.claim("w1", count=1, lease_ms=100)).started
        srv.restart(kill=True)  # SIGKILL: script cache and connections are gone
        await client.aclose()
        client = connect(srv.url)
        s = Scripts(client, K)
        assert decode_record(await client.hgetall(K.task("t1"))).status is TaskStatus.RUNNING
        await asyncio.sleep(0.15)
        got = {x.id: x.attempt for x in (await s.claim("w2", count=5, lease_ms=100)).started}
        assert got == {"t1": 2, "t2": 1}
        assert not await s.finish("t1", c.attempt, "w1", TaskStatus.COMPLETED)
        assert await s.finish("t1", 2, "w2", TaskStatus.COMPLETED)
        await client.aclose()
    finally:
        srv.stop()


async def test_default_is_at_most_once(r: aioredis.Redis, scripts: Scripts) -> None:
    await add(scripts, "t1")  # max_attempts defaults to 1
    await scripts.claim("w1", count=1, lease_ms=50)
    await asyncio.sleep(0.08)
    assert (await scripts.claim("w2", count=1, lease_ms=50)).started == []
    rec = await record(r, "t1")
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error["code"] == "WORKER_LOST"


async def test_reclaim_reaches_expired_entries_behind_many_live_ones(scripts: Scripts) -> None:
    # XAUTOCLAIM scans COUNT*10 pending entries per call: the cursor makes claims round-robin
    for i in range(30):
        await add(scripts, f"t{i:02}", max_attempts=5)
    live = (await scripts.claim("w1", count=25, lease_ms=100)).started
    dead = (await scripts.claim("w2", count=5, lease_ms=100)).started
    for _ in range(4):
        await asyncio.sleep(0.05)
        assert (
            await scripts.renew("w1", [(c.id, c.attempt) for c in live], lease_ms=100)
        ).lost == []
    got: list[str] = []
    for _ in range(12):
        got += [c.id for c in (await scripts.claim("w3", count=1, lease_ms=100)).started]
    assert sorted(got) == sorted(c.id for c in dead)


async def test_events_stream_is_capped_and_can_be_off(r: aioredis.Redis) -> None:
    capped = Scripts(r, K, events_maxlen=10)
    for i in range(300):
        await add(capped, f"t{i}")
    # MAXLEN ~ trims whole stream nodes (100 entries each): bounded, not exact
    assert 10 <= await r.xlen(K.events) <= 110
    (_, last), *_ = await r.xrevrange(K.events, count=1)
    assert (last[b"id"], last[b"event"], last[b"status"]) == (b"t299", b"created", b"PENDING")
    await r.delete(K.events)
    await add(Scripts(r, K, events_maxlen=0), "quiet")
    assert await r.exists(K.events) == 0


# -- coalescing: the ENQUEUE and FINISH calls of one loop tick share one pipeline ------------


async def test_calls_of_one_tick_go_in_one_pipeline(
    r: aioredis.Redis, scripts: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines: list[int] = []
    real = r.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        pipelines.append(0)
        return pipe

    monkeypatch.setattr(r, "pipeline", counting)
    ids = [f"c{i}" for i in range(50)]
    msgs = await asyncio.gather(*(add(scripts, i) for i in ids))
    assert len(set(msgs)) == 50  # each call got its own reply
    assert len(pipelines) == 1
    batch = await scripts.claim("w1", count=50, lease_ms=30_000)
    done = await asyncio.gather(
        *(scripts.finish(c.id, c.attempt, "w1", TaskStatus.COMPLETED) for c in batch.started),
        scripts.finish("c0", 9, "w1", TaskStatus.COMPLETED),  # fenced out: False, alone
    )
    assert done == [True] * 50 + [False]
    assert len(pipelines) == 2
    assert {(await record(r, i)).status for i in ids} == {TaskStatus.COMPLETED}


async def test_a_coalesced_batch_loads_scripts_the_server_forgot(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await r.script_flush()  # as after a restart without persistence
    msgs = await asyncio.gather(*(add(scripts, f"f{i}") for i in range(5)))
    assert all(msgs)
    assert await r.xlen(K.stream) == 5


async def test_a_coalesced_batch_fails_every_call_when_redis_is_unreachable(
    tmp_path: Path,
) -> None:
    srv = RedisServer(tmp_path / "gone").start()
    client = connect(srv.url)
    s = Scripts(client, K)
    await add(s, "x0")
    srv.kill()
    results = await asyncio.gather(*(add(s, f"x{i}") for i in range(1, 4)), return_exceptions=True)
    assert all(isinstance(e, (aioredis.ConnectionError, OSError)) for e in results), results
    await client.aclose()


async def test_a_traced_record_stays_a_compact_listpack(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await add(scripts, "tp", headers={"traceparent": traceparent}, name="send_email")
    assert await r.hget(K.task("tp"), "headers") == traceparent.encode()  # bare: 55 bytes
    assert await r.object("encoding", K.task("tp")) == b"listpack"
    assert (await record(r, "tp")).headers == {"traceparent": traceparent}
    batch = await scripts.claim("w1", count=1, lease_ms=30_000)
    assert batch.started[0].headers == {"traceparent": traceparent}
    both = {"traceparent": traceparent, "tracestate": "k=v"}
    await add(scripts, "ts", headers=both)
    assert (await record(r, "ts")).headers == both  # anything else: JSON


def test_headers_round_trip() -> None:
    from observable_tasks.backends.redis.records import decode_headers, encode_headers

    for headers in ({}, {"traceparent": "00-a-b-01"}, {"traceparent": "{odd"}, {"x": "1"}):
        assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers(None) == {}
    assert decode_headers(b'{"a":"b"}') == {"a": "b"}  # records written before: JSON


# -- retries, delayed starts, keys ------------------------------------------------------------


def _error(message: str) -> bytes:
    return JSON.dumps(error_info(ConnectionError(message)))


async def test_a_delayed_task_waits_in_the_zset_until_promote_finds_it_due(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    fields = encode_record(TaskRecord(id="t1", func="m:f"))
    done = await scripts.submit("t1", fields, delay=0.2)
    assert done.outcome == "delayed"
    assert done.due is not None
    rec = await record(r, "t1")
    assert (rec.status, rec.msg, rec.next, rec.ready) == (
        TaskStatus.PENDING, None, done.due, done.due
    )  # fmt: skip
    assert await r.xlen(K.stream) == 0
    assert await r.zscore(K.delayed, "t1") == pytest.approx(done.due)
    early = await scripts.promote()
    assert early.count == 0
    assert early.next_due == pytest.approx(done.due)
    assert (await scripts.claim("w1", count=5, lease_ms=30_000)).started == []
    await asyncio.sleep(max(0.0, done.due - early.now) + 0.01)
    promoted = await scripts.promote()
    assert (promoted.count, promoted.next_due) == (1, None)
    assert await scripts.promote() == type(promoted)(0, pytest.approx(time.time(), abs=5), None)
    (c,) = (await scripts.claim("w1", count=5, lease_ms=30_000)).started
    assert (c.id, c.attempt, c.retries, c.ready) == ("t1", 1, 0, pytest.approx(done.due))
    rec = await record(r, "t1")
    assert rec.next is None
    assert rec.status is TaskStatus.RUNNING


async def test_retry_is_fenced_and_parks_the_task_with_its_error(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", retry="3 0.05 60.0 - builtins.ConnectionError")
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    assert c.retry == "3 0.05 60.0 - builtins.ConnectionError"
    assert await scripts.retry("t1", c.attempt, "w2", wait=1.0, error=_error("x")) is None
    outcome, due = await scripts.retry("t1", c.attempt, "w1", wait=30.0, error=_error("lost"))  # type: ignore[misc]
    assert outcome == "retrying"
    assert due is not None
    assert due > time.time() + 25
    rec = await record(r, "t1")
    assert (rec.status, rec.attempts, rec.retries, rec.runs, rec.worker, rec.msg) == (
        TaskStatus.PENDING, 1, 1, 0, None, None
    )  # fmt: skip
    assert rec.error is not None
    assert rec.error["message"] == "lost"
    assert rec.next == pytest.approx(due)
    assert await r.xlen(K.stream) == 0  # the entry was XACK+XDEL'd
    assert not await scripts.finish("t1", c.attempt, "w1", TaskStatus.COMPLETED)  # fenced
    kinds = [f[b"event"] for _, f in await r.xrange(K.events)]
    assert kinds == [b"created", b"started", b"retrying"]
    # A wait of 0 queues it at once; the next start is attempt 2, retry number 1.
    await r.zadd(K.delayed, {"t1": 0})  # due now
    assert (await scripts.promote()).count == 1
    (c2,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    assert (c2.attempt, c2.retries) == (2, 1)
    rec = await record(r, "t1")
    assert rec.error is None
    assert rec.next is None
    answer = await scripts.retry("t1", 2, "w1", wait=0.0, error=_error("again"))
    assert answer is not None
    assert answer[0] == "retrying"
    (c3,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    assert (c3.attempt, c3.retries) == (3, 2)


async def test_a_cancel_requested_during_the_attempt_wins_over_its_retry(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await add(scripts, "t1", key="k")
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    assert await scripts.cancel("t1") == "running"
    assert await scripts.retry("t1", c.attempt, "w1", wait=0.0, error=_error("x")) == (
        "cancelled", None
    )  # fmt: skip
    assert (await record(r, "t1")).status is TaskStatus.CANCELLED
    assert await r.zcard(K.delayed) == 0
    assert await r.xlen(K.stream) == 0


async def test_cancel_removes_a_waiting_task_from_the_zset(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    await scripts.submit("t1", encode_record(TaskRecord(id="t1", func="m:f")), delay=0.05)
    assert await scripts.cancel("t1") == "cancelled"
    await asyncio.sleep(0.06)
    assert (await scripts.promote()).count == 0
    assert (await scripts.claim("w1", count=1, lease_ms=30_000)).started == []
    rec = await record(r, "t1")
    assert rec.status is TaskStatus.CANCELLED
    assert rec.next is None
    assert await r.zcard(K.delayed) == 0


async def test_redeliveries_are_bounded_per_retry_attempt(
    r: aioredis.Redis, scripts: Scripts
) -> None:
    """``max_attempts`` of the record (lost workers) counts the starts of one retry attempt
    (``runs``): retries do not use it up, and a retry attempt gets the whole budget again."""
    await add(scripts, "t1", max_attempts=2)
    (c,) = (await scripts.claim("w1", count=1, lease_ms=50)).started
    await asyncio.sleep(0.08)  # w1 lost: redelivered once (runs 2 of 2)
    (c,) = (await scripts.claim("w2", count=1, lease_ms=50)).started
    assert c.attempt == 2
    assert await scripts.retry("t1", 2, "w2", wait=0.0, error=_error("x")) is not None
    (c,) = (await scripts.claim("w2", count=1, lease_ms=50)).started  # runs 1 again
    assert (c.attempt, c.retries) == (3, 1)
    await asyncio.sleep(0.08)
    (c,) = (await scripts.claim("w3", count=1, lease_ms=50)).started  # runs 2
    assert c.attempt == 4
    await asyncio.sleep(0.08)
    batch = await scripts.claim("w4", count=1, lease_ms=50)  # runs 3 > 2: worker lost
    assert batch.ended == [("t1", TaskStatus.FAILED)]
    rec = await record(r, "t1")
    assert rec.error is not None
    assert rec.error["code"] == "WORKER_LOST"
    assert rec.error["details"]["attempts"] == 2


async def test_a_key_is_held_until_its_task_finishes(r: aioredis.Redis, scripts: Scripts) -> None:
    def fields(task_id: str) -> Any:
        return encode_record(TaskRecord(id=task_id, func="m:f"))

    assert (await scripts.submit("t1", fields("t1"), key="order-42")).outcome == "queued"
    held = await scripts.submit("t2", fields("t2"), key="order-42", delay=5)
    assert (held.outcome, held.holder) == ("held", "t1")
    assert await r.exists(K.task("t2")) == 0  # nothing was written
    assert await r.get(K.key("order-42")) == b"t1"
    assert (await record(r, "t1")).key == "order-42"
    (c,) = (await scripts.claim("w1", count=1, lease_ms=30_000)).started
    assert c.key == "order-42"
    assert await scripts.finish("t1", c.attempt, "w1", TaskStatus.COMPLETED)
    assert await r.exists(K.key("order-42")) == 0  # released: no TTL to outlive the task
    # Free again; released by CANCEL and by "worker lost" too.
    assert (await scripts.submit("t3", fields("t3"), key="order-42", delay=5)).outcome == "delayed"
    assert (await scripts.submit("t4", fields("t4"), key="order-42")).holder == "t3"
    assert await scripts.cancel("t3") == "cancelled"
    assert (await scripts.submit("t5", fields("t5"), key="order-42")).outcome == "queued"
    await r.hset(K.task("t5"), "max_attempts", 1)
    await scripts.claim("w1", count=1, lease_ms=50)
    await asyncio.sleep(0.08)
    assert (await scripts.claim("w2", count=1, lease_ms=50)).ended == [("t5", TaskStatus.FAILED)]
    assert await r.exists(K.key("order-42")) == 0
    # A stale key record (its task gone) does not block the key.
    await r.set(K.key("stale"), "gone")
    assert (await scripts.submit("t6", fields("t6"), key="stale")).outcome == "queued"
    assert await r.get(K.key("stale")) == b"t6"


async def test_a_key_with_braces_stays_in_the_queue_slot() -> None:
    assert key_slot(K.key("{other}").encode()) == key_slot(K.stream.encode())
