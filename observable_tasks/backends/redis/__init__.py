"""Redis backend, lower layer: key layout, Lua scripts, record encoding, codecs, connection.

Nothing in the core imports this package yet; a manager-side queue/lease loop is built on
:class:`~observable_tasks.backends.redis.scripts.Scripts`. Requires ``redis>=5.2``.
"""

from __future__ import annotations

from .backend import BACKEND_ENV, RedisBackend, RemoteTaskError, TaskBackendError
from .client import connect, redact
from .codec import (
    FunctionNotAllowedError,
    FunctionPolicy,
    JsonSerializer,
    SerializationError,
    Serializer,
    function_ref,
)
from .keys import GROUP, Keys
from .records import TaskRecord, decode_record, encode_record
from .scripts import Batch, Claimed, Renewed, Scripts

__all__ = [
    "BACKEND_ENV",
    "RedisBackend",
    "RemoteTaskError",
    "TaskBackendError",
    "GROUP",
    "Batch",
    "Claimed",
    "FunctionNotAllowedError",
    "FunctionPolicy",
    "JsonSerializer",
    "Keys",
    "Renewed",
    "Scripts",
    "SerializationError",
    "Serializer",
    "TaskRecord",
    "connect",
    "decode_record",
    "encode_record",
    "function_ref",
    "redact",
]
