"""The server's feature visualisations: the unit cache on disk and one job per distinct request.

No routes here (they are in `convscope.api.routes.visualize`); routes get the service as the
typed dependency `convscope.api.deps.FeatvisDep`.
"""

from __future__ import annotations

import threading
from typing import Any

from convscope.api.jobs import Job
from convscope.api.state import AppState


class FeatvisService:
    """The app's feature visualisations: one cache (`CONVSCOPE_FEATVIS_DIR`), one job per distinct request."""

    def __init__(self, state: AppState) -> None:
        from convscope.featvis.cache import FeatvisCache, default_cache_dir

        directory = getattr(state.settings, "featvis_dir", None) or default_cache_dir()
        self.cache = FeatvisCache(directory)
        self.state = state
        self._jobs: dict[tuple[Any, ...], Job] = {}
        self._lock = threading.Lock()

    def submit(self, key: tuple[Any, ...], work: Any, total: int) -> Job:
        """Start the job for `key`, or return the one already running it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.finished:
                return job
            job = self.state.jobs.submit("visualization", work, total=total)
            self._jobs = {k: v for k, v in self._jobs.items() if not v.finished}
            self._jobs[key] = job
            return job
