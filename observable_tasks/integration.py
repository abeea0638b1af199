"""Nexios integration: ``setup_tasks``, the module-level ``create_task``, ``TaskDependency``."""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import nexios
from nexios import Context, Depend, NexiosApp
from nexios.http import Request

from observable_tasks._awaitable import Done
from observable_tasks.config import TaskConfig
from observable_tasks.current import all_managers, current_manager, last_manager, remember_manager
from observable_tasks.errors import NoTaskManagerError, TaskNotFoundError
from observable_tasks.invocation import reject_coroutine
from observable_tasks.manager import TaskManager, check_progress
from observable_tasks.middleware import TaskMiddleware, TaskObserver
from observable_tasks.status import TaskStatus
from observable_tasks.task import Task

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from observable_tasks.console import ConsoleOptions

__all__ = [
    "setup_tasks",
    "get_task_manager",
    "create_task",
    "update_task_progress",
    "TaskDependency",
]

_managers_by_app: weakref.WeakKeyDictionary[NexiosApp, TaskManager] = weakref.WeakKeyDictionary()

STATE_KEY = "task_manager"
"""Key of the manager in ``app.state`` (for handlers that prefer to look it up there)."""


def setup_tasks(
    app: NexiosApp,
    config: TaskConfig | None = None,
    *,
    middleware: Iterable[TaskMiddleware] = (),
    observers: Iterable[TaskObserver] = (),
    telemetry: bool = True,
    tracing: bool = True,
    metrics: bool = True,
    logs: bool = True,
    tracer_provider: TracerProvider | None = None,
    registry: CollectorRegistry | None = None,
    logger: Any = None,
    namespace: str | None = None,
    metrics_path: str | None = "/metrics",
    trace_requests: bool = False,
    backend: Any = None,
    execute: bool = True,
    allow: Iterable[str] = (),
    max_task_labels: int = 200,
    console: bool | ConsoleOptions = False,
    log_started: bool = False,
) -> TaskManager:
    """Give ``app`` a task manager tied to its lifespan, instrumented, and return it.

    Works with ``on_startup``/``on_shutdown`` apps and with ``NexiosApp(lifespan=...)`` apps (the
    lifespan is wrapped: the manager starts before it and shuts down after it). Calling it again
    for the same app returns the same manager.

    Telemetry (all on by default; ``telemetry=False`` switches everything off):
    ``tracing`` (span per task; ``tracer_provider``, default the global one), ``metrics``
    (Prometheus; ``registry``, default the global one; ``namespace``, default ``observable``;
    served at ``metrics_path``, ``None`` for no route; at most ``max_task_labels`` distinct task
    function labels, the rest folded into ``__other__``), ``logs`` (structlog; ``logger``;
    ``task.created`` and the outcome at INFO, ``task.started`` at DEBUG unless ``log_started``).
    ``trace_requests=True`` also traces the app's HTTP requests (needs the ``asgi`` extra,
    ``opentelemetry-instrumentation-asgi``), so a trace shows request -> send -> process.
    User ``middleware`` runs inside the telemetry (the task's span is current in it).

    ``backend``: where tasks live. ``None`` reads ``OBSERVABLE_TASKS_BACKEND`` and falls back to
    the memory backend (this process only); a Redis URL (``redis://host:6379/0``,
    ``rediss://`` for TLS), a ``redis.asyncio`` client or pool, or a ``RedisBackend`` shares the
    tasks with every process and machine of the app. On Redis, ``execute=False`` makes this a
    web-only process (dedicated workers run the tasks); an executing process runs the functions
    it creates tasks for, those of the package that called ``setup_tasks``, and those of the
    modules in ``allow``: nothing else, whatever a record in Redis names.

    ``console=True`` serves the task console (page, admin API, event stream) at ``/console``;
    ``console=ConsoleOptions(path=..., basic_auth=..., ...)`` chooses its settings (off by
    default; see :func:`observable_tasks.console.mount_console`).
    """
    existing = _managers_by_app.get(app)
    if existing is not None:
        if config is not None and config != existing.config:
            warnings.warn(
                "setup_tasks() was already called for this app; the new config is ignored",
                RuntimeWarning,
                stacklevel=2,
            )
        return existing
    manager = TaskManager(config, backend=_backend(backend, execute, allow, _caller_package()))
    on_stop: list[Callable[[], None]] = []
    if telemetry and (tracing or metrics or logs):
        # Imported here so that the core works without the telemetry libraries installed.
        from observable_tasks.telemetry import instrument, names

        parts = instrument(
            manager,
            tracing=tracing,
            metrics=metrics,
            logs=logs,
            tracer_provider=tracer_provider,
            registry=registry,
            namespace=namespace or names.DEFAULT_NAMESPACE,
            max_task_labels=max_task_labels,
            logger=logger,
            log_started=log_started,
        )
        on_stop.append(parts.close)
        if metrics and metrics_path:
            from observable_tasks.telemetry.route import add_metrics_route

            add_metrics_route(app, metrics_path, registry)
    if telemetry and trace_requests:
        _trace_requests(app, tracer_provider, metrics_path if metrics else None)
    for mw in middleware:
        manager.add_middleware(mw)
    for obs in observers:
        manager.add_observer(obs)
    if console:
        from observable_tasks.console import ConsoleOptions as _Options
        from observable_tasks.console import mount_console

        options = console if isinstance(console, _Options) else _Options()
        mount_console(app, manager, options=options)
    _managers_by_app[app] = manager
    app.state[STATE_KEY] = manager
    remember_manager(manager, as_default=True)
    _attach_lifespan(app, manager, on_stop)
    return manager


