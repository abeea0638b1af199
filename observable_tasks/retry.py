"""Retries, delayed starts and idempotency keys: the policy and the checks of their inputs.

Shared by both backends: the memory scheduler and the Redis worker ask the same
:meth:`RetryPolicy.plan` whether a failed attempt runs again, and after how long.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import math
import random
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from observable_tasks.errors import TaskTimeoutError

__all__ = ["Retry", "RetryPolicy", "check_key", "start_delay"]

_MAX_KEY = 256


class Retry(Exception):
    """Raised by a task function to ask for another attempt: ``raise Retry(delay=5)``.

    ``delay`` is the seconds to wait before that attempt (``None``: the policy's backoff for
    this attempt). Attempts stay bounded by the task's policy (``max_attempts``, 3 by
    default): once they are used up the task ends FAILED with this exception as its error.
    """

    def __init__(self, delay: float | None = None, message: str | None = None) -> None:
        if delay is not None:
            _check_seconds("Retry(delay=)", delay)
        self.delay = None if delay is None else float(delay)
        self.message = message or (
            "the task asked for another attempt"
            + ("" if delay is None else f" in {float(delay):g}s")
        )
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:  # keeps delay when pickled (e.g. across threads)
        return (Retry, (self.delay, self.message))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt runs again, and after how long.

    ``RetryPolicy(max_attempts=3, on=(ConnectionError,), backoff=1.0, max_delay=60.0,
    jitter=True)``: an attempt that raised one of ``on`` (or :class:`Retry`) runs again until
    ``max_attempts`` attempts have run; the wait before attempt *n + 1* is ``backoff * 2 **
    (n - 1)`` seconds, capped at ``max_delay``. With ``jitter`` the wait is drawn from its upper
    half (``[d/2, d]``), so that tasks that failed together do not retry together, and never
    sooner than half the planned wait. ``on_timeout=True`` also retries an attempt that ran
    out of time (TIMEOUT). Cancellation never retries.

    The default (``on=()``) retries nothing by itself: only :class:`Retry` asks for another
    attempt. Invalid values raise ``ValueError``/``TypeError`` naming the field.
    """

    max_attempts: int = 3
    """Attempts in all, the first included (1: never run again)."""
    on: tuple[type[BaseException], ...] = ()
    """Exception classes (subclasses included) whose attempts run again."""
    backoff: float = 1.0
    """Seconds before the second attempt; doubled for each one after."""
    max_delay: float = 60.0
    """The longest wait between two attempts, in seconds."""
    jitter: bool = True
    """Draw each wait from ``[d/2, d]`` instead of waiting exactly ``d``."""
    on_timeout: bool = False
    """Whether an attempt that ended TIMEOUT runs again."""

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {attempts!r}")
        object.__setattr__(self, "on", _exception_classes(self.on))
        _check_seconds("backoff", self.backoff)
        _check_seconds("max_delay", self.max_delay)
        for flag in ("jitter", "on_timeout"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    def retries(self, error: BaseException) -> bool:
        """Whether an attempt that raised ``error`` may run again (attempts left aside)."""
        if isinstance(error, Retry):
            return True
        if isinstance(error, TaskTimeoutError):
            return self.on_timeout
        return bool(self.on) and isinstance(error, self.on) and isinstance(error, Exception)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1 for the first) failed."""
        planned = min(self.max_delay, self.backoff * 2.0 ** min(attempt - 1, 1000))
        if not self.jitter or planned == 0.0:
            return planned
        return planned / 2 + (rng or random).random() * planned / 2

    def plan(self, attempt: int, error: BaseException) -> float | None:
        """The wait before the next attempt after attempt ``attempt`` raised ``error``, or
        ``None`` when the task ends with this attempt."""
        if attempt >= self.max_attempts or not self.retries(error):
            return None
        if isinstance(error, Retry) and error.delay is not None:
            return error.delay
        return self.delay(attempt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (exception classes as ``module.qualname``)."""
        fields = dataclasses.asdict(self)
        fields["on"] = [f"{c.__module__}.{c.__qualname__}" for c in self.on]
        return fields

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> RetryPolicy:
        """The policy :meth:`to_dict` described (exception classes imported by name)."""
        fields = dict(fields)
        fields["on"] = tuple(_import_class(name) for name in fields.get("on", ()))
        return cls(**fields)


def _import_class(name: object) -> object:
    if isinstance(name, type):
        return name
    if not isinstance(name, str) or "." not in name:
        raise TypeError(f"on must name exception classes as 'module.Class', got {name!r}")
    module, _, qualname = name.rpartition(".")
    found: object = builtins if module == "builtins" else importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _exception_classes(on: object) -> tuple[type[BaseException], ...]:
    classes: Iterable[object]
    if isinstance(on, type):
        classes = (on,)
    elif isinstance(on, (tuple, list, set, frozenset)):
        classes = on
    else:
        raise TypeError(f"on must be an exception class or a tuple of them, got {on!r}")
    checked: list[type[BaseException]] = []
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            # CancelledError, KeyboardInterrupt and SystemExit are not failures to retry.
            raise TypeError(f"on must hold Exception subclasses, got {cls!r}")
        checked.append(cls)
    return tuple(checked)


def _check_seconds(what: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")


def start_delay(delay: object, eta: object, now: float) -> float:
    """Seconds from ``now`` (wall clock) until a task may start; 0.0 for at once.

    ``delay``: seconds >= 0; ``eta``: a timezone-aware ``datetime`` (in the past: at once).
    A naive ``eta``, both at once, NaN or a negative delay raise ``ValueError``.
    """
    if eta is None:
        if delay is None:
            return 0.0
        _check_seconds("delay", delay)
        assert isinstance(delay, (int, float))
        return float(delay)
    if delay is not None:
        raise ValueError("give delay= or eta=, not both")
    if not isinstance(eta, datetime):
        raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise ValueError(
            "eta must be timezone-aware (e.g. datetime.now(timezone.utc) + timedelta(...)): "
            f"a naive datetime is ambiguous, got {eta!r}"
        )
    return max(0.0, eta.timestamp() - now)


def check_key(key: object) -> None:
    """``TypeError``/``ValueError`` unless ``key`` is a non-empty string of at most 256
    characters."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a string, got {type(key).__name__}")
    if not key or len(key) > _MAX_KEY:
        raise ValueError(f"key must be 1 to {_MAX_KEY} characters, got {len(key)}")
