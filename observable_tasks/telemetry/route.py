"""The ``/metrics`` route: Prometheus exposition of a registry, or of every worker process."""

from __future__ import annotations

from typing import Any

from nexios import NexiosApp
from nexios.http import Request, Response
from nexios.routing import Route
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from observable_tasks.telemetry.metrics import is_multiprocess, queue_collectors

__all__ = ["add_metrics_route"]

_ALL_METHODS = ["get", "head", "post", "put", "patch", "delete", "options"]


def add_metrics_route(
    app: NexiosApp, path: str = "/metrics", registry: CollectorRegistry | None = None
) -> None:
    """Serve ``registry`` (default: the global one) at ``path``, GET/HEAD only.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, each scrape aggregates every worker process instead.
    The route is kept out of the OpenAPI schema.
    """
    chosen = registry if registry is not None else REGISTRY

    async def metrics(request: Request, response: Response) -> Any:
        # The route takes every method and answers 405 itself: Nexios replaces a route's app
        # after one wrong-method request (a "sticky" 405), which would break later scrapes.
        if request.method.upper() not in ("GET", "HEAD"):
            return response.json(
                {"error": "method not allowed"}, status_code=405, headers={"Allow": "GET, HEAD"}
            )
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        source = chosen
        if is_multiprocess():
            from prometheus_client import multiprocess

            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
            for queue in queue_collectors(chosen):
                source.register(queue)  # read from Redis: the same from every process
        body = encoder(source)
        return response.resp(body, status_code=200, content_type=content_type)

    app.add_route(
        Route(path, metrics, methods=_ALL_METHODS, exclude_from_schema=True, name="metrics")
    )