def _caller_package() -> str | None:
    # The app's own package: the embedded worker may run the functions defined there.
    frame = sys._getframe(2)
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str) or name == "__main__":
        return None
    if name.startswith("observable_tasks."):
        return name  # the demo: its own module, not the whole library
    return name.partition(".")[0]


def _backend(spec: Any, execute: bool, allow: Iterable[str], package: str | None) -> Any:
    if spec is None:
        from os import environ

        spec = environ.get("OBSERVABLE_TASKS_BACKEND", "").strip() or None
    if spec is None or spec == "memory":
        return None
    from observable_tasks.backends.redis import RedisBackend

    modules = [*allow, *([package] if package else [])]
    if isinstance(spec, RedisBackend):
        if modules:
            spec.allow(*modules)
        return spec
    from observable_tasks.backends import resolve_backend

    return resolve_backend(spec, execute=execute, allow=modules)


def _trace_requests(
    app: NexiosApp, tracer_provider: TracerProvider | None, metrics_path: str | None
) -> None:
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "trace_requests=True needs opentelemetry-instrumentation-asgi: "
            "pip install 'observable-tasks[asgi]'"
        ) from exc
    import inspect

    from observable_tasks.telemetry.http_spans import route_span_details

    # Spans named by the route template ("GET /status/{task_id}", with http.route), not by
    # the path, which holds ids: one name per route, as the HTTP conventions require.
    options: dict[str, Any] = {
        "tracer_provider": tracer_provider,
        "default_span_details": route_span_details(app),
    }
    if "exclude_spans" in inspect.signature(OpenTelemetryMiddleware.__init__).parameters:
        # No "http receive"/"http send" child span per ASGI message: noise, 3+ per request.
        options["exclude_spans"] = ["receive", "send"]
    if metrics_path:
        # Scrapes every few seconds would otherwise fill the trace store with /metrics spans.
        options["excluded_urls"] = re.escape(metrics_path) + "$"
    app.wrap_asgi(OpenTelemetryMiddleware, **options)


def _attach_lifespan(
    app: NexiosApp, manager: TaskManager, on_stop: list[Callable[[], None]]
) -> None:
    async def stop_tasks() -> None:
        try:
            await manager.shutdown()
        finally:
            for stop in on_stop:
                stop()

    user_lifespan = app.lifespan_context
    if user_lifespan is not None:
        # NexiosApp(lifespan=...) ignores on_startup/on_shutdown hooks, so wrap the lifespan.
        @contextlib.asynccontextmanager
        async def lifespan(app_: NexiosApp) -> AsyncIterator[Any]:
            await manager.start()
            try:
                async with user_lifespan(app_) as state:
                    yield state
            finally:
                await stop_tasks()

        app.lifespan_context = lifespan
        return

    async def start_tasks() -> None:
        await manager.start()

    # Start before the user's own startup hooks, so that they may create tasks.
    app.on_startup(start_tasks)
    handlers = getattr(app, "startup_handlers", None)
    if isinstance(handlers, list) and handlers and handlers[-1] is start_tasks:
        handlers.insert(0, handlers.pop())
    app.on_shutdown(stop_tasks)


def get_task_manager(app: NexiosApp | None = None) -> TaskManager:
    """The manager for ``app``; without an app, the one :func:`create_task` would use."""
    if app is not None:
        manager = _managers_by_app.get(app)
        if manager is None:
            raise NoTaskManagerError("this app has no task manager: call setup_tasks(app) first")
        return manager
    return _resolve_manager()


def _manager_of_request(request: Request) -> TaskManager | None:
    scope = request.scope
    for key in ("base_app", "app"):
        app = scope.get(key)
        if app is not None:
            try:
                manager = _managers_by_app.get(app)
            except TypeError:  # unhashable or not weak-referenceable
                manager = None
            if manager is not None:
                return manager
    return None


