"""The Lua scripts of one queue behind typed async methods (one method per state change).

Every script is ``lua/_prelude.lua`` + ``lua/<name>.lua`` (the prelude holds the START and
"terminate" logic that several scripts share), registered with ``register_script``: EVALSHA,
and EVAL once when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from ...status import TaskStatus
from .keys import GROUP, Keys
from .records import decode_headers

__all__ = [
    "SCRIPT_NAMES", "Batch", "Claimed", "Coalescer", "Enqueued", "Promoted", "Renewed", "Scripts",
    "script_source",
]  # fmt: skip

SCRIPT_NAMES = (
    "enqueue", "claim", "start", "progress", "finish", "retry", "promote", "cancel", "renew",
    "release", "sweep",
)  # fmt: skip

FieldValue = bytes | str | int | float


def script_source(name: str) -> str:
    """The full text registered for script ``name`` (prelude included)."""
    lua = resources.files(__package__).joinpath("lua")
    prelude = lua.joinpath("_prelude.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n-- {name}.lua\n{body}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Claimed:
    """A task handed to a worker: run ``func`` with ``payload``; ``attempt`` fences later writes."""

    id: str
    attempt: int
    func: str
    payload: bytes | None
    timeout: float | None
    headers: dict[str, str]
    created: float | None
    name: str
    msg: str
    retry: str | None = None
    """The task's retry policy (``records.encode_policy``; None: the default one)."""
    retries: int = 0
    """Retries planned before this start: its attempt number for the policy is ``retries + 1``."""
    key: str | None = None
    ready: float | None = None
    """When this attempt could start (its planned time), if it was planned."""

    @classmethod
    def _from_reply(cls, row: Sequence[Any]) -> Claimed:
        # row: id, attempt, func, payload, timeout, headers, created, name, msg, retry,
        # retries, key, ready (nil -> None)
        row = list(row) + [None] * (13 - len(row))
        timeout = _s(row[4]) if row[4] is not None else ""
        return cls(
            id=_s(row[0]),
            attempt=int(row[1]),
            func=_s(row[2]) if row[2] is not None else "",
            payload=row[3] if isinstance(row[3], bytes) or row[3] is None else str(row[3]).encode(),
            timeout=float(timeout) if timeout else None,
            headers=decode_headers(row[5]),
            created=float(row[6]) if row[6] else None,
            name=_s(row[7]) if row[7] is not None else "",
            msg=_s(row[8]) if row[8] is not None else "",
            retry=_s(row[9]) if row[9] is not None else None,
            retries=int(row[10] or 0),
            key=_s(row[11]) if row[11] is not None else None,
            ready=float(row[12]) if row[12] else None,
        )


@dataclass(frozen=True)
class Enqueued:
    """What ENQUEUE did: ``queued`` (``msg``: its stream entry), ``delayed`` (``due``: when it
    may start, Redis' clock), ``held`` (``holder``: the unfinished task holding the key; nothing
    was written), ``exists`` (a task with this id exists)."""

    outcome: str
    msg: str | None = None
    due: float | None = None
    holder: str | None = None


@dataclass(frozen=True)
class Promoted:
    """What PROMOTE did: ``count`` tasks queued; ``now`` Redis' clock; ``next_due`` the earliest
    due time still waiting (None: none)."""

    count: int
    now: float
    next_due: float | None


@dataclass(frozen=True)
class Batch:
    """What a claim/start/read gave: tasks to run, and tasks START ended itself.

    ``ended`` holds ``(id, status)`` of tasks found with a cancel request (CANCELLED) or with
    their attempts used up (FAILED, error code WORKER_LOST): the caller counts those outcomes.
    """

    started: list[Claimed] = field(default_factory=list)
    ended: list[tuple[str, TaskStatus]] = field(default_factory=list)

    @classmethod
    def _from_reply(cls, reply: Sequence[Any]) -> Batch:
        rows, ended = reply
        return cls(
            [Claimed._from_reply(r) for r in rows],
            [(_s(i), TaskStatus(_s(st))) for i, st in ended],
        )


@dataclass(frozen=True)
class Renewed:
    """What ``renew`` found: tasks no longer owned (stop them) and cancels requested."""

    lost: list[str] = field(default_factory=list)
    cancel_requested: list[str] = field(default_factory=list)


def _pairs(owned: Iterable[tuple[str, int]]) -> list[str]:
    out: list[str] = []
    for task_id, attempt in owned:
        out += [task_id, str(attempt)]
    return out


