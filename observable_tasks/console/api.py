"""``mount_console``: the page, its JSON admin API and its event stream, as routes of the app.

Every route answers its own 405 for a wrong method (Nexios would otherwise keep answering 405
for the route after one wrong-method request) and is left out of the OpenAPI document unless
``in_schema=True``. Answers are JSON (or the static page); nothing a task supplies is ever put
into HTML on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nexios.http import Request, Response
from nexios.routing import Route

from observable_tasks.status import TaskStatus

from .auth import COOKIE, authorized, new_token, same_origin, token_ok
from .events import sse_stream
from .options import AuthHook, ConsoleOptions
from .page import ASSETS, CSP, asset, render_page
from .views import task_view

if TYPE_CHECKING:
    from nexios import NexiosApp

    from observable_tasks.manager import TaskManager

__all__ = ["mount_console"]

COUNTS_MAX_AGE = 1.0
"""Seconds a computed ``/api/counts`` answer is reused (for every viewer)."""

_ALL_METHODS = ["get", "head", "post", "put", "patch", "delete", "options"]
_COMMON = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Handler = Callable[..., Awaitable[Any]]


def mount_console(
    app: NexiosApp,
    manager: TaskManager,
    path: str = "/console",
    *,
    auth: AuthHook | None = None,
    basic_auth: tuple[str, str] | None = None,
    read_only: bool = False,
    show_payloads: bool = False,
    trace_url: str | None = None,
    in_schema: bool = False,
    keepalive: float = 15.0,
    options: ConsoleOptions | None = None,
) -> ConsoleOptions:
    """Serve the task console at ``path`` of ``app`` for ``manager``; returns its settings.

    See :class:`ConsoleOptions` for the keywords (or pass ``options=`` instead of them).
    Routes: ``GET {path}`` (the page), ``GET {path}/api/tasks`` (``status``, ``function``,
    ``q``, ``cursor``, ``limit``), ``GET {path}/api/tasks/{id}``, ``POST
    {path}/api/tasks/{id}/cancel``, ``GET {path}/api/counts``, ``GET {path}/api/workers``,
    ``GET {path}/api/events`` (server-sent events).
    """
    if options is None:
        options = ConsoleOptions(
            path=path,
            auth=auth,
            basic_auth=basic_auth,
            read_only=read_only,
            show_payloads=show_payloads,
            trace_url=trace_url,
            in_schema=in_schema,
            keepalive=keepalive,
        )
    console = _Console(manager, options)
    base = options.base
    routes: list[tuple[str, Handler, str, bool]] = [
        (base or "/", console.page, "GET", False),
        (f"{base}/", console.page, "GET", False),
        (f"{base}/console.js", console.script, "GET", False),
        (f"{base}/console.css", console.style, "GET", False),
        (f"{base}/api/tasks", console.list_tasks, "GET", True),
        (f"{base}/api/tasks/{{task_id}}", console.get_task, "GET", True),
        (f"{base}/api/tasks/{{task_id}}/cancel", console.cancel, "POST", True),
        (f"{base}/api/counts", console.counts, "GET", True),
        (f"{base}/api/workers", console.workers, "GET", True),
        (f"{base}/api/events", console.events, "GET", True),
    ]
    seen: set[str] = set()
    for route_path, handler, method, documented in routes:
        if route_path in seen:
            continue
        seen.add(route_path)
        app.add_route(
            Route(
                route_path,
                console.guarded(handler, method),
                methods=_ALL_METHODS,
                exclude_from_schema=not (options.in_schema and documented),
                name=f"console{route_path.replace('/', '_')}",
                summary=(handler.__doc__ or "").strip().splitlines()[0] or None,
                tags=["console"],
            )
        )
    return options


def _json(response: Response, body: Any, status: int = 200, **headers: str) -> Any:
    return response.json(body, status_code=status, headers={**_COMMON, **headers})


def _error(response: Response, status: int, message: str, **headers: str) -> Any:
    return _json(response, {"error": message}, status, **headers)


class _Console:
    def __init__(self, manager: TaskManager, options: ConsoleOptions) -> None:
        self.manager = manager
        self.options = options
        # Counts are a pass over every known task: shared by every viewer for a moment, and
        # one computation at a time (concurrent requests wait for it).
        self._counts: tuple[float, dict[str, Any]] | None = None
        self._counting: asyncio.Lock | None = None

    def guarded(self, handler: Handler, method: str) -> Handler:
        allowed = "GET, HEAD" if method == "GET" else method

        async def route(request: Request, response: Response, **params: Any) -> Any:
            verb = request.method.upper()
            if verb not in allowed.split(", "):
                return _error(response, 405, "method not allowed", Allow=allowed)
            refused = await authorized(request, self.options)
            if refused is not None:
                status, headers = refused
                return _error(response, status, "unauthorized", **headers)
            return await handler(request, response, **params)

        route.__name__ = handler.__name__
        route.__doc__ = handler.__doc__
        return route

    def _base(self, request: Request) -> str:
        # Behind a proxy that strips a prefix, the server's root_path names it.
        root = str(request.scope.get("root_path") or "").rstrip("/")
        return root + self.options.base

    async def page(self, request: Request, response: Response) -> Any:
        """The console page."""
        token = new_token()
        body = render_page(
            self._base(request),
            token,
            read_only=self.options.read_only,
            has_trace=self.options.trace_url is not None,
            replays=self.manager.backend is not None,
        )
        headers = {
            **_COMMON,
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
        }
        response.html(body, headers=headers)
        cookie_path = self._base(request) or "/"
        forwarded = (request.headers.get("x-forwarded-proto") or "").split(",")[0].strip()
        secure = request.scope.get("scheme") == "https" or forwarded == "https"
        response.set_cookie(
            COOKIE, token, path=cookie_path, httponly=True, samesite="strict", secure=secure
        )
        return response

    async def script(self, request: Request, response: Response) -> Any:
        """The console's script."""
        return response.resp(
            asset("console.js"), content_type=ASSETS["console.js"], headers=dict(_COMMON)
        )

    async def style(self, request: Request, response: Response) -> Any:
        """The console's style sheet."""
        return response.resp(
            asset("console.css"), content_type=ASSETS["console.css"], headers=dict(_COMMON)
        )

    async def list_tasks(self, request: Request, response: Response) -> Any:
        """A page of tasks, newest first (status, function, q, cursor, limit)."""
        query = request.query_params
        try:
            limit = int(query.get("limit") or 50)
            tasks, cursor = await self.manager.query_tasks(
                status=query.get("status") or None,
                function=query.get("function") or None,
                search=query.get("q") or None,
                cursor=query.get("cursor") or None,
                limit=limit,
            )
        except ValueError as exc:
            return _error(response, 400, str(exc))
        views = [task_view(task, self.manager, self.options) for task in tasks]
        return _json(response, {"tasks": views, "next_cursor": cursor})

    async def get_task(self, request: Request, response: Response, task_id: str) -> Any:
        """One task."""
        task = await self.manager.aget_task(task_id)
        if task is None:
            return _error(response, 404, "task not found")
        return _json(response, task_view(task, self.manager, self.options))

    async def cancel(self, request: Request, response: Response, task_id: str) -> Any:
        """Cancel a pending or running task (needs the page's X-Console-Token header)."""
        if self.options.read_only:
            return _error(response, 405, "the console is read-only", Allow="")
        if not same_origin(request):
            return _error(response, 403, "cross-origin request refused")
        if not token_ok(request):
            return _error(response, 403, "missing or wrong X-Console-Token")
        task = await self.manager.aget_task(task_id)
        if task is None:
            return _error(response, 404, "task not found")
        cancelled = await self.manager.cancel_task(task_id)
        task = await self.manager.aget_task(task_id) or task
        return _json(
            response,
            {"cancelled": cancelled, "task": task_view(task, self.manager, self.options)},
        )

    async def counts(self, request: Request, response: Response) -> Any:
        """Tasks per status."""
        return _json(response, await self._current_counts())

    async def _current_counts(self) -> dict[str, Any]:
        if self._counting is None:
            self._counting = asyncio.Lock()
        async with self._counting:
            now = time.monotonic()
            if self._counts is not None and now - self._counts[0] < COUNTS_MAX_AGE:
                return self._counts[1]
            counts = await self.manager.count_tasks()
            body = {status.value: counts.get(status, 0) for status in TaskStatus}
            answer = {"counts": body, "total": sum(body.values())}
            self._counts = (time.monotonic(), answer)
            return answer

    async def workers(self, request: Request, response: Response) -> Any:
        """Processes executing tasks."""
        from datetime import datetime, timezone

        workers = await self.manager.list_workers()
        for worker in workers:
            seen = worker.get("last_seen")
            if isinstance(seen, (int, float)):
                moment = datetime.fromtimestamp(seen, timezone.utc)
                worker["last_seen"] = moment.isoformat().replace("+00:00", "Z")
        backend = "redis" if self.manager.backend is not None else "memory"
        return _json(response, {"backend": backend, "workers": workers})

    async def events(self, request: Request, response: Response) -> Any:
        """Task events as server-sent events (event ``task``: a TaskView with ``event``)."""
        last = request.headers.get("last-event-id") or None
        try:
            chunks = await sse_stream(self.manager, self.options, last)
        except ValueError as exc:
            return _error(response, 400, str(exc))
        headers = {**_COMMON, "X-Accel-Buffering": "no"}
        return response.stream(chunks, content_type="text/event-stream", headers=headers)
