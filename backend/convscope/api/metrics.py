"""Prometheus metrics for `GET /api/metrics` (text format, what operators scrape).

One registry per app (`Metrics`), never the process-wide default, so several apps in one process
keep their own counts. `MetricsMiddleware` counts requests and times them per route template
(`/api/models/{model}/images/{image_id}/projection`, never the raw path: bounded label values);
the projection queue (api/coalesce.py) records each batch's seeds and requests, how long each request
waited for its batch and how long the model worked on it; jobs and engine counters are read when scraped.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from convscope.api.state import AppState

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENGINE_COUNTERS = (
    "forward_passes",
    "inference_passes",
    "backward_passes",
    "cone_passes",
    "cache_hits",
    "shared_passes",  # forward passes that recorded several images at once (Engine.record_together)
    "shared_images",  # images those passes recorded
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "convscope_http_requests",
            "HTTP requests answered, by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "convscope_http_request_duration_seconds",
            "time to answer an HTTP request, by method and route template",
            ("method", "route"),
            registry=self.registry,
        )

        def per_model(name: str, text: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, text, ("model",), buckets=buckets, registry=self.registry)

        self.batch_sizes = per_model(
            "convscope_projection_batch_size",
            "seeds computed per coalesced projection batch (requests of one window, every layer and image; "
            "a seed asked for twice and rendered PNGs already cached not counted)",
            BATCH_BUCKETS,
        )
        self.batch_requests = per_model(
            "convscope_projection_batch_requests",
            "projection requests (single or batch endpoint) answered by one coalesced batch",
            BATCH_BUCKETS,
        )
        self.queue_wait = per_model(
            "convscope_projection_queue_wait_seconds",
            "time a projection request waited for its batch to start (the window, then a free engine slot)",
            SECONDS_BUCKETS,
        )
        self.model_seconds = per_model(
            "convscope_projection_model_seconds",
            "time the engine spent on one coalesced batch (Engine.project_many calls, PNG encoding not counted)",
            SECONDS_BUCKETS,
        )

    def watch(self, state: AppState) -> None:
        """Read the jobs' and engines' numbers from `state` at every scrape."""
        self.registry.register(_StateCollector(lambda: state))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], AppState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        jobs = GaugeMetricFamily("convscope_jobs", "jobs by state (queued: the job queue's length)", labels=["state"])
        by_state: dict[str, int] = {"queued": 0, "running": 0}
        for job in state.jobs.list():
            by_state[job.state] = by_state.get(job.state, 0) + 1
        for name, count in sorted(by_state.items()):
            jobs.add_metric([name], count)
        yield jobs
        engines = state.pool.engines() if state.pool.state == "ready" else []
        for stat in ENGINE_COUNTERS:
            family = CounterMetricFamily(
                f"convscope_engine_{stat}", f"engine {stat.replace('_', ' ')} since start", labels=["model"]
            )
            for engine in engines:
                family.add_metric([engine.name], getattr(engine.stats, stat))
            yield family
        shared = HistogramMetricFamily(
            "convscope_engine_shared_pass_images",
            "images recorded per shared forward pass (several images in one batched pass; Engine.record_together)",
            labels=["model"],
        )
        for engine in engines:
            sizes = dict(engine.stats.shared_pass_sizes)  # a copy: the engine may count on meanwhile
            buckets = [(str(float(le)), sum(n for size, n in sizes.items() if size <= le)) for le in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(sizes.values())))
            shared.add_metric([engine.name], buckets, sum_value=sum(size * n for size, n in sizes.items()))
        yield shared
        cache = GaugeMetricFamily("convscope_engine_cache_bytes", "bytes of recorded passes kept", labels=["model"])
        limit = GaugeMetricFamily("convscope_engine_cache_limit_bytes", "bound on the cache's bytes", labels=["model"])
        records = GaugeMetricFamily("convscope_engine_cache_records", "recorded passes kept", labels=["model"])
        for engine in engines:
            memory = engine.memory()
            cache.add_metric([engine.name], memory.bytes)
            limit.add_metric([engine.name], memory.limit_bytes)
            records.add_metric([engine.name], memory.records)
        yield from (cache, limit, records)


class RouteTemplates:
    """Path -> its template among the documented paths (`other` for any path outside them). The
    templates are read once, at the first request (after every router was added); literal
    segments win over parameters (`/api/scans/roots` before `/api/scans/{scan_id}`)."""

    def __init__(self, templates: Callable[[], Iterable[str]]) -> None:
        self._templates = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None
        self._lock = threading.Lock()

    def __call__(self, path: str) -> str:
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    ordered = sorted(self._templates(), key=lambda t: (t.count("{"), -len(t)))
                    self._compiled = [(compile_path(t)[0], t) for t in ordered]
        return next((template for regex, template in self._compiled if regex.match(path)), "other")


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (`other` where no route matched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = RouteTemplates(templates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = self.route_of(str(scope.get("path", "")))
            method = str(scope.get("method", ""))
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(method, route, str(status)).inc()
