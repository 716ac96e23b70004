"""What the app holds while it runs: settings, models, uploads, jobs and caches."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cachetools import LRUCache

from convscope.api.caching import ResponseCache
from convscope.api.coalesce import Coalescer
from convscope.api.jobs import InteractiveGate, JobManager
from convscope.api.metrics import Metrics
from convscope.api.pool import ModelPool
from convscope.api.settings import Settings
from convscope.api.store import ImageStore
from convscope.images import PreparedImage

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map (`cachetools.LRUCache` behind a lock)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: LRUCache[K, V] = LRUCache(maxsize=max(1, max_entries))
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = make()  # outside the lock: making may be slow
        if self.max_entries > 0:
            with self._lock:
                self._items[key] = value
        return value


@dataclass
class AppState:
    settings: Settings
    pool: ModelPool
    store: ImageStore
    jobs: JobManager
    responses: ResponseCache
    prepared: LRU[tuple[str, str], PreparedImage]
    metrics: Metrics = field(default_factory=Metrics)
    projections: Coalescer = field(default_factory=Coalescer)  # the projection batching queues (api/coalesce.py)
    on_load_failed: list[Callable[[], None]] = field(default_factory=list)
    _loading: threading.Thread | None = field(default=None, repr=False)
    _start_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        """Start loading the models in the background (once per app, however often the app starts)."""
        with self._start_lock:
            self.jobs.open()
            if self._loading is None:
                self._loading = threading.Thread(target=self._load, name="convscope-load", daemon=True)
                self._loading.start()

    def _load(self) -> None:
        self.pool.load()
        if self.pool.state == "failed":
            for callback in self.on_load_failed:
                callback()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancel the jobs, and let a load in progress finish (a thread killed inside torch at exit aborts)."""
        self.jobs.shutdown()
        if self._loading is not None:
            self._loading.join(timeout)

    @classmethod
    def build(cls, settings: Settings, pool: ModelPool) -> AppState:
        metrics = Metrics()
        return cls(
            settings=settings,
            pool=pool,
            store=ImageStore(settings.store_max_images, settings.store_max_bytes),
            jobs=JobManager(
                settings.job_workers,
                settings.max_active_jobs,
                settings.max_finished_jobs,
                client_max_jobs=settings.client_max_jobs,
                client_max_running=settings.client_max_running_jobs,
                gate=InteractiveGate(settings.interactive_wait_s, holding_model=pool.holds_a_model_lock),
            ),
            responses=ResponseCache(settings.response_cache_entries),
            prepared=LRU(settings.prepared_cache_entries),
            metrics=metrics,
            projections=Coalescer(settings.projection_window_ms, settings.projection_batch_seeds, metrics),
        )
