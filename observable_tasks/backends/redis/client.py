"""Getting a ``redis.asyncio.Redis`` from what a user configures, and URLs safe to log.

Records are read as bytes (``decode_responses=False``): payloads and results may be binary
under a non-JSON serializer. ``rediss://`` URLs give TLS, credentials come from the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis

__all__ = ["connect", "redact"]

_SECRET_PARAMS = {"password", "pass", "passwd", "token"}


def connect(
    target: str | aioredis.Redis | aioredis.ConnectionPool,
    *,
    max_connections: int | None = None,
    **options: Any,
) -> aioredis.Redis:
    """A client for ``target``: a URL (``redis://``, ``rediss://``, ``unix://``), a ready client
    (returned as is), or a connection pool.

    With ``max_connections`` a URL gets a ``BlockingConnectionPool`` of that size (callers wait
    for a free connection instead of failing with MaxConnectionsError).
    """
    if isinstance(target, aioredis.Redis):
        return target
    if isinstance(target, aioredis.ConnectionPool):
        return aioredis.Redis(connection_pool=target)
    if not isinstance(target, str):
        raise TypeError(f"expected a Redis URL, client or ConnectionPool, got {type(target)!r}")
    scheme = urlsplit(target).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL (redis://, rediss:// or unix://): {redact(target)}")
    options.setdefault("decode_responses", False)
    if max_connections is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            target, max_connections=max_connections, **options
        )
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(target, **options)


def redact(url: str) -> str:
    """``url`` with any password (user-info or query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # a lone user-info (redis://secret@host) may be a password too: hide it as well
        netloc = f"{user}:***@{hostport}" if sep else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
    out = (
        f"{parts.scheme}://{netloc}{parts.path}"
        if "://" in url
        else urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    )
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
