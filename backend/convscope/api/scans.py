"""The server's scans: the library on disk, the jobs writing it, and the montage jobs.

No routes here (they are in `convscope.api.routes.scans`); routes get the service as the
typed dependency `convscope.api.deps.ScanServiceDep`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI

from convscope.api.jobs import Job
from convscope.api.state import AppState
from convscope.errors import ConvscopeError
from convscope.scan.library import SAMPLES_SCAN, ScanLibrary

log = logging.getLogger("convscope.api.scans")


def scan_url(model: str, scan_id: str) -> str:
    return f"/api/models/{quote(model, safe='')}/scans/{quote(scan_id, safe='')}"


class ScanService:
    """The app's scans: the library on disk and the jobs writing it."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        settings = state.settings
        self.library = ScanLibrary(settings.scan_dir, settings.scan_roots)
        self._jobs: dict[tuple[str, str], Job] = {}
        self._montages: dict[str, Job] = {}
        self._lock = threading.Lock()

    def montage(self, key: str, work: Callable[[Job], Any], channels: int) -> Job:
        """Start the job rendering a montage, or return the one already rendering it."""
        with self._lock:
            job = self._montages.get(key)
            if job is None or job.finished:
                job = self._montages[key] = self.state.jobs.submit("montage", work, total=channels, shared=True)
            return job

    def job_for(self, model: str, scan_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get((model, scan_id))
        return job if job is not None and not job.finished else None

    def submit(self, model: str, scan_id: str, work: Any) -> Job:
        """Start a scan job, or return the one already writing this scan."""
        with self._lock:
            job = self._jobs.get((model, scan_id))
            if job is not None and not job.finished:
                return job
            job = self.state.jobs.submit("scan", work, shared=True)  # scans are shared; any client may poll
            self._jobs[(model, scan_id)] = job
            return job

    def scan_job(self, model: str, scan_id: str, source_factory: Any, **options: Any) -> Any:
        from convscope.scan.scanner import run_scan

        library, pool, settings = self.library, self.state.pool, self.state.settings

        def work(job: Job) -> dict[str, Any]:
            while not pool.wait(0.5):
                job.check_cancelled()
            engine = pool.get(model)
            source = source_factory()
            job.report(0, len(source.paths))
            result = run_scan(
                engine,
                source,
                library.store(model, scan_id).directory,
                batch_size=settings.scan_batch_size,
                resume=True,
                wait_lock=True,
                task=job,
                **options,
            )
            data = result.to_dict()
            data.pop("directory", None)
            return {"scan": scan_id, "model": model, "url": scan_url(model, scan_id), **data}

        return work

    def start_samples_scan(self) -> Job | None:
        from convscope.scan.scanner import samples_source

        model = self.state.settings.default_model
        work = self.scan_job(
            model,
            SAMPLES_SCAN,
            samples_source,
            replace=True,
            extra={"label": "the bundled sample photos"},
        )
        try:
            return self.submit(model, SAMPLES_SCAN, work)
        except ConvscopeError as exc:
            log.warning("cannot start the sample scan: %s", exc)
            return None


def install(app: FastAPI, state: AppState) -> ScanService:
    """Add the scan routes' service to the app (call from `create_app`)."""
    service = ScanService(state)
    app.state.scans = service
    return service


def on_startup(app: FastAPI) -> None:
    """Start the background scan of the sample photos (call from the lifespan)."""
    service: ScanService = app.state.scans
    if service.state.settings.scan_on_startup:
        service.start_samples_scan()
