"""Names of the HTTP server spans of ``setup_tasks(app, trace_requests=True)``.

OpenTelemetry's HTTP conventions name a server span ``{method} {http.route}``, the route
*template* (``GET /status/{task_id}``), never the concrete path, which holds ids (one span name
per task id is useless for grouping and costly for a trace store). A request that matches no
route is named by its method alone.

The ASGI instrumentation names the span before the app runs, so the template is found here by
asking the app's routes, as Nexios' router does (first full match, else the first route that
matched the path but not the method), descending into mounted routers and groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from nexios import NexiosApp
from nexios.routing._utils import MatchStatus
from nexios.routing.grouping import Group

__all__ = ["HTTP_ROUTE", "route_span_details", "route_template"]

HTTP_ROUTE = "http.route"
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)

Scope = MutableMapping[str, Any]


def route_template(routes: Iterable[Any], scope: Scope) -> str | None:
    """The template of the route ``scope`` (an HTTP request) would be handled by, or None."""
    partial: Any = None
    for route in routes:
        try:
            status, _ = route.match(scope)
        except Exception:  # a route type we do not know: skip it, never fail the request
            continue
        if status is MatchStatus.FULL:
            return _template(route, scope)
        if status is MatchStatus.PARTIAL and partial is None:
            partial = route
    return _template(partial, scope) if partial is not None else None


def _template(route: Any, scope: Scope) -> str | None:
    if isinstance(route, Group):
        prefix = route.path.rstrip("/")
        inner = route.routes
        if not inner:  # a mounted ASGI app (static files, a frontend): its own namespace
            return prefix + "/{path}"
        path = scope.get("path", "")
        remaining = path[len(prefix) :] if path.startswith(prefix) else path
        sub = dict(scope)
        sub["path"] = remaining or "/"
        sub["root_path"] = scope.get("root_path", "") + prefix
        found = route_template(inner, sub)
        return prefix + found if found is not None else None
    raw = getattr(route, "raw_path", None)
    return raw if isinstance(raw, str) else None


def route_span_details(app: NexiosApp) -> Callable[[Scope], tuple[str, dict[str, Any]]]:
    """``default_span_details`` for ``OpenTelemetryMiddleware``: ``(name, attributes)``.

    The routes are read at each request, so routes added after ``setup_tasks`` count.
    """

    def details(scope: Scope) -> tuple[str, dict[str, Any]]:
        if scope.get("type") != "http":
            return "websocket", {}  # not routed here; a low-cardinality name all the same
        method = str(scope.get("method", "")).strip().upper()
        if method not in _METHODS:
            method = "HTTP"  # the conventions' name for an unknown method
        try:
            template = route_template(app.router.routes, scope)
        except Exception:  # never fail a request over its span name
            template = None
        if template is None:
            return method, {}
        return f"{method} {template}", {HTTP_ROUTE: template}

    return details