class Coalescer:
    """Sends the script calls made during one event-loop tick as one pipeline (one round trip).

    ``call`` returns at once with a future; the calls queued in this tick are flushed on the
    next one, in order, as EVALSHA commands of a non-transactional pipeline (at most
    ``max_batch`` per pipeline). Each call gets its own reply or error; a call whose script the
    server does not know (restarted, SCRIPT FLUSH) is sent again on its own, which loads it. A
    connection error fails every call of that pipeline (the callers retry as they would).
    """

    def __init__(self, client: aioredis.Redis, max_batch: int = 500) -> None:
        self.client = client
        self.max_batch = max_batch
        self._queued: list[tuple[AsyncScript, list[str], list[FieldValue], asyncio.Future[Any]]]
        self._queued = []
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, script: AsyncScript, keys: list[str], args: list[FieldValue]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing = False
        queued, self._queued = self._queued, []
        for first in range(0, len(queued), self.max_batch):
            sending = loop.create_task(self._send(queued[first : first + self.max_batch]))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send(
        self, batch: list[tuple[AsyncScript, list[str], list[FieldValue], asyncio.Future[Any]]]
    ) -> None:
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            try:
                reply = await script(keys=keys, args=args)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # handed to the caller
                _settle(future, error=exc)
            else:
                _settle(future, reply)
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except (RedisError, OSError) as exc:
            for *_, future in batch:
                _settle(future, error=exc)
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                try:
                    reply = await script(keys=keys, args=args)  # loads it, then runs it
                except Exception as exc:  # handed to the caller
                    _settle(future, error=exc)
                    continue
            if isinstance(reply, Exception):
                _settle(future, error=reply)
            else:
                _settle(future, reply)


def _settle(
    future: asyncio.Future[Any], reply: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)


