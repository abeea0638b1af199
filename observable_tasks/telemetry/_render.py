"""The cheap parts of the JSON log chain :func:`~observable_tasks.telemetry.configure_logging`
builds: every log line pays for them, a task's lines included.

- :func:`dumps`: orjson (several times faster than ``json.dumps`` with a ``default``), compact
  and ASCII like ``json.dumps``' output (non-ASCII text is escaped by ``json.dumps``); values JSON
  has no type for go to structlog's ``default`` as before (``__structlog__`` or ``repr``),
  dataclasses and datetimes included (a dataclass field hidden from ``repr`` stays hidden).
  Anything orjson refuses (a key that is not a string, an integer beyond 64 bits, deep nesting)
  falls back to ``json.dumps``, so a log call never fails where it did not fail before.
- :class:`UtcIsoTimestamper`: the ``timestamp`` field as structlog's
  ``TimeStamper(fmt="iso", utc=True)`` writes it, with the date and time of day formatted once
  per second instead of once per line (and the microseconds always present).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - a dependency; json.dumps alone still works
    _orjson = None  # type: ignore[assignment]

__all__ = ["UtcIsoTimestamper", "dumps"]

_COMPACT = (",", ":")

if _orjson is not None:
    # Dataclasses and datetimes go to ``default`` (structlog's: ``__structlog__`` or ``repr``),
    # as with json.dumps: a dataclass field hidden from repr (a password) stays hidden.
    _OPTIONS = _orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME
    _orjson_dumps = _orjson.dumps


def dumps(obj: Any, default: Callable[[Any], Any] | None = None, **kw: Any) -> str:
    """``json.dumps`` for structlog's ``JSONRenderer(serializer=dumps)``: compact, ASCII."""
    if _orjson is not None and not kw:
        try:
            text: str = _orjson_dumps(obj, default=default, option=_OPTIONS).decode()
        except TypeError:  # orjson.JSONEncodeError: what orjson cannot encode, json may
            pass
        else:
            if text.isascii():
                return text
            # Non-ASCII text: escaped as json.dumps does, so a stream of any encoding takes it.
    return json.dumps(obj, default=default, separators=_COMPACT, **kw)


class UtcIsoTimestamper:
    """structlog processor: ``timestamp`` = ``2026-11-29T07:44:45.693027Z`` (UTC, ISO 8601)."""

    __slots__ = ("_cache", "key")

    def __init__(self, key: str = "timestamp") -> None:
        self.key = key
        # (whole second, its "YYYY-MM-DDTHH:MM:SS." prefix), replaced as one tuple: threads
        # reading it never see a second with another second's prefix.
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        cached, prefix = self._cache
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._cache = (second, prefix)
        event_dict[self.key] = f"{prefix}{ns // 1000:06d}Z"
        return event_dict