def _resolve_manager() -> TaskManager:
    ctx = nexios.get_current_context()
    request = getattr(ctx, "request", None) if ctx is not None else None
    if request is not None:
        manager = _manager_of_request(request)
        if manager is not None:
            return manager
    manager = current_manager() or last_manager()
    if manager is None:
        raise NoTaskManagerError(
            "no task manager found: call setup_tasks(app) at start-up "
            "(or create a TaskManager and use its create_task method)"
        )
    return manager


def create_task(*args: Any, **kwargs: Any) -> Done[Task]:
    """Create a background task: ``await create_task(func, *args, name=..., timeout=..., **kw)``.

    Also accepts ``create_task(func=..., ...)``. The manager is found from the current request
    (the app given to ``setup_tasks``), else the running task's manager, else the manager set up
    most recently. The deprecated ``create_task(request=request, func=...)`` and
    ``create_task(request, func, ...)`` forms still work and warn.
    """
    request = kwargs.get("request")
    manager: TaskManager | None = None
    if isinstance(request, Request):
        del kwargs["request"]
    elif args and isinstance(args[0], Request):
        request, args = args[0], args[1:]
    else:
        request = None
    if request is not None:
        warnings.warn(
            "passing request to create_task() is deprecated: call create_task(func, ...) and "
            "the manager is found from the current request context",
            DeprecationWarning,
            stacklevel=2,
        )
        manager = _manager_of_request(request)
    if "func" in kwargs:
        func = kwargs.pop("func")
    elif args:
        func, args = args[0], args[1:]
    else:
        raise TypeError("create_task() missing the function to run (func)")
    reject_coroutine(func)  # before looking for a manager: the mistake is the call's
    if manager is None:
        manager = _resolve_manager()
    return manager.create_task(func, *args, **kwargs)


def update_task_progress(task_id: str, progress: float) -> Done[None]:
    """Set a task's progress (0-100): ``await update_task_progress(task_id, 42.0)``.

    Safe to call (without ``await``) from a sync task running in a worker thread. ``ValueError``
    for NaN or values outside 0-100, :class:`~observable_tasks.TaskNotFoundError` (a
    ``LookupError``) for an unknown id.
    """
    unreachable: ConnectionError | None = None
    answered = False
    for manager in _candidate_managers():
        try:
            found = manager.get_task(task_id)
        except ConnectionError as exc:  # a manager whose Redis is down: look on
            unreachable = exc
            continue
        answered = True
        if found is not None:
            manager.update_progress(task_id, progress)
            return Done(None)
    check_progress(progress)  # a bad value is reported as such even for an unknown id
    if unreachable is not None and not answered:
        raise unreachable  # no manager could look: say why
    raise TaskNotFoundError(task_id)


def _candidate_managers() -> list[TaskManager]:
    first = current_manager()
    rest = [m for m in all_managers() if m is not first]
    return [first, *rest] if first is not None else rest


class TaskDependency(Depend):
    """Inject the task manager: ``task_dep: TaskDependency = TaskDependency()`` as a default.

    In the handler the parameter is a ``TaskDependency`` bound to the manager, with ``create``,
    ``get_task``, ``list_tasks``, ``wait_for_task``, ``cancel_task`` and ``update_progress``.
    """

    def __init__(self, manager: TaskManager | None = None) -> None:
        super().__init__(self._provide)
        self._manager = manager

    def _provide(self, ctx: Context = Context()) -> TaskDependency:  # noqa: B008 - Nexios DI
        request = getattr(ctx, "request", None)
        manager = _manager_of_request(request) if request is not None else None
        return TaskDependency(manager or _resolve_manager())

    @property
    def manager(self) -> TaskManager:
        """The task manager this handle is bound to."""
        if self._manager is None:
            self._manager = _resolve_manager()
        return self._manager

    def create(
        self,
        func: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Done[Task]:
        """``await task_dep.create(func, ..., name=...)``: same as ``create_task``."""
        return self.manager.create_task(func, *args, name=name, timeout=timeout, **kwargs)

    def get_task(self, task_id: str) -> Task | None:
        """The task with this id, or ``None``."""
        return self.manager.get_task(task_id)

    def list_tasks(self, status: TaskStatus | str | None = None) -> list[Task]:
        """All known tasks, optionally filtered by status."""
        return self.manager.list_tasks(status)

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task finishes (see :meth:`TaskManager.wait_for_task`)."""
        return await self.manager.wait_for_task(task_id, timeout)

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a pending or running task (see :meth:`TaskManager.cancel_task`)."""
        return await self.manager.cancel_task(task_id)

    def update_progress(self, task_id: str, progress: float) -> None:
        """Set a task's progress (0-100)."""
        self.manager.update_progress(task_id, progress)
