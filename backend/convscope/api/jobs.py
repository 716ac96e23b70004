"""Long work as job resources: submit, poll progress, fetch the result, cancel.

Generic (no FastAPI here): a job is a function `fn(job) -> result` run on a
small thread pool. A `Job` is a `convscope.tasks.Task`: the function passes it
on as `task=job` to the library, which reports progress with `job.report(done,
total)` and raises `convscope.tasks.Cancelled` at its next checkpoint once
`job.should_stop()` is true. Finished jobs are kept for polling (the oldest are
forgotten first); too many unfinished jobs -> 429. Small work answered inside its
request (`run_inline`: an occlusion of few positions) counts like a job while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from convscope.errors import ConvscopeError, NotFoundError
from convscope.tasks import Cancelled

log = logging.getLogger("convscope.api.jobs")

# The client whose request is running (set by the API's security middleware); a job submitted
# without an explicit owner belongs to it. None outside a request: the server's own jobs.
current_client: ContextVar[str | None] = ContextVar("convscope_client", default=None)
_FROM_CONTEXT: Any = object()


def _owner(owner: str | None) -> str | None:
    """The owner given, or (by default) the requesting client (`current_client`)."""
    return current_client.get() if owner is _FROM_CONTEXT else owner


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class TooManyJobsError(ConvscopeError):
    """Too many unfinished jobs; the client should retry later."""

    status_code = 429


class ForbiddenJobError(ConvscopeError):
    """A client may read a shared job but not cancel it."""

    status_code = 403


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
    owner: str | None = None  # the client that started it (None: the server itself)
    shared: bool = False  # readable by every client (scans of shared folders); cancellable by its owner only
    _gate: InteractiveGate | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _future: Future[None] | None = field(default=None, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    # ---- for the job function -------------------------------------------------------
    def report(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = int(total)
        self.done = int(done)
        if self._gate is not None and not self._cancel.is_set():
            self._gate.yield_to_interactive()  # between two batches: let waiting clicks run first

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


class InteractiveGate:
    """Interactive requests in flight; jobs wait for them between their batches (at most `max_wait` s).

    `holding_model` tells whether the calling thread holds a model lock: a job inside one
    does not wait (the interactive request could not run before it lets go anyway)."""

    def __init__(self, max_wait: float = 5.0, holding_model: Callable[[], bool] | None = None) -> None:
        self.max_wait = max_wait
        self.holding_model = holding_model
        self._busy = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._busy += 1

    def leave(self) -> None:
        with self._cond:
            self._busy = max(0, self._busy - 1)
            if self._busy == 0:
                self._cond.notify_all()

    @property
    def busy(self) -> int:
        return self._busy

    def yield_to_interactive(self) -> None:
        if self._busy == 0 or self.max_wait <= 0:
            return
        if self.holding_model is not None and self.holding_model():
            return
        deadline = time.monotonic() + self.max_wait
        with self._cond:
            while self._busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


class JobManager:
    def __init__(
        self,
        workers: int = 1,
        max_active: int = 8,
        max_finished: int = 64,
        *,
        client_max_jobs: int | None = None,
        client_max_running: int | None = None,
        gate: InteractiveGate | None = None,
    ) -> None:
        self.workers = workers
        self.max_active = max_active
        self.max_finished = max_finished
        self.client_max_jobs = client_max_jobs
        self.client_max_running = client_max_running
        self.gate = gate
        self._executor = self._new_executor()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queues: OrderedDict[str | None, deque[Job]] = OrderedDict()  # queued jobs per owner
        self._served: dict[str | None, int] = {}  # owner -> the turn its last job started in
        self._inline: dict[str | None, int] = {}  # owner -> its work running inside requests (run_inline)
        self._turn = 0
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

    def submit(
        self,
        kind: str,
        fn: Callable[[Job], Any],
        total: int = 0,
        *,
        owner: str | None = _FROM_CONTEXT,
        shared: bool = False,
    ) -> Job:
        owner = _owner(owner)
        with self._lock:
            self._check_caps(owner)
            job = Job(id=secrets.token_urlsafe(12), kind=kind, fn=fn, total=total, owner=owner, shared=shared)
            job._gate = self.gate
            self._jobs[job.id] = job
            self._forget_old()
            self._queues.setdefault(owner, deque()).append(job)
            job._future = self._executor.submit(self._run_next)
        return job

    def run_inline(
        self, kind: str, fn: Callable[[Job], Any], total: int = 0, *, owner: str | None = _FROM_CONTEXT
    ) -> Any:
        """Run small work in the calling thread (the request's own) and return its result, counted
        as one of the client's jobs while it runs: 429 past the server's cap or the client's, and
        past `client_max_running` of the client's inline work at once (so a client firing many
        small requests in parallel cannot take every thread). Between batches it waits for
        interactive requests, as a job does (`Job.report`)."""
        owner = _owner(owner)
        with self._lock:
            self._check_caps(owner)
            running = self._inline.get(owner, 0)
            limit = self.client_max_running
            if owner is not None and limit is not None and running >= limit:
                raise TooManyJobsError(
                    f"you already have {running} {kind} requests being answered (the limit per client is "
                    f"{limit} at once); wait for one to finish"
                )
            self._inline[owner] = running + 1
        job = Job(id=f"inline-{secrets.token_urlsafe(6)}", kind=kind, fn=fn, total=total, owner=owner, state="running")
        job._gate = self.gate
        job.started_at = time.time()
        try:
            return fn(job)
        finally:
            with self._lock:
                left = self._inline.get(owner, 1) - 1
                if left > 0:
                    self._inline[owner] = left
                else:
                    self._inline.pop(owner, None)

    def inline_running(self, owner: str | None = _FROM_CONTEXT) -> int:
        """How much of `owner`'s work `run_inline` is running now."""
        owner = _owner(owner)
        with self._lock:
            return self._inline.get(owner, 0)

    # ---- per-client caps and fair order (issue 19) --------------------------------------------------
    def _check_caps(self, owner: str | None) -> None:
        """429 while the server shuts down, past the server's cap, or past this client's own; in-request
        work (`run_inline`) counts too (lock held)."""
        if self._closed:
            raise TooManyJobsError("the server is shutting down")
        active = [job for job in self._jobs.values() if not job.finished]
        count = len(active) + sum(self._inline.values())
        if count >= self.max_active:
            raise TooManyJobsError(
                f"{count} jobs are already queued or running (the limit is {self.max_active}); retry later"
            )
        if owner is not None and self.client_max_jobs is not None:
            mine = sum(1 for job in active if job.owner == owner) + self._inline.get(owner, 0)
            if mine >= self.client_max_jobs:
                raise TooManyJobsError(
                    f"you already have {mine} jobs queued or running (the limit per client is "
                    f"{self.client_max_jobs}); wait for one to finish or cancel one"
                )

    def _pick(self) -> Job | None:
        """The next queued job: the owner served least recently first (never served: in arrival order),
        skipping owners at their running cap (lock held)."""
        running: dict[str | None, int] = {}
        for job in self._jobs.values():
            if job.state == "running":
                running[job.owner] = running.get(job.owner, 0) + 1
        best: str | None = None
        best_turn: int | None = None
        for owner in list(self._queues):
            queue = self._queues[owner]
            while queue and queue[0].finished:
                queue.popleft()  # cancelled while queued
            if not queue:
                del self._queues[owner]
                continue
            limit = self.client_max_running
            if owner is not None and limit is not None and running.get(owner, 0) >= limit:
                continue
            turn = self._served.get(owner, -1)
            if best_turn is None or turn < best_turn:
                best, best_turn = owner, turn
        if best_turn is None:
            return None
        job = self._queues[best].popleft()
        if not self._queues[best]:
            del self._queues[best]
        self._turn += 1
        self._served[best] = self._turn
        if len(self._served) > 4096:  # forget owners with nothing queued
            self._served = {owner: turn for owner, turn in self._served.items() if owner in self._queues}
        job.state = "running"
        return job

    def _run_next(self) -> None:
        with self._lock:
            job = self._pick()
        if job is not None:
            self._run(job)
            with self._lock:  # an owner held back by its running cap may have queued work now
                waiting = any(self._queues.values()) and not self._closed
            if waiting:
                with contextlib.suppress(RuntimeError):  # the executor is shutting down
                    self._executor.submit(self._run_next)

    def visible(self, job: Job, client: str | None) -> bool:
        return job.shared or job.owner is None or job.owner == client

    def get_for(self, job_id: str, client: str | None) -> Job:
        """A job this client may read (another client's job is answered as unknown)."""
        job = self.get(job_id)
        if not self.visible(job, client):
            raise NotFoundError(f"unknown job {job_id!r}")
        return job

    def list_for(self, client: str | None) -> list[Job]:
        """This client's jobs, and the server's own (the start-up scan)."""
        return [job for job in self.list() if job.owner == client or job.owner is None]

    def cancel_for(self, job_id: str, client: str | None) -> Job:
        job = self.get_for(job_id, client)
        if job.owner != client:
            raise ForbiddenJobError(f"job {job_id!r} was started by another client or the server; only it may cancel")
        return self.cancel(job_id)

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
        job._ended.set()

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
        with self._lock:
            queued = job.state == "queued"
        if queued:  # its executor slot then runs the next job in turn, or nothing
            self._finish(job, "cancelled")
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        job = self.get(job_id)
        job._ended.wait(timeout)
        return job

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.finished:
                self.cancel(job.id)
        self._executor.shutdown(wait=True, cancel_futures=True)
