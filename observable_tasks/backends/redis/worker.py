"""The worker: claims tasks from the queue, runs them under the manager's middleware chain,
renews their leases, and records each outcome with a fenced script.

Runs embedded in a web process (``RedisBackend(execute=True)``, the default) or alone
(``observable-tasks worker``). At most ``max_concurrent_tasks`` run here at once (the claim
COUNT is the number of free slots). The innermost link of the chain records the outcome in
Redis before it returns, so middleware (telemetry) sees the final status: an attempt whose
outcome was refused (its lease was lost to another worker) or that was handed back at shutdown
stays RUNNING there, and is counted as no outcome at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ...current import current_var
from ...invocation import CallShape, check_call, function_name
from ...job import _NO_KWARGS, _Job
from ...middleware import build_chain, outcome_status
from ...retry import RetryPolicy
from ...status import TaskStatus
from ...task import Task
from .codec import FunctionNotAllowedError, SerializationError, encode_value
from .records import decode_policy, error_info
from .scripts import Claimed

if TYPE_CHECKING:
    from ...manager import TaskManager
    from .backend import RedisBackend

__all__ = ["Worker"]

logger = logging.getLogger("observable_tasks")
_HAS_TASK_CONTEXT = sys.version_info >= (3, 11)


class _RemoteJob(_Job):
    """A claimed task's execution state: the attempt number fences every write; ``number`` is
    the attempt's number for its retry policy (redeliveries after a lost worker excluded)."""

    __slots__ = ("attempt", "finishing", "lost", "number", "released")

    attempt: int
    finishing: bool
    lost: bool
    number: int
    released: bool


_NO_RETRY = RetryPolicy(max_attempts=1)
_PROMOTE_EVERY = 1.0  # seconds: the longest a worker sleeps between two promotes


def _raising(error: BaseException) -> Callable[[], Awaitable[Any]]:
    async def refuse() -> Any:
        raise error

    return refuse


