"""Key layout of one Redis queue.

Every key of a queue carries the Cluster hash tag ``{<queue>}`` so that all of them live in one
slot: the Lua scripts touch several keys at once, which Redis Cluster allows only within a slot.
The scripts build per-task keys (``t:<id>``) from the prefix passed to them, so the layout is
spelled out once here and once in ``lua/_prelude.lua`` (keep the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GROUP", "Keys"]

#: The consumer group every worker of a queue reads through.
GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    """Names of the keys and channels of one queue: ``<prefix>:{<queue>}:<suffix>``."""

    queue: str = "default"
    prefix: str = "ot"

    def __post_init__(self) -> None:
        for what, value in (("queue", self.queue), ("prefix", self.prefix)):
            if not value or "{" in value or "}" in value:
                raise ValueError(
                    f"Redis {what} name {value!r} must be non-empty and contain no braces "
                    "(braces delimit the Cluster hash tag)"
                )

    @property
    def base(self) -> str:
        """The common prefix of every key, ending in ``:`` (``ot:{default}:``)."""
        return f"{self.prefix}:{{{self.queue}}}:"

    @property
    def stream(self) -> str:
        """Stream of task ids, read through consumer group :data:`GROUP`."""
        return self.base + "stream"

    def task(self, task_id: str) -> str:
        """Hash holding one task's record."""
        return f"{self.base}t:{task_id}"

    @property
    def idx(self) -> str:
        """ZSET created-time -> id of every known task (``list_tasks``)."""
        return self.base + "idx"

    @property
    def done(self) -> str:
        """ZSET finished-time -> id of finished tasks (history limit, TTL sweeps)."""
        return self.base + "done"

    def worker(self, worker_id: str) -> str:
        """Liveness string of one worker, set with PX = lease."""
        return f"{self.base}w:{worker_id}"

    @property
    def workers(self) -> str:
        """ZSET worker id -> last seen (wall seconds)."""
        return self.base + "workers"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel carrying the id of every running task whose cancel was requested."""
        return self.base + "cancel"

    def done_channel(self, task_id: str) -> str:
        """Pub/sub channel where a task's final status is published (for waiters)."""
        return f"{self.base}done:{task_id}"

    @property
    def reclaim_cursor(self) -> str:
        """String: where the next XAUTOCLAIM scan of the pending list starts.

        XAUTOCLAIM looks at most COUNT*10 pending entries per call; always starting at ``0-0``
        would never reach expired entries behind many live ones, so claims go round-robin.
        """
        return self.base + "reclaim"

    @property
    def stats(self) -> str:
        """Hash of queue-wide counters (``redeliveries``), read by the queue metrics."""
        return self.base + "stats"

    @property
    def delayed(self) -> str:
        """ZSET due-time (wall seconds, Redis' clock) -> id of PENDING tasks waiting for a
        planned time (``delay=``/``eta=``, a retry's backoff); PROMOTE moves the due ones to the
        stream."""
        return self.base + "delayed"

    def key(self, key: str) -> str:
        """String: id of the unfinished task holding idempotency key ``key`` (no TTL: deleted
        when that task finishes)."""
        return f"{self.base}k:{key}"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel where a new earliest due time of ``delayed`` is published (workers
        waiting to promote wake up early)."""
        return self.base + "wake"

    @property
    def events(self) -> str:
        """Capped Stream of task events (created/started/progress/finished) for a live console."""
        return self.base + "events"

    def all_keys(self, task_id: str = "x", worker_id: str = "w") -> list[str]:
        """Every key and channel name of the queue (for slot checks and cleanup tools)."""
        return [
            self.stream,
            self.task(task_id),
            self.idx,
            self.done,
            self.worker(worker_id),
            self.workers,
            self.cancel_channel,
            self.done_channel(task_id),
            self.events,
            self.reclaim_cursor,
            self.delayed,
            self.key("k"),
            self.wake_channel,
        ]
