from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from convscope.api.deps import EngineDep, PreparedDep, StateDep
from convscope.api.jobs import Job
from convscope.api.routes.common import errors
from convscope.api.routes.jobs import job_response, job_url
from convscope.api.schemas import JobResponse, OcclusionRequest, OcclusionResponse
from convscope.engine import Engine
from convscope.errors import ConvscopeError, InvalidRequestError

router = APIRouter(tags=["occlusion"])


class OcclusionUnavailableError(ConvscopeError):
    status_code = 501


def _positions(engine: Engine, request: OcclusionRequest) -> int:
    side = engine.input_size
    if request.size > side:
        raise InvalidRequestError(f"occluder size {request.size} is larger than the {side}×{side} image")
    if request.target is not None and request.target >= engine.model.num_classes:
        raise InvalidRequestError(f"target class {request.target} is out of range (0..{engine.model.num_classes - 1})")
    if request.layer is not None:
        engine.layer(request.layer)  # 404 for an unknown layer
    per_side = (side - request.size) // request.stride + 1
    return per_side * per_side


@router.post(
    "/models/{model}/images/{image_id}/occlusion",
    response_model=OcclusionResponse,
    summary="occlusion sensitivity (paper Fig. 7, DESIGN §4); many positions -> 202 and a job to poll",
    responses={
        202: {"model": JobResponse, "description": "started as a job: poll its `url` (also in Location)"},
        **errors(404, 422, 429, 503),
    },
)
def occlusion(
    state: StateDep,
    engine: EngineDep,
    prepared: PreparedDep,
    body: Annotated[OcclusionRequest | None, Body()] = None,
) -> Any:
    request = body or OcclusionRequest()
    positions = _positions(engine, request)
    settings = state.settings
    if positions > settings.occlusion_max_positions:
        raise InvalidRequestError(
            f"{positions:,} occluder positions are more than the limit of {settings.occlusion_max_positions:,}; "
            "use a larger stride"
        )
    try:
        from convscope.engine.occlusion import occlude, occlusion_response
    except ImportError:
        raise OcclusionUnavailableError("occlusion is not available in this build") from None

    def run(progress: Any = None, should_stop: Any = None) -> dict[str, Any]:
        result = occlude(
            engine,
            prepared,
            size=request.size,
            stride=request.stride,
            target=request.target,
            layer=request.layer,
            batch_size=settings.occlusion_batch_size,
            progress=progress,
            should_stop=should_stop,
        )
        return dict(occlusion_response(result))

    if positions <= settings.occlusion_job_threshold:
        return run()

    def work(job: Job) -> dict[str, Any]:
        result = run(progress=job.report, should_stop=job.should_stop)
        job.check_cancelled()
        return result

    job = state.jobs.submit("occlusion", work, total=positions)
    return JSONResponse(job_response(job).model_dump(mode="json"), status_code=202, headers={"Location": job_url(job)})
