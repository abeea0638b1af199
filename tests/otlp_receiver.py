"""A real OTLP/gRPC trace receiver for tests: a ``grpc.server`` on loopback that keeps every span.

Usage::

    with OTLPReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        [span] = receiver.wait_for_spans(name="process work", count=1)

``wait_for_spans`` blocks (bounded, woken by each export, no fixed sleeps) until at least
``count`` received spans match the given properties, and returns them in arrival order.
Spans are decoded into :class:`ReceivedSpan` (hex ids, kind/status names, plain attributes).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OTLPReceiver", "ReceivedSpan", "decode_export_request"]

_KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it. Ids are lowercase hex; no parent is ``""``."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    """UNSPECIFIED, INTERNAL, SERVER, CLIENT, PRODUCER or CONSUMER."""
    attributes: dict[str, Any]
    status_code: str
    """UNSET, OK or ERROR."""
    status_message: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    """``(name, attributes)`` of each span event (e.g. ``exception``)."""
    resource: dict[str, Any]
    scope: str
    start_time_unix_nano: int
    end_time_unix_nano: int

    def matches(self, **props: Any) -> bool:
        """True if every given field equals (``attributes``: is a superset of) the value."""
        for key, want in props.items():
            have = getattr(self, key)
            if key in ("attributes", "resource"):
                if any(have.get(k, _MISSING) != v for k, v in want.items()):
                    return False
            elif have != want:
                return False
        return True


_MISSING = object()


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if kind == "array_value":
        return [_value(v) for v in raw.values]
    if kind == "kvlist_value":
        return _attributes(raw.values)
    return raw


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode_export_request(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> list[ReceivedSpan]:
    """Flatten ResourceSpans -> ScopeSpans -> Span into :class:`ReceivedSpan` objects."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_KINDS.get(span.kind, str(span.kind)),
                        attributes=_attributes(span.attributes),
                        status_code=_STATUS.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        events=tuple((e.name, _attributes(e.attributes)) for e in span.events),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                    )
                )
    return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(  # the gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._add(decode_export_request(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OTLPReceiver:
    """OTLP/gRPC trace collector on ``127.0.0.1:<free port>`` (chosen by the OS at bind time)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.export_calls = 0
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` should be (with ``..._INSECURE=true``)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> OTLPReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), server
        )
        self.port = server.add_insecure_port(f"{self.host}:0")
        if not self.port:
            raise RuntimeError("the OTLP receiver could not bind a loopback port")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(timeout=5)
            self._server = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self.export_calls += 1
            self._spans.extend(spans)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    def find(
        self, predicate: Callable[[ReceivedSpan], bool] | None = None, **props: Any
    ) -> list[ReceivedSpan]:
        """Received spans matching ``props`` (see :meth:`ReceivedSpan.matches`) and predicate."""
        return [s for s in self.spans if s.matches(**props) and (predicate is None or predicate(s))]

    def wait_for_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 10.0,
        **props: Any,
    ) -> list[ReceivedSpan]:
        """Block until at least ``count`` spans match; return all matching spans.

        Wakes on each export (no fixed sleeps) and fails with an AssertionError listing what
        did arrive after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    s
                    for s in self._spans
                    if s.matches(**props) and (predicate is None or predicate(s))
                ]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({(s.name, s.kind) for s in self._spans})
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {count} span(s) matching "
                        f"{props} (found {len(found)}); received: {seen}"
                    )
                self._cond.wait(left)

    async def async_wait_for_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 10.0,
        **props: Any,
    ) -> list[ReceivedSpan]:
        """:meth:`wait_for_spans` for async tests (waits in a thread, the loop keeps running)."""
        import asyncio

        return await asyncio.to_thread(
            self.wait_for_spans, predicate, count=count, timeout=timeout, **props
        )
