from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from convscope.api.deps import EngineDep, PreparedDep, StateDep
from convscope.api.jobs import Job
from convscope.api.openapi import body_examples
from convscope.api.routes.common import errors
from convscope.api.routes.jobs import accepted
from convscope.api.schemas import JobResponse, OcclusionRequest, OcclusionResponse
from convscope.engine import Engine
from convscope.engine.occlusion import occlude, occlusion_positions_total, occlusion_response
from convscope.errors import InvalidRequestError
from convscope.tasks import Task

router = APIRouter(tags=["occlusion"])


def _positions(engine: Engine, request: OcclusionRequest) -> int:
    """Check the request before any work (422 / 404) and count the occluder positions."""
    positions = occlusion_positions_total(engine.input_size, request.size, request.stride)
    if request.target is not None and request.target >= engine.model.num_classes:
        raise InvalidRequestError(f"target class {request.target} is out of range (0..{engine.model.num_classes - 1})")
    if request.layer is not None:
        engine.layer(request.layer)  # 404 for an unknown layer
    if request.approx is not None and request.method == "dense":
        raise InvalidRequestError("approx needs the incremental method (or auto), not dense")
    return positions


@router.post(
    "/models/{model}/images/{image_id}/occlusion",
    response_model=OcclusionResponse,
    summary="occlusion sensitivity (paper Fig. 7; definition: docs/architecture.md, Occlusion); many positions -> 202 and a job to poll",
    responses={
        202: {"model": JobResponse, "description": "started as a job: poll its `url` (also in Location)"},
        **errors(400, 404, 422, 429, 503),
    },
    openapi_extra=body_examples(
        defaults={},
        coarse={"size": 64, "stride": 32},
        target_and_layer={"target": 281, "layer": "conv_head"},
        exact_incremental={"size": 16, "stride": 8, "method": "incremental"},
        approximate={"size": 16, "stride": 4, "approx": 0.5, "adaptive": 0.25},
    ),
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
            "use a larger stride or occluder"
        )

    def run(task: Task | None = None) -> dict[str, Any]:
        asked = request.model_dump(include={"size", "stride", "target", "layer", "method", "approx", "adaptive"})
        result = occlude(engine, prepared, batch_size=settings.occlusion_batch_size, task=task, **asked)
        return dict(occlusion_response(result))

    if positions <= settings.occlusion_job_threshold:
        return state.jobs.run_inline("occlusion", run, total=positions)  # counted against the caps

    def work(job: Job) -> dict[str, Any]:
        return run(job)

    job = state.jobs.submit("occlusion", work, total=positions)
    return accepted(job)
