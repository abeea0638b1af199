"""Exemplars: a histogram bucket points at the trace of a recent task that landed in it.

The duration and queue-wait histograms carry, per bucket, the ``trace_id``/``span_id`` of the
latest *sampled* task span observed there (never a task id: exemplars are labels too). They are
served in OpenMetrics only (``/metrics`` negotiates it from ``Accept``); the Prometheus text
format has no exemplars.

One process: prometheus_client keeps the latest exemplar per bucket itself
(``Histogram.observe(value, exemplar)``).

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): prometheus_client drops exemplars there
(client_python#826: ``MmapedValue.set_exemplar`` does nothing). Each process therefore keeps the
latest exemplar per (histogram, labels, bucket) in memory (:class:`ExemplarStore`) and writes
it, at most every :data:`FLUSH_INTERVAL` seconds and only when something changed, to a file of
its own in the multiprocess folder, ``exemplars_<pid>.json`` (written to a temporary file, then
renamed: a reader never sees half a file). A scrape asking for OpenMetrics reads every process's
file, keeps the latest exemplar per bucket (:func:`read_exemplars`) and attaches it to the
matching bucket sample of the aggregated histogram (:class:`MultiProcessExemplarCollector`).
:func:`mark_process_dead` removes a dead process's file along with prometheus_client's live
gauge files.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _prometheus_mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "FLUSH_INTERVAL",
    "ExemplarStore",
    "MultiProcessExemplarCollector",
    "current_exemplar",
    "exemplar_file",
    "mark_process_dead",
    "multiprocess_dir",
    "process_store",
    "read_exemplars",
]

FLUSH_INTERVAL = 0.5
"""Seconds between two writes of a process's exemplar file (only when something changed)."""

_PREFIX = "exemplars_"
_SUFFIX = ".json"
_FORMAT = 1

# (bucket sample name, sorted (label, value) pairs without ``le``, ``le`` as exposed)
BucketKey = tuple[str, tuple[tuple[str, str], ...], str]


def current_exemplar() -> dict[str, str] | None:
    """``{"trace_id", "span_id"}`` of the current span if it is sampled, else ``None``.

    Called by the metrics part while the task's CONSUMER span is current (the pipeline runs the
    tracing part first): one context lookup, no SDK call.
    """
    ctx = trace.get_current_span().get_span_context()
    if not ctx.trace_flags & 1:  # unsampled, or no span at all (INVALID_SPAN has flags 0)
        return None
    return {
        "trace_id": ctx.trace_id.to_bytes(16, "big").hex(),
        "span_id": ctx.span_id.to_bytes(8, "big").hex(),
    }


def multiprocess_dir() -> str | None:
    """The multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``), if set."""
    env = os.environ
    return env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir") or None


def exemplar_file(path: str, pid: int) -> str:
    """The exemplar file of process ``pid`` in the multiprocess folder ``path``."""
    return os.path.join(path, f"{_PREFIX}{pid}{_SUFFIX}")


class ExemplarStore:
    """The latest exemplar per bucket of this process, flushed to its own file.

    :meth:`record` is the hot path: a bisect, a dict store and, when the store was clean, waking
    the flusher thread (a daemon, started on first use; it sleeps while nothing changes).
    """

    def __init__(self, path: str, pid: int | None = None, *, interval: float = FLUSH_INTERVAL):
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        # key -> (trace_id, span_id, value, timestamp)
        self._latest: dict[BucketKey, tuple[str, str, float, float]] = {}
        self._dirty = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serialises file writes (flusher vs. flush()/close())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def file(self) -> str:
        return exemplar_file(self.path, self.pid)

    def record(
        self,
        bucket_name: str,
        labels: tuple[tuple[str, str], ...],
        bounds: Sequence[float],
        les: Sequence[str],
        value: float,
        exemplar: dict[str, str],
    ) -> None:
        """Keep ``exemplar`` for the bucket ``value`` falls in (``bounds`` ascending, ``+Inf``
        last; ``les`` the same bounds as exposed)."""
        if self._closed:
            return
        le = les[bisect.bisect_left(bounds, value)]
        self._latest[(bucket_name, labels, le)] = (
            exemplar["trace_id"],
            exemplar["span_id"],
            value,
            time.time(),
        )
        if not self._dirty.is_set():
            self._dirty.set()
            if self._thread is None:
                self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="exemplar-flush", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._dirty.wait()
            time.sleep(self.interval)  # coalesce the changes of one interval into one write
            self.flush()

    def snapshot(self) -> dict[BucketKey, tuple[str, str, float, float]]:
        return self._latest.copy()  # atomic under the GIL

    def flush(self) -> None:
        """Write the file now (if anything changed since the last write)."""
        with self._lock:
            if self._closed or not self._dirty.is_set():
                return
            self._dirty.clear()
            entries = [
                [name, dict(labels), le, trace_id, span_id, value, ts]
                for (name, labels, le), (trace_id, span_id, value, ts) in self.snapshot().items()
            ]
            body = json.dumps({"format": _FORMAT, "pid": self.pid, "exemplars": entries})
            target = self.file
            tmp = f"{target}.{threading.get_ident()}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as out:
                    out.write(body)
                os.replace(tmp, target)
            except OSError:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                self._dirty.set()  # try again at the next change

    def clear(self) -> None:
        """Forget every exemplar and remove the file (this process was marked dead). Later
        records start a new file: a process that goes on observing is not dead after all."""
        with self._lock:
            self._latest.clear()
            self._dirty.clear()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file)

    def close(self, *, remove: bool = True) -> None:
        """Stop writing; remove the file (the process is going away)."""
        with self._lock:
            self._closed = True
            self._dirty.set()  # wake the flusher so that it ends
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.file)


