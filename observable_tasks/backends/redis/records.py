"""A task record as stored in its Redis hash, and the conversion both ways.

Every hash value is bytes/str. ``payload`` (``[args, kwargs]``) and ``result`` go through the
pluggable :class:`~.codec.Serializer` (JSON by default); ``error`` (``{type, message, code,
details}``) is always JSON, so any reader (a console, the Lua scripts, which write the "worker
lost" error) can read it. ``headers`` (trace context) is JSON too, except the usual case of a
lone ``traceparent``, stored as its bare value (55 bytes): a JSON object would pass Redis'
``hash-max-listpack-value`` (64 bytes) and turn every traced record into a hash table, about
800 bytes more per task. Times are wall-clock float seconds; ``attempts`` is the fencing token
the scripts compare.

Retries and delayed starts: ``retry`` is the producer's :class:`~observable_tasks.RetryPolicy`
in a compact text form (:func:`encode_policy`, absent for the default policy); ``retries``
counts the retries planned so far (the policy's attempt number of a start is ``retries + 1``);
``runs`` counts the starts of the current retry attempt (bounded by ``max_attempts``, the
redelivery limit for lost workers); ``next`` is the planned time of the next attempt while the
task waits in the delayed ZSET; ``ready`` is when its latest attempt could start (its planned
time; absent: ``created``); ``key`` its idempotency key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import TaskError, TaskTimeoutError
from ...retry import Retry, RetryPolicy
from ...status import TaskStatus
from .codec import JsonSerializer, Serializer, encode_payload, encode_value

__all__ = [
    "NamedRetryPolicy", "TaskRecord", "decode_headers", "decode_policy", "decode_record",
    "encode_headers", "encode_policy", "encode_record", "error_info",
]  # fmt: skip

_JSON = JsonSerializer()


@dataclass
class TaskRecord:
    """One task as the scripts see it (field names are the hash's field names)."""

    id: str
    func: str
    name: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    status: TaskStatus = TaskStatus.PENDING
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    ttl: float | None = None
    """Seconds a finished record is kept (PEXPIRE set by the finishing script)."""
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    msg: str | None = None
    """Id of the task's current stream entry (while pending or running)."""
    cancel: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    result: Any = None
    error: dict[str, Any] | None = None
    retry: str | None = None
    """The retry policy (:func:`encode_policy`); ``None``: the default ``RetryPolicy()``."""
    retries: int = 0
    runs: int = 0
    key: str | None = None
    next: float | None = None
    ready: float | None = None


_DEFAULT_POLICY = RetryPolicy()


@dataclasses.dataclass(frozen=True)
class NamedRetryPolicy(RetryPolicy):
    """A policy read back from a record: its ``on`` classes are known by ``module.qualname``
    only, and match an exception whose class or any base has one of those names. Nothing is
    imported from names read out of Redis."""

    names: frozenset[str] = frozenset()

    def retries(self, error: BaseException) -> bool:
        if isinstance(error, Retry):
            return True
        if isinstance(error, TaskTimeoutError):
            return self.on_timeout
        if not self.names or not isinstance(error, Exception):
            return False
        return any(f"{c.__module__}.{c.__qualname__}" in self.names for c in type(error).__mro__)


def encode_policy(policy: RetryPolicy) -> str | None:
    """``"<max_attempts> <backoff> <max_delay> <flags> <on class>..."`` (flags: ``j`` jitter,
    ``t`` on_timeout, ``-`` neither), short enough to keep the record a listpack; ``None``
    for the default policy (the field is left out)."""
    if policy == _DEFAULT_POLICY and type(policy) is RetryPolicy:
        return None
    flags = ("j" if policy.jitter else "") + ("t" if policy.on_timeout else "") or "-"
    names = sorted(
        policy.names
        if isinstance(policy, NamedRetryPolicy)
        else {f"{c.__module__}.{c.__qualname__}" for c in policy.on}
    )
    head = [str(policy.max_attempts), repr(policy.backoff), repr(policy.max_delay), flags]
    return " ".join(head + names)


def decode_policy(spec: str | bytes | None) -> RetryPolicy:
    """The policy of :func:`encode_policy` (``ValueError`` for a malformed one)."""
    if not spec:
        return _DEFAULT_POLICY
    return _decode_policy(spec.decode() if isinstance(spec, bytes) else spec)


@functools.lru_cache(maxsize=256)  # a few distinct policies, read with every record
def _decode_policy(text: str) -> RetryPolicy:
    parts = text.split()
    if len(parts) < 4:
        raise ValueError(f"not a retry policy: {text[:80]!r}")
    return NamedRetryPolicy(
        max_attempts=int(parts[0]),
        backoff=float(parts[1]),
        max_delay=float(parts[2]),
        jitter="j" in parts[3],
        on_timeout="t" in parts[3],
        names=frozenset(parts[4:]),
    )


def encode_headers(headers: Mapping[str, str]) -> str:
    """``headers`` as stored: a lone traceparent as its value, anything else as JSON."""
    value = headers.get("traceparent")
    if len(headers) == 1 and isinstance(value, str) and value and not value.startswith("{"):
        return value
    return json.dumps(dict(headers), separators=(",", ":"))


def decode_headers(raw: bytes | str | None) -> dict[str, str]:
    """The inverse of :func:`encode_headers` (empty for a missing field)."""
    if not raw:
        return {}
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith("{"):
        value: dict[str, str] = json.loads(text)
        return value
    return {"traceparent": text}


def _num(x: float) -> str:
    return f"{x:.6f}"


def encode_record(record: TaskRecord, serializer: Serializer | None = None) -> dict[str, bytes]:
    """Hash fields of ``record`` (fields that are None/empty are left out)."""
    ser = serializer or _JSON
    what = f"task {record.name or record.func}"
    out: dict[str, bytes] = {
        "id": record.id.encode(),
        "func": record.func.encode(),
        "name": record.name.encode(),
        "status": record.status.value.encode(),
        "progress": _num(record.progress).encode(),
        "attempts": str(record.attempts).encode(),
        "max_attempts": str(record.max_attempts).encode(),
    }
    if record.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        out["payload"] = encode_payload(record.args, record.kwargs, ser, task=what)
    for name in ("timeout", "ttl", "created", "started", "finished"):
        value = getattr(record, name)
        if value is not None:
            out[name] = _num(value).encode()
    for name in ("worker", "msg"):
        value = getattr(record, name)
        if value is not None:
            out[name] = value.encode()
    if record.cancel:
        out["cancel"] = b"1"
    if record.headers:
        out["headers"] = encode_headers(record.headers).encode()
    if record.result is not None:
        out["result"] = encode_value(record.result, ser, f"the result of {what}")
    if record.error is not None:
        out["error"] = encode_value(record.error, _JSON, f"the error of {what}")
    for name in ("retry", "key"):
        value = getattr(record, name)
        if value is not None:
            out[name] = value.encode()
    for name in ("retries", "runs"):
        if getattr(record, name):
            out[name] = str(getattr(record, name)).encode()
    for name in ("next", "ready"):
        value = getattr(record, name)
        if value is not None:
            out[name] = _num(value).encode()
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def decode_record(
    fields: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[Any, Any],
    serializer: Serializer | None = None,
) -> TaskRecord:
    """The record of an HGETALL reply (bytes or str keys/values); KeyError if ``id`` is absent."""
    ser = serializer or _JSON
    f: dict[str, bytes] = {_text(k): _raw(v) for k, v in fields.items()}

    def text(name: str) -> str | None:
        value = f.get(name)
        return None if value is None else value.decode()

    def num(name: str) -> float | None:
        value = f.get(name)
        return None if value is None or value == b"" else float(value)

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if "payload" in f:
        args, kwargs = ser.loads(f["payload"])
    return TaskRecord(
        id=f["id"].decode(),
        func=text("func") or "",
        name=text("name") or "",
        args=list(args),
        kwargs=dict(kwargs),
        status=TaskStatus(text("status") or "PENDING"),
        progress=num("progress") or 0.0,
        attempts=int(f.get("attempts", b"0")),
        max_attempts=int(f.get("max_attempts", b"1")),
        timeout=num("timeout"),
        ttl=num("ttl"),
        created=num("created"),
        started=num("started"),
        finished=num("finished"),
        worker=text("worker"),
        msg=text("msg"),
        cancel=f.get("cancel") == b"1",
        headers=decode_headers(f.get("headers")),
        result=ser.loads(f["result"]) if "result" in f else None,
        error=_JSON.loads(f["error"]) if "error" in f else None,
        retry=text("retry"),
        retries=int(f.get("retries", b"0")),
        runs=int(f.get("runs", b"0")),
        key=text("key"),
        next=num("next"),
        ready=num("ready"),
    )


def error_info(exc: BaseException) -> dict[str, Any]:
    """``{type, message, code, details}`` of an exception, JSON-safe (details fall back to repr)."""
    code = getattr(exc, "code", None)
    details: Any = exc.details if isinstance(exc, TaskError) else {}
    try:
        json.dumps(details, allow_nan=False)
    except (TypeError, ValueError):
        details = {"repr": repr(details)}
    return {
        "type": type(exc).__qualname__,
        "message": str(exc),
        "code": code if isinstance(code, str) else None,
        "details": details,
    }
