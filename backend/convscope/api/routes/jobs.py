from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from convscope.api.deps import ClientDep, StateDep
from convscope.api.jobs import Job
from convscope.api.routes.common import errors
from convscope.api.schemas import ErrorResponse, JobError, JobResponse

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(description="id from the 202 answer that started the job", max_length=200)]


def job_url(job: Job) -> str:
    return f"/api/jobs/{job.id}"


def accepted(job: Job, **headers: str) -> JSONResponse:
    """`202 Accepted` with the job (and its URL in `Location`): how every route answers long work."""
    body = job_response(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": job_url(job), **headers})


# what a JobResponse copies from the Job as it is
JOB_FIELDS = (
    "id",
    "kind",
    "state",
    "progress",
    "done",
    "total",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
)


def job_response(job: Job) -> JobResponse:
    error = None
    if job.error is not None:
        error = JobError(status=job.error_status or 500, detail=job.error)
    fields = {name: getattr(job, name) for name in JOB_FIELDS}
    return JobResponse(
        **fields,
        url=job_url(job),
        result=job.result if job.state == "succeeded" else None,
        error=error,
    )


@router.get("/jobs", response_model=list[JobResponse], summary="your jobs kept by the server, oldest first")
async def list_jobs(state: StateDep, client: ClientDep) -> list[JobResponse]:
    return [job_response(job) for job in state.jobs.list_for(client)]


@router.get(
    "/jobs/{job_id}",
    response_model=JobResponse,
    summary="state, progress and (once succeeded) result of a job",
    responses=errors(404, 422),
)
async def get_job(state: StateDep, client: ClientDep, job_id: JobId) -> JobResponse:
    return job_response(state.jobs.get_for(job_id, client))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobResponse,
    summary="cancel one of your jobs: a queued one at once, a running one at its next progress step",
    responses={**errors(404, 422), 403: {"model": ErrorResponse, "description": "a shared job you did not start"}},
)
async def cancel_job(state: StateDep, client: ClientDep, job_id: JobId) -> JobResponse:
    return job_response(state.jobs.cancel_for(job_id, client))
