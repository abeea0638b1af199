"""Where tasks live: in this process (memory, the default) or in Redis, shared by every process.

``TaskManager(backend=...)`` and ``setup_tasks(app, backend=...)`` take ``None``/``"memory"``, a
Redis URL (``redis://``, ``rediss://``), a ``redis.asyncio`` client or pool, or a ready
:class:`~observable_tasks.backends.redis.RedisBackend`. The Redis client library is imported only
when a Redis backend is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from observable_tasks.backends.redis.backend import RedisBackend

__all__ = ["resolve_backend"]


def resolve_backend(spec: Any, **options: Any) -> RedisBackend | None:
    """The backend ``spec`` names: ``None`` for the memory backend."""
    if spec is None or spec == "memory":
        return None
    from observable_tasks.backends.redis.backend import RedisBackend

    if isinstance(spec, RedisBackend):
        return spec
    if isinstance(spec, str) and not spec.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"unknown backend {spec!r}: use 'memory' or a Redis URL (redis://host:6379/0)"
        )
    return RedisBackend(spec, **options)
