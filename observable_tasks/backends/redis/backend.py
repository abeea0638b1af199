"""RedisBackend: the page's API over Redis, so that every process of an app shares its tasks.

The manager keeps what is per process (config, validation, middleware, observers) and hands
records and the queue to this backend. Reads the page makes without ``await`` (``get_task``,
``list_tasks``) use a separate synchronous client with a short socket timeout (a bounded
blocking read); ``aget_task``/``alist_tasks`` are the awaitable forms. ``Task`` objects handed
out are kept (weakly) and refreshed in place on every read, so a caller holding one sees it
change, as with the memory backend. Execution is in :mod:`.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..._awaitable import Done
from ...errors import TaskError, TaskNotFoundError, TaskTimeoutError
from ...feed import EventHub, Subscription, TaskEvent
from ...query import Matcher, decode_cursor, encode_cursor
from ...retry import RetryPolicy
from ...status import TaskStatus
from ...task import Task
from .client import connect, redact
from .codec import FunctionPolicy, JsonSerializer, Serializer, encode_payload
from .keys import Keys
from .listener import Listener
from .records import decode_policy, decode_record, encode_headers, encode_policy
from .scripts import Scripts

if TYPE_CHECKING:
    from ...manager import TaskManager
    from .worker import Worker

__all__ = ["BACKEND_ENV", "RedisBackend", "RemoteTaskError", "TaskBackendError"]

logger = logging.getLogger("observable_tasks")

BACKEND_ENV = "OBSERVABLE_TASKS_BACKEND"
"""Environment variable with the backend URL ``setup_tasks`` uses when none is given."""


class TaskBackendError(ConnectionError):
    """The backend (Redis) could not be reached: raised at the call, nothing was created."""


class RemoteTaskError(Exception):
    """A task's exception as read back from Redis (the original class may not exist here).

    ``str()`` is its message; ``type`` the original class name; ``code``/``details`` as a
    :class:`~observable_tasks.TaskError` carries them.
    """

    def __init__(self, type_name: str, message: str, code: str | None, details: Any) -> None:
        super().__init__(message)
        self.type = type_name
        self.message = message
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return self.message


def _error_from(info: Mapping[str, Any] | None, timeout: float | None) -> BaseException | None:
    if not info:
        return None
    kind = str(info.get("type") or "Exception")
    message = str(info.get("message") or "")
    code, details = info.get("code"), info.get("details")
    if kind == "TaskError":
        return TaskError(message, code=code or "TASK_ERROR", details=details or {})
    if kind == "TaskTimeoutError" and timeout:
        return TaskTimeoutError(timeout)
    return RemoteTaskError(kind, message, code, details)


class Scheduled(Done[Task]):
    """What ``create_task`` returns on Redis: the enqueue is already under way.

    ``await`` it for the task (raises :class:`TaskBackendError` if Redis could not take it);
    ``.result(timeout)`` from a worker thread blocks until then.
    """

    __slots__ = ("_future",)

    def __init__(self, task: Task, future: asyncio.Future[Task] | Any) -> None:
        super().__init__(task)
        self._future = future

    def __await__(self) -> Any:
        future = self._future
        if isinstance(future, asyncio.Future):
            return (yield from future.__await__())
        return (yield from asyncio.wrap_future(future).__await__())

    def result(self, timeout: float | None = 10.0) -> Task:
        future = self._future
        if isinstance(future, asyncio.Future):
            if not future.done():
                raise RuntimeError("await create_task(...) on the event loop instead of .result()")
            return future.result()
        value: Task = future.result(timeout)
        return value


class RedisBackend:
    """Tasks in Redis (Streams + one hash per task + Lua scripts); see ``docs/redis-backend.md``.

    ``target``: a URL (``redis://``, ``rediss://`` for TLS, password in the URL), a
    ``redis.asyncio.Redis`` client or a connection pool. ``execute``: whether this process also
    runs tasks (embedded worker). ``lease``: seconds a running task's lease lasts before another
    worker may take it over (renewed while it runs). ``allow``: modules/packages whose functions
    this process may run besides those it passes to ``create_task`` itself.
    """

    def __init__(
        self,
        target: str | aioredis.Redis | aioredis.ConnectionPool,
        *,
        queue: str = "default",
        prefix: str = "ot",
        serializer: Serializer | None = None,
        execute: bool = True,
        lease: float = 30.0,
        allow: Iterable[str] = (),
        max_attempts: int = 3,
        read_timeout: float = 2.0,
    ) -> None:
        if (
            isinstance(lease, bool)
            or not isinstance(lease, (int, float))
            or not (math.isfinite(lease) and lease >= 0.05)
        ):
            raise ValueError(f"lease must be a number of seconds >= 0.05, got {lease!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if isinstance(target, str):
            connect(target)  # validates the URL now (a clear error at setup, not at first use)
        self._target = target
        self.keys = Keys(queue, prefix)
        self.serializer: Serializer = serializer or JsonSerializer()
        self.execute = execute
        self.lease = float(lease)
        self.max_attempts = max_attempts
        self.read_timeout = read_timeout
        self.policy = FunctionPolicy(allow)
        self.manager: TaskManager | None = None
        self.client: aioredis.Redis | None = None
        self.scripts: Scripts | None = None
        self._sync: redis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: weakref.WeakValueDictionary[str, Task] = weakref.WeakValueDictionary()
        # What a record holds beyond the Task (for consoles): worker, args and kwargs.
        self._extras: weakref.WeakKeyDictionary[Task, tuple[str | None, Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._listener: Listener | None = None
        self.worker: Worker | None = None
        self._pending_io: set[asyncio.Future[Any]] = set()
        self._starting: asyncio.Future[None] | None = None
        # The console's live events: one reader of the events stream per process, fanned out.
        self._hub = EventHub(on_first=self._start_events, on_last=self._stop_events)
        self._events_reader: asyncio.Task[None] | None = None

    # -- setup --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the tasks live, safe to log (passwords replaced by ``***``)."""
        if isinstance(self._target, str):
            return redact(self._target)
        pool = getattr(self._target, "connection_pool", self._target)
        kw = getattr(pool, "connection_kwargs", {})
        return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"

    def allow(self, *modules: str) -> None:
        """Also allow functions defined in these modules/packages to run in this process."""
        self.policy = FunctionPolicy(
            [*self.policy._modules, *modules], self.policy._functions.values()
        )

    def bind(self, manager: TaskManager) -> None:
        """Called by the manager that uses this backend (one manager per backend)."""
        if self.manager is not None and self.manager is not manager:
            raise RuntimeError("a RedisBackend serves one TaskManager")
        self.manager = manager

    def _options(self) -> dict[str, Any]:
        return {
            "socket_connect_timeout": self.read_timeout,
            "socket_keepalive": True,
            "health_check_interval": 15,
            # One quick retry: a pooled connection is stale after a Redis restart.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        }

    async def start(self) -> None:
        """Connect (and start the embedded worker if ``execute``); also after a shutdown."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self.client is not None:
            return
        if self._starting is not None and not self._starting.done():
            return await asyncio.shield(self._starting)
        self._starting = loop.create_future()
        try:
            assert self.manager is not None, "bind() the backend to a manager first"
            limit = self.manager.config.max_concurrent_tasks
            self.client = connect(self._target, max_connections=limit + 16, **self._options())
            self.scripts = Scripts(
                self.client, self.keys, max_history=self._max_history(), events_maxlen=10_000
            )
            self._loop = loop
            self._listener = Listener(
                self.client, self.keys, self._on_cancel, self._on_wake if self.execute else None
            )
            await self._listener.start()
            if self.execute:
                from .worker import Worker

                self.worker = Worker(self, self.manager)
                await self.worker.start()
            logger.info(
                "observable_tasks: Redis backend at %s (execute=%s)", self.url, self.execute
            )
        finally:
            self._starting.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Stop the worker (running tasks finish up to ``timeout``, the rest go back to the
        queue), then disconnect. Pending tasks stay queued: they are the cluster's, not ours."""
        self._stop_events()
        if self.worker is not None:
            await self.worker.stop(timeout)
            self.worker = None
        if self._pending_io:
            await asyncio.wait(list(self._pending_io), timeout=max(1.0, timeout))
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.client is not None:
            with contextlib.suppress(RedisError, asyncio.TimeoutError):
                await asyncio.wait_for(self.client.aclose(), 2.0)  # bounded, Redis may be gone
            self.client = None
        self._loop = None

    def _max_history(self) -> int:
        assert self.manager is not None
        config = self.manager.config
        return 0 if not config.enable_task_history else config.max_task_history

    def _ttl(self) -> float:
        assert self.manager is not None
        config = self.manager.config
        if not config.enable_task_history or config.max_task_history == 0:
            return 5.0  # forgotten at once, but waiters still read the outcome
        return config.task_result_ttl

    # -- creating -----------------------------------------------------------------------------

    def prepare(
        self,
        task: Task,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """The record's fields; refuses (``TypeError``) what cannot cross processes.

        ``policy`` travels in the record (``retry``, absent for the default policy): the worker
        applies the producer's policy, not its own config's."""
        ref = self.policy.register(func)  # lambdas, nested functions, partials...
        payload = encode_payload(args, kwargs, self.serializer, task=f"task {task.name!r}")
        fields: dict[str, Any] = {
            "func": ref,
            "label": task.function,
            "name": task.name,
            "payload": payload,
            "created": f"{task._wall_created:.6f}",
            "max_attempts": self.max_attempts,
            "ttl": f"{self._ttl():.3f}",
        }
        if task.timeout is not None:
            fields["timeout"] = f"{task.timeout:.6f}"
        spec = encode_policy(policy) if policy is not None else None
        if spec is not None:
            fields["retry"] = spec
        return fields

    def enqueue(
        self, task: Task, fields: dict[str, Any], created: Callable[[Task], None]
    ) -> Scheduled:
        """Write the record and queue it (already scheduled); ``created(task)`` once accepted."""
        if task._headers:
            fields["headers"] = encode_headers(task._headers)  # a lone traceparent: bare
        return Scheduled(task, self._schedule(self._enqueue(task, fields, created)))

    def _schedule(self, coro: Awaitable[Task]) -> Any:
        running = asyncio.events._get_running_loop()
        loop = self._loop
        if running is not None and (loop is None or loop is running or loop.is_closed()):
            future = running.create_task(self._started(coro))
            self._pending_io.add(future)
            future.add_done_callback(self._io_done)
            return future
        if loop is None or loop.is_closed():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError(
                "this TaskManager has not started yet: create the first task from async code "
                "(or call 'await manager.start()')"
            )
        return asyncio.run_coroutine_threadsafe(self._started(coro), loop)

    async def _started(self, coro: Awaitable[Task]) -> Task:
        if self.client is None:
            assert self.manager is not None
            await self.manager.start()
        return await coro

    def _io_done(self, future: asyncio.Future[Any]) -> None:
        self._pending_io.discard(future)
        if not future.cancelled() and future.exception() is not None:
            # Also raised to whoever awaits create_task; logged for callers who did not.
            logger.debug("observable_tasks: enqueue failed: %s", future.exception())

    async def _enqueue(
        self, task: Task, fields: dict[str, Any], created: Callable[[Task], None]
    ) -> Task:
        assert self.scripts is not None
        # The manager set the wait before the first attempt (delay=/eta=) as _next_wall; the
        # due time itself is taken from Redis' clock, so every process agrees on it.
        delay = 0.0 if task._next_wall is None else task._next_wall - task._wall_created
        for _ in range(3):
            try:
                done = await self.scripts.submit(task.id, fields, delay=delay, key=task.key)
            except RedisError as exc:
                raise TaskBackendError(
                    f"task {task.name!r} was not created: Redis at {self.url} is unavailable "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            if done.outcome != "held":
                break
            assert done.holder is not None
            holder = await self.aget_task(done.holder)
            if holder is not None:
                return holder  # the unfinished task holding the key: nothing was created
            # It finished and was evicted meanwhile: the key is free now, try again.
        if done.due is not None:
            task._next_wall = done.due
        self._live[task.id] = task
        created(task)
        return task

    # -- reading ------------------------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        if self._sync is None:
            timeout = self.read_timeout
            if isinstance(self._target, str):
                self._sync = redis.Redis.from_url(
                    self._target, socket_timeout=timeout, socket_connect_timeout=timeout
                )
            else:
                pool = getattr(self._target, "connection_pool", self._target)
                kw = dict(getattr(pool, "connection_kwargs", {}))
                allowed = ("host", "port", "db", "username", "password", "path")
                options: dict[str, Any] = {k: kw[k] for k in allowed if k in kw}
                if "path" in options:
                    options["unix_socket_path"] = options.pop("path")
                connection_class = getattr(pool, "connection_class", None)
                if connection_class is not None and "SSL" in connection_class.__name__:
                    # A TLS client: the blocking reads must use TLS too, with the same settings.
                    options["ssl"] = True
                    options.update({k: v for k, v in kw.items() if k.startswith("ssl_")})
                self._sync = redis.Redis(
                    **options, socket_timeout=timeout, socket_connect_timeout=timeout
                )
        return self._sync

    def check_connection(self) -> None:
        """``TaskBackendError`` unless Redis answers now (for start-up checks that fail fast;
        a started manager itself rides out outages)."""
        try:
            self._sync_client().ping()
        except RedisError as exc:
            raise TaskBackendError(
                f"Redis at {self.url} is unavailable ({type(exc).__name__}: {exc})"
            ) from None

    def _local(self, task_id: str) -> Task | None:
        worker = self.worker
        return worker.task(task_id) if worker is not None else None

    def get_task(self, task_id: str) -> Task | None:
        """The task (refreshed from Redis), ``None`` if unknown or evicted. Blocks briefly."""
        local = self._local(task_id)
        if local is not None:
            return local
        try:
            raw: Any = self._sync_client().hgetall(self.keys.task(task_id))
        except RedisError as exc:
            raise TaskBackendError(f"Redis at {self.url} is unavailable: {exc}") from None
        return self._task_from(raw) if raw else None

    async def aget_task(self, task_id: str) -> Task | None:
        """:meth:`get_task` without blocking the event loop."""
        local = self._local(task_id)
        if local is not None:
            return local
        client = await self._client()
        raw: Any = await client.hgetall(self.keys.task(task_id))
        return self._task_from(raw) if raw else None

    async def _client(self) -> aioredis.Redis:
        if self.client is None:
            assert self.manager is not None
            await self.manager.start()
        assert self.client is not None
        return self.client

    def list_tasks(self, status: TaskStatus | None) -> list[Task]:
        """Every known task in creation order (optionally one status). Blocks briefly."""
        client = self._sync_client()
        try:
            ids: Any = client.zrange(self.keys.idx, 0, -1)
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(self.keys.task(task_id.decode()))
            rows = pipe.execute()
        except RedisError as exc:
            raise TaskBackendError(f"Redis at {self.url} is unavailable: {exc}") from None
        return self._tasks_from(rows, status)

    async def alist_tasks(self, status: TaskStatus | None) -> list[Task]:
        """:meth:`list_tasks` without blocking the event loop."""
        client = await self._client()
        ids: Any = await client.zrange(self.keys.idx, 0, -1)
        async with client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self.keys.task(task_id.decode()))
            rows = await pipe.execute()
        return self._tasks_from(rows, status)

    def _tasks_from(self, rows: Iterable[Any], status: TaskStatus | None) -> list[Task]:
        tasks = []
        for raw in rows:
            if raw:
                task = self._local(_text(raw.get(b"id", b""))) or self._task_from(raw)
                if status is None or task.status is status:
                    tasks.append(task)
        return tasks

    def _task_from(self, raw: Mapping[bytes, bytes]) -> Task:
        raw_id = raw.get(b"id")
        local = self._local(_text(raw_id)) if raw_id else None
        if local is not None:
            # Running here (maybe started while this read was in flight): the worker's state is
            # the current one; a record read before its START must not set it back (attempts 0,
            # PENDING) under the running attempt.
            return local
        record = decode_record(raw, self.serializer)
        task = self._live.get(record.id)
        if task is None:
            label = raw.get(b"label")
            created = record.created or 0.0
            task = Task(
                record.id,
                record.name,
                label.decode() if label else record.func.replace(":", "."),
                record.timeout,
                created,
                created,  # times of Redis tasks are wall clock: the monotonic stamps too
            )
            self._live[record.id] = task
        elif _stage(record.status, record.attempts) < _stage(task.status, task.attempts):
            # Read before a change this process already applied (a reply that waited behind
            # the worker's next steps on this loop): setting it would take the task back in
            # time, and a later read would replace the original exception by a remote copy.
            return task
        task.status = record.status
        task.progress = record.progress
        task.attempts = record.attempts
        task._mono_started = record.started
        task._mono_finished = record.finished
        task._mono_ready = record.ready
        task._next_wall = record.next
        task.key = record.key
        try:
            task.max_attempts = decode_policy(record.retry).max_attempts
        except ValueError:
            task.max_attempts = 1
        if record.headers:
            task._headers = dict(record.headers)
        if record.status is TaskStatus.COMPLETED:
            task.result = record.result
        if record.error is None:
            task.error = None  # a retry started: the last attempt's error is gone
        elif task.error is None or not _same_error(task.error, record.error):
            # Kept when it is the same: a local Task may hold the original exception.
            task.error = _error_from(record.error, record.timeout)
        if record.worker is not None or record.args or record.kwargs:
            self._extras[task] = (record.worker, record.args, record.kwargs)
        return task

    def extras(self, task: Task) -> tuple[str | None, Any, Any]:
        """``(worker id, args, kwargs)`` of the record last read for ``task`` (args and kwargs
        only while it is pending or running: a finished record drops them)."""
        worker, args, kwargs = self._extras.get(task, (None, None, None))
        own = self.worker
        job = own._jobs.get(task.id) if own is not None else None
        if job is not None and job.task is task and own is not None:
            # Running here: the Task is the worker's own, not read back from Redis.
            return own.id, list(job.args), dict(job.kwargs)
        return worker, args, kwargs

    # -- acting -------------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> bool:
        """Cancel a pending (at once) or running task (its process is told); True if it ended
        CANCELLED. Waits for a running task to unwind, at most about two leases."""
        client = await self._client()
        assert self.scripts is not None
        outcome = await self.scripts.cancel(task_id)
        if outcome is None:
            return False
        if outcome == "cancelled" and self.manager is not None:
            # Ended here, never started: this process counts and logs it (as the memory
            # backend does), since no worker will.
            cancelled = await self.aget_task(task_id)
            if cancelled is not None and self.manager._listeners["on_cancelled_pending"]:
                self.manager._notify("on_cancelled_pending", cancelled)
        if outcome == "running" and self.worker is not None:
            self.worker.cancel_local(task_id)  # ours: no need to wait for the pub/sub message
        del client
        try:
            task = await self.wait(task_id, max(2 * self.lease, 5.0))
        except (TimeoutError, TaskNotFoundError):
            return False
        return task.status is TaskStatus.CANCELLED

    async def wait(self, task_id: str, timeout: float | None) -> Task:
        """Wait for a final status (pub/sub, with a re-read every second: messages may drop)."""
        assert self._listener is not None or self.client is None
        await self._client()
        assert self._listener is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self._listener.watching(task_id) as finished:
            while True:
                task = await self.aget_task(task_id)
                if task is None:
                    raise TaskNotFoundError(task_id)
                if task.is_done:
                    return task
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(
                        f"task {task_id} did not finish within {timeout:g}s (it keeps running)"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(finished), wait)

    def progress(self, task_id: str, progress: float) -> bool:
        """Set progress of a task this process runs; False if it does not run it here."""
        worker = self.worker
        return worker is not None and worker.progress(task_id, progress)

    def _on_cancel(self, task_id: str) -> None:
        if self.worker is not None:
            self.worker.cancel_local(task_id)

    def _on_wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def schedule_sweep(self) -> None:
        """Drop index entries of records evicted by their TTL (in the background)."""
        if self._loop is None or self.scripts is None:
            return
        sweep = self._loop.create_task(self._sweep())
        self._pending_io.add(sweep)
        sweep.add_done_callback(self._io_done)

    async def _sweep(self, batch: int = 500) -> int:
        assert self.scripts is not None
        cutoff = time.time() - self._ttl()
        total = 0
        while True:
            try:
                swept = await self.scripts.sweep(cutoff, count=batch)
            except RedisError:
                return total  # the next sweep tries again
            total += swept
            if swept < batch:
                return total

    # -- for consoles: pages, counts, workers, events -----------------------------------------

    async def query_tasks(
        self, match: Matcher | None, cursor: str | None, limit: int, scan: int = 2000
    ) -> tuple[list[Task], str | None]:
        """A page newest first from the ``idx`` ZSET (see ``TaskManager.query_tasks``)."""
        after = decode_cursor(cursor) if cursor else None
        client = await self._client()
        top: Any = "+inf" if after is None else repr(after[0])  # inclusive: ties are skipped
        chunk = limit + 1 if match is None else max(1, min(200, scan))
        out: list[Task] = []
        last_out: tuple[float, str] | None = None
        offset = scanned = 0
        while True:
            entries: Any = await client.zrevrangebyscore(
                self.keys.idx, top, "-inf", start=offset, num=chunk, withscores=True
            )
            offset += len(entries)
            ids: list[tuple[str, float]] = []
            for member, score in entries:
                task_id = _text(member)
                if after is not None and score == after[0] and task_id >= after[1]:
                    continue  # same time as the cursor, already shown (ties: reverse id order)
                ids.append((task_id, score))
            last_looked = ids[-1] if ids else None
            if match is not None and ids:
                looked = len(ids)
                ids = await self._prefilter(client, ids, match)
                scanned += looked - len(ids)  # the rest are counted below
            async with client.pipeline(transaction=False) as pipe:
                for task_id, _ in ids:
                    pipe.hgetall(self.keys.task(task_id))
                rows = await pipe.execute()
            for (task_id, score), raw in zip(ids, rows, strict=True):
                scanned += 1
                if not raw:
                    continue  # expired; its index entry is swept later
                task = self._local(task_id) or self._task_from(raw)
                if match is None or match(task):
                    if len(out) == limit:
                        assert last_out is not None
                        return out, encode_cursor(*last_out)
                    out.append(task)
                    last_out = (score, task_id)
            if len(entries) < chunk:
                return out, None
            if match is not None and scanned >= scan and last_looked is not None:
                task_id, score = last_looked
                return out, encode_cursor(score, task_id)  # bounded work: go on from here

    async def _prefilter(
        self, client: aioredis.Redis, ids: list[tuple[str, float]], match: Matcher
    ) -> list[tuple[str, float]]:
        """The entries whose name, function and status match (three fields read per record,
        not the whole record): only those are read in full."""
        async with client.pipeline(transaction=False) as pipe:
            for task_id, _ in ids:
                pipe.hmget(self.keys.task(task_id), ["name", "label", "status", "func"])
            rows = await pipe.execute()
        kept = []
        for (task_id, score), (name, label, status, func) in zip(ids, rows, strict=True):
            if status is None:
                continue  # expired
            function = _text(label) if label else _text(func or b"").replace(":", ".")
            probe = Task(task_id, _text(name or b""), function)
            probe.status = TaskStatus(_text(status))
            if match(probe):
                kept.append((task_id, score))
        return kept

    async def count_tasks(self, chunk: int = 5000) -> dict[TaskStatus, int]:
        """Statuses of every indexed record, counted inside Redis ``chunk`` entries per call
        (each call is a short script: Redis is never blocked for the whole index)."""
        client = await self._client()
        counts = dict.fromkeys(TaskStatus, 0)
        script = client.register_script(_COUNT_LUA)
        start = 0
        while True:
            reply: Any = await script(
                keys=[self.keys.idx], args=[self.keys.base, start, start + chunk - 1]
            )
            seen = int(reply[0])
            for status, n in zip(_COUNTED, reply[1:], strict=True):
                counts[status] += int(n)
            if seen < chunk:
                return counts
            start += chunk

    async def list_workers(self) -> list[dict[str, Any]]:
        """Workers of the queue (``workers`` ZSET), most recently seen first."""
        client = await self._client()
        rows: Any = await client.zrevrange(self.keys.workers, 0, -1, withscores=True)
        now = time.time()
        own = self.worker
        workers: list[dict[str, Any]] = []
        for member, score in rows:
            worker_id = _text(member)
            entry: dict[str, Any] = {
                "id": worker_id,
                "last_seen": float(score),
                "alive": float(score) >= now - self.lease,
            }
            if own is not None and own.id == worker_id:
                entry["running"] = len(own.running())
                entry["this_process"] = True
            workers.append(entry)
        return workers

    def task_events(
        self, last_event_id: str | None, maxlen: int
    ) -> AsyncGenerator[TaskEvent, None]:
        """Events of every process' tasks, from the events stream (see the manager)."""
        if last_event_id is not None:
            _stream_id(last_event_id)  # ValueError now, not at the first iteration
        return self._events(self._hub.subscribe(maxlen), last_event_id, maxlen)

    async def _events(
        self, sub: Subscription, last_event_id: str | None, maxlen: int
    ) -> AsyncGenerator[TaskEvent, None]:
        try:
            seen: tuple[int, int] | None = None
            if last_event_id is not None:
                seen = _stream_id(last_event_id)
                client = await self._client()
                entries: Any = await client.xrange(
                    self.keys.events, min=f"({last_event_id}", max="+", count=maxlen
                )
                for event in await self._resolve(entries):
                    seen = _stream_id(event.id)
                    yield event
            while True:
                event = await sub.get()
                if seen is not None and _stream_id(event.id) <= seen:
                    continue  # already replayed
                yield event
        finally:
            sub.close()

    def _start_events(self) -> None:
        if self._events_reader is None or self._events_reader.done():
            # From a second ago (stream ids are Redis' clock in ms): what happens between this
            # call and the reader's first read is not lost; a little more is seen at most.
            since = f"{max(0, int(time.time() * 1000) - 1000)}-0"
            loop = asyncio.get_running_loop()
            self._events_reader = loop.create_task(self._read_events(since))

    def _stop_events(self) -> None:
        if self._events_reader is not None:
            self._events_reader.cancel()
            self._events_reader = None

    async def _read_events(self, last: str) -> None:
        """One blocking XREAD loop per process while someone listens; reconnects with backoff."""
        pause = 0.1
        while True:
            try:
                client = await self._client()
                reply: Any = await client.xread({self.keys.events: last}, count=500, block=1000)
                pause = 0.1
            except RedisError as exc:
                logger.debug("observable_tasks: reading task events failed: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            last = _text(entries[-1][0])
            try:
                events = await self._resolve(entries)
            except RedisError:
                continue
            for event in events:
                self._hub.publish(event.kind, event.task, event.id)

    async def _resolve(self, entries: list[Any]) -> list[TaskEvent]:
        """Events of stream entries with their tasks read now; a task's progress events are
        dropped when a later event of the same task is in the batch (they show the same)."""
        latest: dict[str, int] = {}
        parsed: list[tuple[str, str, str]] = []
        for entry_id, fields in entries:
            task_id = _text(fields.get(b"id", b""))
            parsed.append((_text(entry_id), _text(fields.get(b"event", b"")), task_id))
            latest[task_id] = len(parsed) - 1
        kept = [(i, p) for i, p in enumerate(parsed) if p[1] != "progress" or latest[p[2]] == i]
        unique = list(dict.fromkeys(p[2] for _, p in kept))
        client = await self._client()
        async with client.pipeline(transaction=False) as pipe:
            for task_id in unique:
                pipe.hgetall(self.keys.task(task_id))
            rows = await pipe.execute()
        tasks = {
            task_id: self._local(task_id) or self._task_from(raw)
            for task_id, raw in zip(unique, rows, strict=True)
            if raw
        }
        return [
            TaskEvent(entry_id, kind, tasks[task_id])
            for _, (entry_id, kind, task_id) in kept
            if task_id in tasks
        ]

    # -- queue-wide facts (for metrics at scrape time) --------------------------------------

    def queue_stats(self) -> dict[str, float]:
        """Pending (queued + delayed), delayed (waiting for a planned time: ``delay=``/``eta=``
        or a retry's backoff), running, oldest queued age (s), live workers (renewed within a
        lease) and redeliveries so far, read now (blocking, short); ``{}`` when Redis cannot be
        read."""
        client = self._sync_client()
        now = time.time()
        try:
            pipe = client.pipeline(transaction=False)
            pipe.xinfo_groups(self.keys.stream)
            pipe.xlen(self.keys.stream)
            pipe.xrange(self.keys.stream, count=1)
            pipe.zrangebyscore(self.keys.workers, now - self.lease, "+inf")
            pipe.hget(self.keys.stats, "redeliveries")
            pipe.zcard(self.keys.delayed)
            groups, length, first, workers, redeliveries, delayed = pipe.execute(
                raise_on_error=False
            )
        except RedisError:
            return {}
        pel = 0
        if isinstance(groups, list):
            for group in groups:
                pel += int(group.get("pending", 0) if isinstance(group, dict) else 0)
        oldest = 0.0
        if isinstance(first, list) and first:
            entry_id = first[0][0].decode() if isinstance(first[0][0], bytes) else first[0][0]
            oldest = max(0.0, now - int(entry_id.split("-")[0]) / 1000)
        length = length if isinstance(length, int) else 0
        delayed = delayed if isinstance(delayed, int) else 0
        return {
            # PENDING in all: queued, plus waiting for a planned time (delay=/eta=, a retry).
            "pending": max(0, length - pel) + delayed,
            "delayed": delayed,
            "running": pel,
            "oldest_pending_age": oldest,
            "workers": len(workers) if isinstance(workers, list) else 0,
            "redeliveries": int(redeliveries) if isinstance(redeliveries, bytes) else 0,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stage(status: TaskStatus, attempts: int) -> tuple[int, int]:
    """Where a state is in a task's life, ordered: ``(attempts, 0)`` running an attempt, then
    ``(attempts, 1)`` waiting for the next (or, with 0 attempts, for the first), then
    ``(attempts, 2)`` finished."""
    if status is TaskStatus.RUNNING:
        return attempts, 0
    return attempts, 2 if status.is_terminal else 1


def _same_error(error: BaseException, info: Mapping[str, Any]) -> bool:
    kind = error.type if isinstance(error, RemoteTaskError) else type(error).__qualname__
    return kind == info.get("type") and str(error) == str(info.get("message") or "")


_COUNTED = tuple(TaskStatus)
_COUNT_LUA = (
    "local order = {" + ", ".join(f"'{status.value}'" for status in _COUNTED) + "}\n"
    """
local P = ARGV[1]
local ids = redis.call('ZRANGE', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
local n = {}
for _, s in ipairs(order) do n[s] = 0 end
for _, id in ipairs(ids) do
  local s = redis.call('HGET', P .. 't:' .. id, 'status')
  if s and n[s] then n[s] = n[s] + 1 end
end
local out = {#ids}
for _, s in ipairs(order) do out[#out + 1] = n[s] end
return out
"""
)
"""Counts the statuses of a range of the ``idx`` ZSET: ``{how many ids, n per status...}``."""


def _stream_id(value: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a comparable pair; ``ValueError`` for anything else."""
    ms, sep, seq = value.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream entry id: {value[:40]!r}")
    return int(ms), int(seq)


def backend_from_env() -> str | None:
    """The backend URL of :data:`BACKEND_ENV`, if set."""
    value = os.environ.get(BACKEND_ENV, "").strip()
    return value or None
