"""One pub/sub connection per process: cancel requests for running tasks, and task completions
for ``wait_for_task``.

The ``cancel`` channel is always subscribed (a worker cancels the task within milliseconds), and
in a process that runs tasks the ``wake`` channel (a new earliest due time of a delayed task); a
task's ``done:<id>`` channel only while someone here waits for it. Pub/sub may drop messages
(a reconnect, a slow reader), so waiters also re-read the record every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .keys import Keys

__all__ = ["Listener"]

logger = logging.getLogger("observable_tasks")


class Listener:
    """Reads the process's pub/sub connection and dispatches what arrives."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        on_cancel: Callable[[str], None],
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._on_cancel = on_cancel
        self._on_wake = on_wake
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The reader subscribes: Redis may be down now and come back later.
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def stop(self) -> None:
        # Bounded: with Redis gone, closing a connection must not hold up a shutdown.
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader}, timeout=2.0)
            self._reader = None
        with contextlib.suppress(RedisError, asyncio.TimeoutError):
            await asyncio.wait_for(self._pubsub.aclose(), 2.0)  # type: ignore[no-untyped-call]

    async def _resubscribe(self) -> None:
        """A new pub/sub connection with every channel of the old one.

        redis-py's asyncio ``PubSub`` does not reconnect once the server closed its connection
        (a Redis restart): every later read raises "Connection closed by server". So the
        listener replaces it, subscribing the cancel channel and the channels waited on here.
        """
        channels = [self._keys.cancel_channel]
        if self._on_wake is not None:
            channels.append(self._keys.wake_channel)
        channels += [self._keys.done_channel(task_id) for task_id in self._waiters]
        fresh = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await fresh.subscribe(*channels)
        except BaseException:
            with contextlib.suppress(RedisError):
                await fresh.aclose()  # type: ignore[no-untyped-call]
            raise
        old, self._pubsub = self._pubsub, fresh
        with contextlib.suppress(RedisError):
            await old.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def watching(self, task_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """A future set when ``done:<id>`` is published (subscribed before the caller reads)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(task_id, [])
        waiters.append(future)
        channel = self._keys.done_channel(task_id)
        if len(waiters) == 1:
            # The caller re-reads every second anyway. AttributeError: redis-py's symptom of a
            # connection closed under the call (the reader swapped in a fresh pub/sub at the
            # same moment, e.g. just after start; the fresh one subscribes the waited channels).
            with contextlib.suppress(RedisError, AttributeError):
                await self._pubsub.subscribe(channel)
        try:
            yield future
        finally:
            waiters.remove(future)
            if not waiters:
                del self._waiters[task_id]
                with contextlib.suppress(RedisError, AttributeError):
                    await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        cancel = self._keys.cancel_channel.encode()
        wake = self._keys.wake_channel.encode()
        done_prefix = self._keys.done_channel("").encode()
        backoff = 0.05
        lost = False
        subscribed = False
        while True:
            try:
                if not subscribed:
                    await self._resubscribe()
                    subscribed = True
                message = await self._pubsub.get_message(timeout=1.0)
            except RedisError as exc:
                # Redis restarted or is unreachable: a fresh connection once it answers again.
                if not lost:  # once per outage, not once per retry
                    logger.warning("observable_tasks: pub/sub connection lost (%s); retrying", exc)
                    lost = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                subscribed = False
                continue
            if lost:
                logger.warning("observable_tasks: pub/sub connection to Redis restored")
                lost = False
            backoff = 0.05
            if message is None or message.get("type") != "message":
                continue
            channel, data = message["channel"], message["data"]
            if channel == cancel:
                self._on_cancel(data.decode() if isinstance(data, bytes) else str(data))
            elif channel == wake:
                if self._on_wake is not None:
                    self._on_wake()
            elif channel.startswith(done_prefix):
                task_id = channel[len(done_prefix) :].decode()
                for future in self._waiters.get(task_id, ()):
                    if not future.done():
                        future.set_result(None)
