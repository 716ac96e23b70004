"""The generic job manager: results, progress, failures, cancellation, bounds."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from convscope.api.jobs import Job, JobManager, TooManyJobsError
from convscope.errors import InvalidRequestError


@pytest.fixture
def manager():  # type: ignore[no-untyped-def]
    jobs = JobManager(workers=1, max_active=3, max_finished=4)
    yield jobs
    jobs.shutdown()


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_job_reports_progress_and_its_result(manager: JobManager) -> None:
    step = threading.Event()
    seen: list[float] = []

    def work(job: Job) -> dict[str, int]:
        for done in range(1, 5):
            job.report(done, 4)
            seen.append(job.progress)
            step.wait(5)
            step.clear()
        return {"answer": 42}

    job = manager.submit("test", work)
    for _ in range(4):
        wait_until(lambda: job.state == "running" and not step.is_set())
        step.set()
    manager.wait(job.id, 10)
    assert job.state == "succeeded"
    assert job.result == {"answer": 42}
    assert job.progress == 1.0 and (job.done, job.total) == (4, 4)
    assert seen == [0.25, 0.5, 0.75, 1.0]
    assert job.started_at is not None and job.finished_at is not None and job.finished_at >= job.started_at


def test_a_client_error_fails_the_job_with_its_status(manager: JobManager) -> None:
    def work(job: Job) -> None:
        raise InvalidRequestError("stride must be positive")

    job = manager.wait(manager.submit("test", work).id, 10)
    assert (job.state, job.error, job.error_status) == ("failed", "stride must be positive", 422)


def test_a_bug_fails_the_job_without_leaking_details(manager: JobManager) -> None:
    def work(job: Job) -> None:
        raise RuntimeError("secret internals")

    job = manager.wait(manager.submit("test", work).id, 10)
    assert job.state == "failed" and job.error_status == 500
    assert job.error is not None and "secret" not in job.error


def test_cancel_a_running_and_a_queued_job(manager: JobManager) -> None:
    started = threading.Event()

    def slow(job: Job) -> str:
        started.set()
        while not job.should_stop():
            time.sleep(0.01)
        job.check_cancelled()
        return "not reached"

    running = manager.submit("test", slow)
    queued = manager.submit("test", slow)
    assert started.wait(5)
    assert manager.cancel(queued.id).state == "cancelled"  # never started
    manager.cancel(running.id)
    assert running.cancel_requested
    manager.wait(running.id, 10)
    assert running.state == "cancelled" and running.result is None
    assert manager.cancel(running.id).state == "cancelled"  # idempotent


def test_too_many_active_jobs_is_429_and_old_finished_jobs_are_forgotten(manager: JobManager) -> None:
    gate = threading.Event()
    blocked = [manager.submit("test", lambda job: gate.wait(10)) for _ in range(3)]
    with pytest.raises(TooManyJobsError) as error:
        manager.submit("test", lambda job: None)
    assert error.value.status_code == 429
    gate.set()
    for job in blocked:
        manager.wait(job.id, 10)
    finished = [manager.wait(manager.submit("test", lambda job: 1).id, 10) for _ in range(5)]
    kept = {job.id for job in manager.list()}
    assert len(kept) == 4
    assert finished[-1].id in kept and blocked[0].id not in kept


def test_inline_work_is_bounded_per_client_counted_as_a_job_and_always_released() -> None:
    """`run_inline` (an occlusion answered in its request): at most `client_max_running` of one
    client's at once, counted against the caps while it runs, and its slot freed even when it fails."""
    jobs = JobManager(workers=1, max_active=8, client_max_jobs=3, client_max_running=2)
    gate = threading.Event()
    threads = [
        threading.Thread(target=jobs.run_inline, args=("occlusion", lambda job: gate.wait(10)), kwargs={"owner": "a"})
        for _ in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: jobs.inline_running("a") == 2)
        with pytest.raises(TooManyJobsError, match="limit per client is 2 at once"):
            jobs.run_inline("occlusion", lambda job: None, owner="a")
        assert jobs.run_inline("occlusion", lambda job: job.total, total=5, owner="b") == 5  # another client
        jobs.submit("test", lambda job: gate.wait(10), owner="a")  # 2 inline + 1 job: a's cap of 3
        with pytest.raises(TooManyJobsError, match="3 jobs queued or running"):
            jobs.submit("test", lambda job: None, owner="a")
    finally:
        gate.set()
        for thread in threads:
            thread.join(10)
    assert jobs.inline_running("a") == 0

    def fails(job: Job) -> None:
        raise InvalidRequestError("bad target")

    for _ in range(3):  # more than the limit: each failure gave its slot back
        with pytest.raises(InvalidRequestError):
            jobs.run_inline("occlusion", fails, owner="a")
    assert jobs.inline_running("a") == 0
    jobs.shutdown()


def test_unknown_job_is_404(client: TestClient) -> None:
    for method in ("get", "delete"):
        response = getattr(client, method)("/api/jobs/not-a-job")
        assert response.status_code == 404
        assert "not-a-job" in response.json()["detail"]
    assert client.get("/api/jobs").status_code == 200
