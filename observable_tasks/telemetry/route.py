"""The ``/metrics`` route: Prometheus exposition of a registry, or of every worker process."""

from __future__ import annotations

from typing import Any

from nexios import NexiosApp
from nexios.http import Request, Response
from nexios.routing import Route
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from observable_tasks.telemetry.exemplars import MultiProcessExemplarCollector, multiprocess_dir
from observable_tasks.telemetry.metrics import is_multiprocess, queue_collectors

__all__ = ["add_metrics_route"]

_ALL_METHODS = ["get", "head", "post", "put", "patch", "delete", "options"]


def add_metrics_route(
    app: NexiosApp, path: str = "/metrics", registry: CollectorRegistry | None = None
) -> None:
    """Serve ``registry`` (default: the global one) at ``path``, GET/HEAD only.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, each scrape aggregates every worker process instead.
    OpenMetrics is served when the ``Accept`` header asks for it (Prometheus does), with the
    histograms' exemplars (merged from every process in multiprocess mode); the Prometheus text
    format otherwise.
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
        # OpenMetrics (with exemplars) when the scraper asks for it, the text format otherwise
        # (which has no exemplars: prometheus_client's text encoder leaves them out).
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        source = chosen
        folder = multiprocess_dir() if is_multiprocess() else None
        if folder is not None:
            from prometheus_client import multiprocess

            source = CollectorRegistry()
            if content_type.startswith("application/openmetrics-text"):
                # prometheus_client drops exemplars in multiprocess mode: merge every
                # process's own exemplar file into the aggregated histograms.
                source.register(MultiProcessExemplarCollector(folder))
            else:
                multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
            for queue in queue_collectors(chosen):
                source.register(queue)  # read from Redis: the same from every process
        body = encoder(source)
        return response.resp(body, status_code=200, content_type=content_type)

    app.add_route(
        Route(path, metrics, methods=_ALL_METHODS, exclude_from_schema=True, name="metrics")
    )
