"""Counters, gauges and histograms rendered in Prometheus' text exposition format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: the service needs a handful of series,
and one more dependency for them is not worth it. Thread-safe: the event
loop, the inference thread and the watcher all record.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[Any, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._values: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def inc(self, *labels: Any, value: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + value

    def value(self, *labels: Any) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def set(self, *labels: Any, value: float) -> None:
        """Mirror a total kept elsewhere (a counter must still only go up)."""
        with self._lock:
            self._values[labels] = value

    def replace(self, values: dict[tuple[Any, ...], float]) -> None:
        with self._lock:
            self._values = dict(values)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items(), key=lambda kv: tuple(map(str, kv[0])))
        if not items and not self.labelnames:
            items = [((), 0.0)]  # an unlabelled series exists from the start
        return [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, *labels: Any) -> None:
        with self._lock:
            counts, total = self._values.get(labels, ([0] * len(self.buckets), [0.0, 0]))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
            total[0] += value
            total[1] += 1
            self._values[labels] = (counts, total)

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted(self._values.items(), key=lambda kv: tuple(map(str, kv[0])))
            items = [(k, (list(c), list(t))) for k, (c, t) in items]
        if not items and not self.labelnames:
            items = [((), ([0] * len(self.buckets), [0.0, 0]))]
        for k, (counts, (total, n)) in items:
            for b, c in zip(self.buckets, counts):
                le = 'le="' + _num(float(b)) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {c}")
            le = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {n}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_num(float(total))}")
            out.append(f"{self.name}_count{_labels(self.labelnames, k)} {n}")
        return out


class ServeMetrics:
    """Every series ``adaptreg serve`` exposes at ``GET /metrics``."""

    def __init__(self) -> None:
        self.requests = Counter("adaptreg_http_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ("endpoint", "code"))
        self.rows = Counter("adaptreg_predict_rows_total",
                            "Rows predicted, by the task that answered ('unknown': routed to no task, or empty text).",
                            ("task",))
        self.latency = Histogram("adaptreg_predict_latency_seconds",
                                 "Time from a /predict request's arrival to its answer.", LATENCY_BUCKETS)
        self.batch_rows = Histogram("adaptreg_batch_rows", "Rows per inference batch.", ROW_BUCKETS)
        self.batch_requests = Histogram("adaptreg_batch_requests", "Requests per inference batch (above 1: micro-batched).",
                                        ROW_BUCKETS)
        self.inference = Histogram("adaptreg_inference_seconds", "Time one inference batch took.", LATENCY_BUCKETS)
        self.queue_rows = Gauge("adaptreg_queue_rows", "Rows waiting for inference.")
        self.rejected = Counter("adaptreg_rejected_rows_total", "Rows refused because the queue was full (503).")
        self.swaps = Counter("adaptreg_snapshot_swaps_total", "Hot swaps since start (new versions or router served).")
        self.build_failures = Counter("adaptreg_snapshot_build_failures_total",
                                      "Snapshots that failed to build (the previous one kept serving).")
        self.served = Gauge("adaptreg_served_version", "Version served per alias and task.", ("alias", "task"))
        self.router = Gauge("adaptreg_router_version", "Router version per alias (0: none).", ("alias",))
        self.cache_size = Gauge("adaptreg_adapter_cache_entries", "Adapter branches in memory.")
        self.cache_max = Gauge("adaptreg_adapter_cache_max_entries", "Most adapter branches kept (--max-adapters).")
        self.cache_events = Counter("adaptreg_adapter_cache_events_total", "Adapter cache hits, misses and evictions.",
                                    ("event",))

    def render(self, manager: Any = None) -> str:
        if manager is not None:
            snaps = manager.snapshots()
            self.served.replace({(s.alias, t): float(v) for s in snaps for t, v in s.versions.items() if v is not None})
            self.router.replace({(s.alias,): float(s.router_version or 0) for s in snaps})
            self.swaps.set(value=float(manager.swaps))
            self.build_failures.set(value=float(manager.build_failures))
            st = manager.cache.stats()
            self.cache_size.set(value=float(st["size"]))
            self.cache_max.set(value=float(st["max"]))
            self.cache_events.replace({("hit",): float(st["hits"]), ("miss",): float(st["misses"]),
                                       ("eviction",): float(st["evictions"])})
        out: list[str] = []
        for m in (self.requests, self.rows, self.latency, self.batch_rows, self.batch_requests, self.inference,
                  self.queue_rows, self.rejected, self.swaps, self.build_failures, self.served, self.router,
                  self.cache_size, self.cache_max, self.cache_events):
            out += m.header() + m.lines()
        return "\n".join(out) + "\n"