class Scripts:
    """The queue's scripts for one client and key layout.

    ``events_maxlen`` caps the events stream (approximately; 0 = no events); ``max_history``
    is how many finished records are kept at most (0 = no limit, TTLs/sweeps only).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys | None = None,
        *,
        events_maxlen: int = 10_000,
        max_history: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.events_maxlen = events_maxlen
        self.max_history = max_history
        self._p = self.keys.base
        self._s: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        self._coalescer = Coalescer(client)

    async def _run(self, name: str, keys: list[str], args: list[FieldValue]) -> Any:
        return await self._s[name](keys=keys, args=args)

    async def _coalesced(self, name: str, keys: list[str], args: list[FieldValue]) -> Any:
        """As :meth:`_run`, sent with the other calls of this loop tick in one pipeline."""
        return await self._coalescer.call(self._s[name], keys, args)

    async def ensure_group(self) -> None:
        """Create the stream and consumer group if absent (needed before a blocking read)."""
        try:
            await self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, task_id: str, fields: Mapping[str, FieldValue]) -> str | None:
        """Store a new PENDING task and queue it; its stream entry id, or None if the id exists."""
        return (await self.submit(task_id, fields)).msg

    async def submit(
        self,
        task_id: str,
        fields: Mapping[str, FieldValue],
        *,
        delay: float = 0.0,
        key: str | None = None,
    ) -> Enqueued:
        """Store a new PENDING task: queued now, or after ``delay`` seconds (delayed ZSET); with
        ``key``, only if no unfinished task holds that key (atomically, across processes)."""
        args: list[FieldValue] = [
            self._p, task_id, self.events_maxlen, f"{max(0.0, delay):.6f}", key or ""
        ]  # fmt: skip
        for name, value in fields.items():
            if name not in ("id", "status", "attempts", "msg", "key", "next", "ready"):
                args += [name, value]
        k = self.keys
        keys = [k.stream, k.task(task_id), k.idx, k.delayed, k.key(key) if key else k.task(task_id)]
        reply = await self._coalesced("enqueue", keys, args)
        if not reply:
            return Enqueued("exists")
        outcome, value = _s(reply[0]), _s(reply[1])
        if outcome == "queued":
            return Enqueued(outcome, msg=value)
        if outcome == "delayed":
            return Enqueued(outcome, due=float(value))
        return Enqueued(outcome, holder=value)

    async def promote(self, *, count: int = 500) -> Promoted:
        """Queue the delayed tasks that are due (atomic: safe with any number of workers)."""
        k = self.keys
        n, now, first = await self._run("promote", [k.delayed, k.stream], [self._p, count])
        return Promoted(int(n), float(now), float(first) if first else None)

    async def claim(self, worker: str, *, count: int, lease_ms: int) -> Batch:
        """Without blocking: up to ``count`` tasks, reclaimed (idle > lease) first, then new."""
        args: list[FieldValue] = [
            self._p, worker, lease_ms, count, self.max_history, self.events_maxlen
        ]  # fmt: skip
        k = self.keys
        return Batch._from_reply(await self._run("claim", [k.stream, k.reclaim_cursor], args))

    async def start(self, worker: str, entries: Iterable[tuple[str, str]]) -> Batch:
        """START the ``(task id, entry id)`` pairs a blocking XREADGROUP delivered to ``worker``."""
        args: list[FieldValue] = [self._p, worker, self.max_history, self.events_maxlen]
        for task_id, msg in entries:
            args += [task_id, msg]
        if len(args) == 4:
            return Batch()
        return Batch._from_reply(await self._run("start", [self.keys.stream], args))

    async def read(self, worker: str, *, count: int, block_ms: int) -> Batch:
        """Wait up to ``block_ms`` for new entries (XREADGROUP BLOCK), then START them.

        A missing stream/group (Redis restarted empty) is created again; that read is empty.
        """
        try:
            reply: Any = await self.client.xreadgroup(
                GROUP, worker, {self.keys.stream: ">"}, count=count, block=block_ms
            )
        except aioredis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis lost its data (restart without persistence)
            return Batch()
        entries: list[tuple[str, str]] = []
        for _stream, messages in reply or []:
            for msg_id, data in messages:
                task_id = data.get(b"id", data.get("id"))
                if task_id is not None:
                    entries.append((_s(task_id), _s(msg_id)))
        return await self.start(worker, entries)

    async def progress(self, task_id: str, attempt: int, worker: str, progress: float) -> int:
        """Record progress (fenced): 1 = cancel requested, 0 = go on, -1 = no longer yours."""
        args: list[FieldValue] = [
            self._p, task_id, attempt, worker, f"{progress:.6f}", self.events_maxlen
        ]  # fmt: skip
        return int(await self._run("progress", [self.keys.task(task_id)], args))

    async def finish(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        status: TaskStatus,
        *,
        result: bytes | None = None,
        error: bytes | None = None,
    ) -> bool:
        """Record the outcome (fenced); False when refused (the task is no longer yours)."""
        if not status.is_terminal:
            raise ValueError(f"finish needs a final status, not {status.value}")
        k = self.keys
        args: list[FieldValue] = [
            self._p, task_id, attempt, worker, status.value, result or b"", error or b"",
            self.max_history, self.events_maxlen,
        ]  # fmt: skip
        return bool(await self._coalesced("finish", [k.task(task_id), k.stream, k.done], args))

    async def retry(
        self, task_id: str, attempt: int, worker: str, *, wait: float, error: bytes
    ) -> tuple[str, float | None] | None:
        """Plan another attempt in ``wait`` seconds (fenced): ``("retrying", due)``,
        ``("cancelled", None)`` when a cancel was requested meanwhile, None when refused."""
        k = self.keys
        args: list[FieldValue] = [
            self._p, task_id, attempt, worker, f"{max(0.0, wait):.6f}", error,
            self.max_history, self.events_maxlen,
        ]  # fmt: skip
        reply = await self._coalesced("retry", [k.task(task_id), k.delayed, k.stream], args)
        if not reply:
            return None
        if _s(reply[0]) == "retrying":
            return "retrying", float(reply[1])
        return "cancelled", None

    async def cancel(self, task_id: str) -> str | None:
        """``"cancelled"`` (was pending), ``"running"`` (owner told), None (finished/unknown)."""
        args: list[FieldValue] = [self._p, task_id, self.max_history, self.events_maxlen]
        reply = await self._run("cancel", [self.keys.task(task_id)], args)
        return _s(reply) if isinstance(reply, (bytes, str)) else None

    async def renew(
        self, worker: str, owned: Iterable[tuple[str, int]], *, lease_ms: int
    ) -> Renewed:
        """Extend the leases of ``(id, attempt)`` still owned, and the worker's liveness."""
        k = self.keys
        args: list[FieldValue] = [self._p, worker, lease_ms, *_pairs(owned)]
        lost, cancel = await self._run("renew", [k.stream, k.worker(worker), k.workers], args)
        return Renewed([_s(x) for x in lost], [_s(x) for x in cancel])

    async def release(self, worker: str, owned: Iterable[tuple[str, int]]) -> int:
        """Give running tasks back as PENDING without using an attempt; deregister the worker."""
        k = self.keys
        args: list[FieldValue] = [self._p, worker, self.events_maxlen, *_pairs(owned)]
        return int(await self._run("release", [k.stream, k.worker(worker), k.workers], args))

    async def sweep(self, cutoff: float, *, count: int = 100) -> int:
        """Evict up to ``count`` records finished before ``cutoff`` (wall seconds)."""
        args: list[FieldValue] = [self._p, f"{cutoff:.6f}", count]
        return int(await self._run("sweep", [self.keys.done, self.keys.idx], args))