class Worker:
    """Executes tasks of one :class:`~.backend.RedisBackend` in this process."""

    def __init__(self, backend: RedisBackend, manager: TaskManager) -> None:
        self.backend = backend
        self.manager = manager
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._limit = manager.config.max_concurrent_tasks
        self._lease_ms = max(50, int(backend.lease * 1000))
        self._block_ms = max(10, min(1000, self._lease_ms // 2))
        self._jobs: dict[str, _RemoteJob] = {}
        self._free = asyncio.Event()
        self._stopping = False
        self._claiming: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._dirty: dict[str, float] = {}
        self._flushing: dict[str, float] = {}  # the batch _flush is writing now
        self._flusher: asyncio.Task[None] | None = None
        self._chain: tuple[int, Callable[[Task], Awaitable[Any]]] | None = None
        self._loop = asyncio.get_running_loop()
        self._outage_logged = False
        self._promoting: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def scripts(self) -> Any:
        scripts = self.backend.scripts
        assert scripts is not None
        return scripts

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.scripts.ensure_group()
            await self.scripts.renew(self.id, [], lease_ms=self._lease_ms)  # announces itself
        except RedisError as exc:
            # Redis is down now: the claim loop retries with backoff (and creates the group).
            logger.warning(
                "observable_tasks: worker %s starts without Redis at %s (%s); retrying",
                self.id, self.backend.url, exc,
            )  # fmt: skip
        self._claiming = self._loop.create_task(self._claim_loop())
        self._renewing = self._loop.create_task(self._renew_loop())
        self._promoting = self._loop.create_task(self._promote_loop())

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let running tasks finish up to ``timeout``, hand the rest back."""
        self._stopping = True
        self._free.set()
        if self._promoting is not None:
            self._promoting.cancel()
        if self._claiming is not None:
            # Also interrupts a blocking read: an entry it was being handed stays pending for
            # this worker and is taken over by another one after the lease (at-least-once).
            self._claiming.cancel()
            await asyncio.wait({self._claiming}, timeout=1.0)
        running = {job.aio: job for job in self._jobs.values() if job.aio is not None}
        late: set[asyncio.Task[Any]] = set()
        if running:
            _, late = await asyncio.wait(set(running), timeout=timeout)
        if late:
            jobs = [running[aio] for aio in late]
            for job in jobs:
                job.released = True
            with contextlib.suppress(RedisError):
                await self.scripts.release(self.id, [(j.task.id, j.attempt) for j in jobs])
            for aio in late:
                aio.cancel()
            await asyncio.wait(late, timeout=1.0)
        else:
            with contextlib.suppress(RedisError):
                await self.scripts.release(self.id, [])  # deregisters the worker
        for task in (self._renewing, self._flusher):
            if task is not None:
                task.cancel()

    # -- what the backend asks ----------------------------------------------------------------

    def task(self, task_id: str) -> Task | None:
        """The task if it runs here now (its most current state)."""
        job = self._jobs.get(task_id)
        return job.task if job is not None else None

    def running(self) -> list[Task]:
        return [job.task for job in list(self._jobs.values())]

    def cancel_local(self, task_id: str) -> None:
        """Cancel a task running here (safe from any thread)."""
        if asyncio.events._get_running_loop() is not self._loop:
            self._loop.call_soon_threadsafe(self.cancel_local, task_id)
            return
        job = self._jobs.get(task_id)
        if job is None or job.aio is None:
            return
        if not job.entered:
            job.cancel_requested = True
        else:
            job.aio.cancel()

    def _lose(self, task_id: str) -> None:
        job = self._jobs.get(task_id)
        if job is not None and job.aio is not None:
            logger.warning(
                "observable_tasks: task %s lost its lease to another worker; stopping it here",
                task_id,
            )
            job.lost = True
            job.aio.cancel()

    def progress(self, task_id: str, progress: float) -> bool:
        """Set progress of a task running here (from any thread); False if not here."""
        job = self._jobs.get(task_id)
        if job is None:
            return False
        job.task.progress = progress
        self.manager._notify("on_progress", job.task, progress)
        if asyncio.events._get_running_loop() is self._loop:
            self._mark(task_id, progress)
        else:
            self._loop.call_soon_threadsafe(self._mark, task_id, progress)
        return True

    # -- claiming -----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.05
        while not self._stopping:
            free = self._limit - len(self._jobs)
            if free <= 0:
                self._free.clear()
                await self._free.wait()
                continue
            try:
                batch = await self.scripts.claim(self.id, count=free, lease_ms=self._lease_ms)
                if not batch.started and not batch.ended and not self._stopping:
                    batch = await self.scripts.read(self.id, count=free, block_ms=self._block_ms)
            except RedisError as exc:
                if not self._outage_logged:
                    logger.warning(
                        "observable_tasks: worker %s cannot reach Redis at %s (%s); retrying",
                        self.id, self.backend.url, exc,
                    )  # fmt: skip
                    self._outage_logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self._outage_logged:
                logger.warning("observable_tasks: worker %s reconnected to Redis", self.id)
                self._outage_logged = False
            backoff = 0.05
            for item in batch.started:
                self._launch(item)
            for task_id, status in batch.ended:
                # Ended by START itself (cancel requested while it was queued, or attempts used
                # up by lost workers): nothing ran here, so only the log says so.
                logger.info("observable_tasks: task %s ended %s before it ran", task_id, status)

    def _launch(self, claimed: Claimed) -> None:
        manager, backend = self.manager, self.backend
        func: Callable[..., Any]
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = _NO_KWARGS
        label = claimed.func.replace(":", ".")
        try:
            func = backend.policy.resolve(claimed.func)
            label = function_name(func)
            if claimed.payload:
                decoded_args, decoded_kwargs = backend.serializer.loads(claimed.payload)
                args, kwargs = tuple(decoded_args), dict(decoded_kwargs) or _NO_KWARGS
            shape = check_call(func, args, kwargs)
        except (FunctionNotAllowedError, TypeError, ValueError) as exc:
            # Runs through the chain anyway, so that the failure is traced, counted and logged.
            func, args, kwargs = _raising(exc), (), _NO_KWARGS
            shape = CallShape(True, False, label)
        created = claimed.created or time.time()
        task = backend._live.get(claimed.id)  # created here: the caller's object runs
        if task is None:
            task = Task(claimed.id, claimed.name, label, claimed.timeout, created, created)
            backend._live[task.id] = task
        task.status = TaskStatus.RUNNING
        task._mono_started = time.time()
        task.attempts = claimed.attempt
        if claimed.headers:
            task._headers = dict(claimed.headers)
        try:
            policy = decode_policy(claimed.retry)  # the producer's policy, not our config's
        except ValueError:
            logger.warning(
                "observable_tasks: task %s has an unreadable retry policy %r; it is not retried",
                claimed.id, claimed.retry,
            )  # fmt: skip
            policy = _NO_RETRY
        task.max_attempts = policy.max_attempts
        task.key = claimed.key
        task.error = task.result = None
        task._next_wall = None
        task._mono_ready = claimed.ready
        task._mono_finished = None
        job = _RemoteJob(task, func, args, kwargs, shape, policy)
        job.attempt, job.lost, job.released = claimed.attempt, False, False
        job.number = claimed.retries + 1
        job.finishing = False
        if claimed.attempt > job.number:  # a redelivery (a hand-back at shutdown is none)
            logger.warning(
                "observable_tasks: task %s runs again here: attempt %d (the worker of an earlier "
                "attempt was lost or its lease expired)",
                task.id, claimed.attempt,
            )  # fmt: skip
        self._jobs[task.id] = job
        ctx = contextvars.Context()  # nothing of the claim loop leaks into the task
        if _HAS_TASK_CONTEXT:
            job.aio = self._loop.create_task(self._run(job), context=ctx)  # type: ignore[call-arg]
        else:  # pragma: no cover - Python 3.10
            job.aio = ctx.run(self._loop.create_task, self._run(job))
        del manager

    # -- running ------------------------------------------------------------------------------

    def _chain_for(self) -> Callable[[Task], Awaitable[Any]] | None:
        middleware = self.manager._middleware
        if not middleware:
            return None
        if self._chain is None or self._chain[0] != len(middleware):
            self._chain = (
                len(middleware),
                build_chain([mw for _, mw in middleware], self._execute),
            )
        return self._chain[1]

    async def _run(self, job: _RemoteJob) -> None:
        job.entered = True
        task = job.task
        current_var.set((self.manager, task))
        try:
            chain = self._chain_for()
            await (chain(task) if chain is not None else self._execute(task))
        except BaseException:  # the outcome was recorded by _execute; nothing to add
            pass
        finally:
            self._jobs.pop(task.id, None)
            job.func, job.args, job.kwargs = _spent, (), _NO_KWARGS
            job.aio = None
            self._free.set()

    async def _execute(self, task: Task) -> Any:
        """Innermost link: run the function under its timeout, then record the outcome."""
        manager = self.manager
        job = self._jobs[task.id]
        handle = manager._arm_timeout(job)
        try:
            result = await manager._invoke(job)
        except BaseException as exc:
            error = manager._failure(job, exc)
            await self._record(job, error, None)
            if error is exc:
                raise
            raise error from None
        finally:
            if handle is not None:
                handle.cancel()
        await self._record(job, None, result)
        return result

    async def _record(self, job: _RemoteJob, error: BaseException | None, result: Any) -> None:
        task = job.task
        if job.lost or job.released:
            return  # not this process's outcome to record
        status = outcome_status(error)
        result_bytes = error_bytes = None
        if status is TaskStatus.COMPLETED:
            try:
                result_bytes = encode_value(
                    result, self.backend.serializer, f"the result of task {task.name!r}"
                )
            except SerializationError as exc:
                status, error = TaskStatus.FAILED, exc
        wait: float | None = None
        if status is TaskStatus.FAILED or status is TaskStatus.TIMEOUT:
            assert error is not None
            error_bytes = json.dumps(error_info(error)).encode()
            wait = (job.policy or _NO_RETRY).plan(job.number, error)  # always set here
        job.finishing = True  # a progress write refused from now on is no lost lease
        if wait is not None:
            assert error is not None
            assert error_bytes is not None
            await self._record_retry(job, error, error_bytes, wait)
            return
        write = self._loop.create_task(self._settle(job, status, result_bytes, error_bytes))
        try:
            accepted = await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait({write}, timeout=5.0)  # the outcome is still recorded
            raise
        if accepted:
            task._mono_finished = time.time()
            if status is TaskStatus.COMPLETED:
                task.result = result
            elif status is not TaskStatus.CANCELLED:
                task.error = error
            task.status = status

    async def _record_retry(
        self, job: _RemoteJob, error: BaseException, error_bytes: bytes, wait: float
    ) -> None:
        """The attempt failed and its policy plans another in ``wait`` seconds: RETRY puts the
        task back to PENDING in the delayed ZSET. Before the exception reaches the middleware
        the task is PENDING, with this attempt's error and ``next_attempt_at`` set (telemetry
        tells a retry from an outcome by that); CANCELLED if a cancel came meanwhile."""
        task = job.task
        write = self._loop.create_task(self._write_retry(job, error_bytes, wait))
        try:
            answer = await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait({write}, timeout=5.0)
            raise
        if answer is None:
            return  # refused or not recorded: another worker runs it (lease), as for FINISH
        outcome, due = answer
        if outcome == "retrying":
            task.error = error
            task._next_wall = due
            task.status = TaskStatus.PENDING
            self._wake.set()  # this worker's promoter: the due time may be its earliest
        else:
            task._mono_finished = time.time()
            task.status = TaskStatus.CANCELLED

    async def _write_retry(
        self, job: _RemoteJob, error: bytes, wait: float
    ) -> tuple[str, float | None] | None:
        async def retry() -> tuple[str, float | None] | None:
            answer: tuple[str, float | None] | None = await self.scripts.retry(
                job.task.id, job.attempt, self.id, wait=wait, error=error
            )
            return answer

        await self._last_progress(job)
        answer: tuple[str, float | None] | None = await self._fenced(job, retry, None)
        return answer

    async def _last_progress(self, job: _RemoteJob) -> None:
        task_id = job.task.id
        flusher = self._flusher
        if task_id in self._flushing and flusher is not None and not flusher.done():
            await asyncio.wait({flusher}, timeout=self.backend.lease)
        progress = self._dirty.pop(task_id, None)
        if progress is not None:
            with contextlib.suppress(RedisError):
                await self.scripts.progress(task_id, job.attempt, self.id, progress)

    async def _fenced(
        self, job: _RemoteJob, write: Callable[[], Awaitable[Any]], refused: Any
    ) -> Any:
        """``write()`` retried through Redis errors for up to a lease; ``refused`` when it
        could not be written (the task runs again elsewhere after its lease) or was refused
        (another worker owns it now)."""
        deadline = time.monotonic() + self.backend.lease
        backoff = 0.05
        while True:
            try:
                answer = await write()
            except RedisError as exc:
                if time.monotonic() > deadline:
                    logger.warning(
                        "observable_tasks: could not record the outcome of task %s (%s); "
                        "it will run again elsewhere after its lease",
                        job.task.id, exc,
                    )  # fmt: skip
                    return refused
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if not answer:
                logger.warning(
                    "observable_tasks: outcome of task %s refused: another worker owns it now",
                    job.task.id,
                )
                return refused
            return answer

    async def _settle(
        self, job: _RemoteJob, status: TaskStatus, result: bytes | None, error: bytes | None
    ) -> bool:
        """The task's last progress, then its outcome: FINISH ends the fenced writes, so a
        progress write still queued or in flight after it would be refused and lost."""

        async def finish() -> bool:
            accepted: bool = await self.scripts.finish(
                job.task.id, job.attempt, self.id, status, result=result, error=error
            )
            return accepted

        await self._last_progress(job)
        return bool(await self._fenced(job, finish, False))

    # -- delayed tasks ------------------------------------------------------------------------

    def wake(self) -> None:
        """A delayed task got an earlier due time (pub/sub ``wake``): promote now, then sleep
        until the new earliest one."""
        self._wake.set()

    async def _promote_loop(self) -> None:
        """PROMOTE due delayed tasks, then sleep until the earliest due time left (Redis'
        clock), at most :data:`_PROMOTE_EVERY`; woken early by :meth:`wake`. Every worker runs
        one: PROMOTE is atomic, so a due task is queued once whoever gets there first."""
        backoff = 0.05
        while True:
            self._wake.clear()
            try:
                promoted = await self.scripts.promote(count=500)
            except RedisError:
                await asyncio.sleep(backoff)  # the claim loop reports the outage
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if promoted.count >= 500:
                continue  # more are due
            sleep = _PROMOTE_EVERY
            if promoted.next_due is not None:
                sleep = min(sleep, max(0.0, promoted.next_due - promoted.now))
            if sleep > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep)

    # -- leases and progress ------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.backend.lease / 3
        while True:
            await asyncio.sleep(interval)
            owned = [(task_id, job.attempt) for task_id, job in list(self._jobs.items())]
            try:
                renewed = await self.scripts.renew(self.id, owned, lease_ms=self._lease_ms)
            except RedisError:
                continue  # the claim loop reports the outage
            for task_id in renewed.lost:
                self._lose(task_id)
            for task_id in renewed.cancel_requested:
                self.cancel_local(task_id)

    def _mark(self, task_id: str, progress: float) -> None:
        self._dirty[task_id] = progress  # coalesced: only the latest value is written
        if self._flusher is None or self._flusher.done():
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._dirty:
                batch, self._dirty = self._dirty, {}
                self._flushing = batch
                for task_id, progress in batch.items():
                    job = self._jobs.get(task_id)
                    if job is None:
                        continue
                    try:
                        answer = await self.scripts.progress(
                            task_id, job.attempt, self.id, progress
                        )
                    except RedisError:
                        continue
                    if answer == 1:
                        self.cancel_local(task_id)
                    elif answer == -1 and not job.finishing:
                        self._lose(task_id)
        finally:
            self._flushing = {}


def _spent(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this task's function already ran")