_STORE: ExemplarStore | None = None
_STORE_LOCK = threading.Lock()


def process_store(path: str) -> ExemplarStore:
    """This process's store for the multiprocess folder ``path`` (one per process)."""
    global _STORE
    store = _STORE
    if store is not None and store.path == path and store.pid == os.getpid():
        return store
    with _STORE_LOCK:
        store = _STORE
        if store is None or store.path != path or store.pid != os.getpid():
            store = _STORE = ExemplarStore(path)
        return store


def _forget_store_after_fork() -> None:
    global _STORE
    _STORE = None  # the parent's entries and flusher thread are not this process's


os.register_at_fork(after_in_child=_forget_store_after_fork)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """prometheus_client's ``mark_process_dead`` plus the removal of ``pid``'s exemplar file."""
    path = path if path is not None else multiprocess_dir()
    if path is None:
        return
    _prometheus_mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    store = _STORE
    if store is not None and store.pid == pid and store.path == path:
        store.clear()
    with contextlib.suppress(FileNotFoundError):
        os.remove(exemplar_file(path, pid))


def _read_file(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as source:
            data = json.load(source)
    except (OSError, ValueError):
        return []  # gone (its process was marked dead meanwhile) or not ours
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return []
    entries = data.get("exemplars")
    return entries if isinstance(entries, list) else []


def read_exemplars(path: str) -> dict[BucketKey, Exemplar]:
    """Every process's exemplars in ``path``, merged: the latest per bucket wins."""
    merged: dict[BucketKey, Exemplar] = {}
    for file in glob.glob(os.path.join(path, f"{_PREFIX}*{_SUFFIX}")):
        for entry in _read_file(file):
            try:
                name, labels, le, trace_id, span_id, value, ts = entry
                key: BucketKey = (str(name), tuple(sorted(labels.items())), str(le))
                exemplar = Exemplar(
                    {"trace_id": str(trace_id), "span_id": str(span_id)}, float(value), float(ts)
                )
            except (TypeError, ValueError, AttributeError):
                continue
            current = merged.get(key)
            if current is None or float(exemplar.timestamp or 0) > float(current.timestamp or 0):
                merged[key] = exemplar
    return merged


class MultiProcessExemplarCollector(Collector):
    """prometheus_client's :class:`MultiProcessCollector`, with the processes' exemplars on the
    histogram buckets they belong to (for OpenMetrics scrapes)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._inner = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Any]:
        exemplars = read_exemplars(self.path)
        _merge_own(exemplars, self.path)
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if exemplars and metric.type == "histogram":
                metric.samples = [_attach(sample, exemplars) for sample in metric.samples]
            yield metric


def _merge_own(exemplars: dict[BucketKey, Exemplar], path: str) -> None:
    """Add this process's exemplars not flushed yet (the scrape may be answered by their
    process)."""
    store = _STORE
    if store is None or store.path != path or store.pid != os.getpid() or store.closed:
        return
    for key, (trace_id, span_id, value, ts) in store.snapshot().items():
        current = exemplars.get(key)
        if current is None or ts > float(current.timestamp or 0):
            exemplars[key] = Exemplar({"trace_id": trace_id, "span_id": span_id}, value, ts)


def _attach(sample: Sample, exemplars: dict[BucketKey, Exemplar]) -> Sample:
    if not sample.name.endswith("_bucket"):
        return sample
    labels = sample.labels
    le = labels.get("le")
    if le is None:
        return sample
    key = (sample.name, tuple(sorted((k, v) for k, v in labels.items() if k != "le")), le)
    exemplar = exemplars.get(key)
    return sample if exemplar is None else sample._replace(exemplar=exemplar)


def bucket_layout(bounds: Iterable[float]) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Upper bounds with ``+Inf`` last, and how each is exposed as ``le``."""
    upper = sorted(float(b) for b in bounds)
    if not upper or upper[-1] != float("inf"):
        upper.append(float("inf"))
    return tuple(upper), tuple(floatToGoString(b) for b in upper)  # type: ignore[no-untyped-call]
