"""Small helpers shared by the tracing, metrics and logging instrumentation."""

from __future__ import annotations

__all__ = ["error_type", "trace_context_from_headers", "trace_ids_from_headers"]


def error_type(error: BaseException) -> str:
    """Low-cardinality name of an exception class: ``ValueError``, ``myapp.errors.Boom``."""
    cls = type(error)
    if cls.__module__ in ("builtins", "asyncio.exceptions") or cls.__module__.startswith(
        "observable_tasks."
    ):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def trace_ids_from_headers(headers: dict[str, str]) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` from a W3C ``traceparent`` header, if there is a valid one."""
    found = trace_context_from_headers(headers)
    return None if found is None else (found[0], found[1])


def trace_context_from_headers(headers: dict[str, str]) -> tuple[str, str, str] | None:
    """``(trace_id, span_id, trace_flags)`` from a W3C ``traceparent`` header, if valid."""
    parent = headers.get("traceparent")
    if not parent:
        return None
    parts = parent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    return parts[1], parts[2], parts[3]
