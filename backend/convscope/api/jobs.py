"""Long work as job resources: submit, poll progress, fetch the result, cancel.

Generic (no FastAPI here): a job is a function `fn(job) -> result` run on a
small thread pool. A `Job` is a `convscope.tasks.Task`: the function passes it
on as `task=job` to the library, which reports progress with `job.report(done,
total)` and raises `convscope.tasks.Cancelled` at its next checkpoint once
`job.should_stop()` is true. Finished jobs are kept for polling (the oldest are
forgotten first); too many unfinished jobs -> 429.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from convscope.errors import ConvscopeError, NotFoundError
from convscope.tasks import Cancelled

log = logging.getLogger("convscope.api.jobs")

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class TooManyJobsError(ConvscopeError):
    """Too many unfinished jobs; the client should retry later."""

    status_code = 429


@dataclass
class Job:
    """One unit of long work; implements `convscope.tasks.Task` (`report`, `should_stop`)."""

    id: str
    kind: str
    fn: Callable[[Job], Any]
    total: int = 0
    done: int = 0
    state: JobState = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    error_status: int | None = None
    cancel_requested: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _future: Future[None] | None = field(default=None, repr=False)

    # ---- for the job function -------------------------------------------------------
    def report(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = int(total)
        self.done = int(done)

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` once a stop was asked for (for job code outside the library)."""
        if self._cancel.is_set():
            raise Cancelled(self.done, self.total, self.kind)

    # ---- for readers ------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        if self.total <= 0:
            return 0.0
        return min(1.0, self.done / self.total)


class JobManager:
    def __init__(self, workers: int = 1, max_active: int = 8, max_finished: int = 64) -> None:
        self.workers = workers
        self.max_active = max_active
        self.max_finished = max_finished
        self._executor = self._new_executor()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="convscope-job")

    def open(self) -> None:
        """Accept jobs again after `shutdown` (an app whose lifespan runs twice)."""
        with self._lock:
            if self._closed:
                self._executor = self._new_executor()
                self._closed = False

    def submit(self, kind: str, fn: Callable[[Job], Any], total: int = 0) -> Job:
        with self._lock:
            if self._closed:
                raise TooManyJobsError("the server is shutting down")
            active = sum(1 for job in self._jobs.values() if not job.finished)
            if active >= self.max_active:
                raise TooManyJobsError(
                    f"{active} jobs are already queued or running (the limit is {self.max_active}); retry later"
                )
            job = Job(id=secrets.token_urlsafe(12), kind=kind, fn=fn, total=total)
            self._jobs[job.id] = job
            self._forget_old()
            job._future = self._executor.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        if job.should_stop():
            self._finish(job, "cancelled")
            return
        job.state = "running"
        job.started_at = time.time()
        try:
            result = job.fn(job)
        except Exception as exc:
            if job.should_stop() or isinstance(exc, Cancelled):
                self._finish(job, "cancelled")  # whatever the function raised on its way out
            elif isinstance(exc, ConvscopeError):
                job.error, job.error_status = str(exc), exc.status_code
                self._finish(job, "failed")
            else:
                log.exception("job %s (%s) failed", job.id, job.kind)
                job.error, job.error_status = f"internal error: {type(exc).__name__}", 500
                self._finish(job, "failed")
        else:
            if job.should_stop():
                self._finish(job, "cancelled")
            else:
                job.result = result
                self._finish(job, "succeeded")

    def _finish(self, job: Job, state: JobState) -> None:
        with self._lock:
            job.finished_at = time.time()
            job.state = state
            self._forget_old()

    def _forget_old(self) -> None:
        """Keep the newest `max_finished` finished jobs (call with the lock held)."""
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - self.max_finished)]:
            del self._jobs[job_id]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"unknown job {job_id!r}")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop. A queued job is cancelled at once, a running one at its next check."""
        job = self.get(job_id)
        if job.finished:
            return job
        job.cancel_requested = True
        job._cancel.set()
        future = job._future
        if future is not None and future.cancel():
            self._finish(job, "cancelled")
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        job = self.get(job_id)
        future = job._future
        if future is not None:
            with contextlib.suppress(Exception):  # cancelled futures raise CancelledError
                future.result(timeout)
        return job

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.finished:
                self.cancel(job.id)
        self._executor.shutdown(wait=True, cancel_futures=True)
