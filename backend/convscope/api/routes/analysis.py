"""The paper's studies over HTTP (issue 8): invariance curves (Fig. 5), correspondence Δ
(Fig. 8 / Table 1) and filter diagnostics (Fig. 6).

Studies that need many forward passes run as jobs: the POST answers 202 with the
job (also in `Location`); poll `GET /api/jobs/{id}` until `state` is `succeeded`
and read `result`. Every request is checked before a job starts, so a bad layer,
image or box is a 404 / 422 at once. The cheap parts (the filters, their mosaic,
a transformed copy, the demo annotation) answer directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from convscope.api.budget import check_analysis_memory
from convscope.api.caching import cache_key, png_response
from convscope.api.deps import ClientDep, EngineDep, StateDep, prepare, resolve_image
from convscope.api.jobs import Job
from convscope.api.routes.common import MODEL_ERRORS, job_route, png_route
from convscope.api.routes.jobs import accepted
from convscope.api.schemas import (
    CorrespondenceRequest,
    CorrespondenceResponse,
    DeadChannelsRequest,
    DeadChannelsResponse,
    FiltersResponse,
    InvarianceRequest,
    InvarianceResponse,
)
from convscope.api.state import AppState
from convscope.engine.render import png_bytes
from convscope.errors import InvalidRequestError

router = APIRouter(tags=["analyses"])

MAX_PASSES = 4096  # forward passes one study request may ask for


# ---- helpers ------------------------------------------------------------------------------------------
def _check_passes(passes: int) -> None:
    if passes > MAX_PASSES:
        raise InvalidRequestError(
            f"this request needs {passes:,} forward passes; the limit is {MAX_PASSES:,} (fewer images, steps or draws)"
        )


def _batch(state: AppState) -> int:
    return max(1, min(32, state.settings.occlusion_batch_size))


def _analysis_job(
    state: AppState, kind: str, total: int, run: Callable[..., Any], schema: Callable[[Any], BaseModel]
) -> JSONResponse:
    """Start `run(batch_size=, task=job)` as a job (202); its result is `schema(what run returned)`'s JSON."""

    def work(job: Job) -> dict[str, Any]:
        return schema(run(batch_size=_batch(state), task=job)).model_dump(mode="json")

    return accepted(state.jobs.submit(kind, work, total=total))


# ---- invariance ---------------------------------------------------------------------------------------
@job_route(
    router,
    "/models/{model}/analyses/invariance",
    "invariance curves (paper Fig. 5) for one or more images, as a job",
    examples={
        "translation": {"images": ["chelsea"], "transform": "translation", "steps": 7},
        "rotation": {"images": ["chelsea", "coffee"], "transform": "rotation", "start": 0, "stop": 350, "steps": 36},
    },
)
def invariance_job(
    state: StateDep, engine: EngineDep, client: ClientDep, body: InvarianceRequest | None = None
) -> JSONResponse:
    from convscope.analysis.features import first_conv_layer, resolve_feature
    from convscope.analysis.invariance import invariance, transform_values

    request = body or InvarianceRequest()
    values = transform_values(request.transform, request.start, request.stop, request.steps)
    if request.edge == "wrap" and request.transform != "translation":
        raise InvalidRequestError("edge 'wrap' (circular shift) applies to translation only")
    if request.target is not None and request.target >= engine.model.num_classes:
        raise InvalidRequestError(f"target class {request.target} is out of range (0..{engine.model.num_classes - 1})")
    resolve_feature(engine, request.low_layer, default=first_conv_layer(engine))
    resolve_feature(engine, request.high_layer)
    low = request.low_layer or first_conv_layer(engine)
    check_analysis_memory(state.settings, engine, [low, request.high_layer or "penultimate"], _batch(state))
    sources = [resolve_image(state, image_id, client) for image_id in request.images]
    total = len(sources) * (len(values) + 1)
    _check_passes(total)

    run = partial(
        invariance,
        engine,
        [(source.id, source.image) for source in sources],
        request.transform,
        values=values,
        low_layer=request.low_layer,
        high_layer=request.high_layer,
        edge=request.edge,
        target=request.target,
    )
    return _analysis_job(state, "invariance", total, run, InvarianceResponse.from_result)


@png_route(
    router,
    "/models/{model}/analyses/invariance/preview.png",
    "one transformed copy of an image, as the invariance study feeds it to the model (S×S PNG)",
    "the transformed S×S model input",
)
def invariance_preview(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    client: ClientDep,
    image: Annotated[str, Query(max_length=200, description="sample id or upload id")],
    transform: Annotated[Literal["translation", "scale", "rotation"], Query()] = "translation",
    value: Annotated[float, Query(ge=-10_000, le=10_000)] = 0.0,
    edge: Annotated[Literal["fill", "wrap"], Query()] = "fill",
) -> Response:
    from convscope.analysis.invariance import transform_values, transformed_image

    source = resolve_image(state, image, client)
    transform_values(transform, value, value, 1)  # the same checks as the study

    def make() -> tuple[bytes, dict[str, str]]:
        mean = engine.model.mean
        fill = (round(255 * mean[0]), round(255 * mean[1]), round(255 * mean[2]))
        copy = transformed_image(source.image, engine.input_size, transform, value, fill, edge, engine.model.crop_pct)
        return png_bytes(copy), {}

    key = cache_key("invariance-preview", engine.name, source.id, id(source.image), transform, value, edge)
    return png_response(request, state.responses.render(key, make), source.cache_control)


# ---- correspondence -------------------------------------------------------------------------------------
@router.get(
    "/models/{model}/analyses/correspondence/demo",
    summary="the bundled eyes-and-nose annotation of the sample photos with faces, in this model's S×S frame",
    responses=MODEL_ERRORS,
)
def correspondence_demo(engine: EngineDep) -> dict[str, Any]:
    from convscope.analysis.correspondence import demo_annotation

    return demo_annotation(engine.input_size)


@job_route(
    router,
    "/models/{model}/analyses/correspondence",
    "correspondence Δ per part and for random boxes (paper Fig. 8 / Table 1), as a job",
    examples={"eyes": {"images": ["chelsea", "coffee"], "parts": {"left_eye": [[81, 39, 14, 9], [84, 56, 24, 14]]}}},
)
def correspondence_job(
    state: StateDep, engine: EngineDep, client: ClientDep, body: CorrespondenceRequest
) -> JSONResponse:
    from convscope.analysis.correspondence import CorrespondenceResult, correspondence, parse_parts
    from convscope.analysis.features import resolve_feature

    annotation: dict[str, Any] = {"parts": body.parts, "size": body.size or engine.input_size}
    names, parts = parse_parts(annotation, body.images, engine.input_size)
    layers = body.layers or [engine.last_conv_layer(), "penultimate"]
    for layer in layers:
        resolve_feature(engine, layer)
    check_analysis_memory(state.settings, engine, layers, _batch(state))
    sources = [resolve_image(state, image_id, client) for image_id in names]
    total = len(sources) * (1 + len(parts) * (1 + body.draws))
    _check_passes(total)

    def run(**options: Any) -> CorrespondenceResult:
        prepared = [(source.id, prepare(state, engine, source)) for source in sources]  # in the job, not here
        return correspondence(engine, prepared, parts, layers=layers, draws=body.draws, seed=body.seed, **options)

    return _analysis_job(state, "correspondence", total, run, CorrespondenceResponse.from_result)


# ---- filters ------------------------------------------------------------------------------------------------
FilterLayer = Annotated[str | None, Query(max_length=300, description="a Conv2d layer (default: the first)")]


@router.get(
    "/models/{model}/filters",
    response_model=FiltersResponse,
    summary="a conv layer's filters (default: the first): shape, stride, frequency coverage, mosaic URL (Fig. 6)",
    responses=MODEL_ERRORS,
)
def filters(engine: EngineDep, layer: FilterLayer = None) -> FiltersResponse:
    from convscope.analysis.filters import conv_weight, frequency_coverage

    name, conv = conv_weight(engine, layer)
    return FiltersResponse.from_coverage(engine.name, frequency_coverage(engine, name), int(conv.in_channels))


@png_route(
    router,
    "/models/{model}/filters/mosaic.png",
    "the filters of a conv layer as tiles, each contrast-normalised on its own (row-major)",
    "the mosaic",
)
def filter_mosaic_png(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    layer: FilterLayer = None,
    scale: Annotated[int, Query(ge=1, le=32, description="pixels per weight")] = 8,
    gap: Annotated[int, Query(ge=0, le=16, description="pixels between tiles")] = 2,
    columns: Annotated[int | None, Query(ge=1, le=1024, description="tiles per row (default: near square)")] = None,
) -> Response:
    from convscope.analysis.filters import conv_weight, filter_mosaic

    name, conv = conv_weight(engine, layer)

    def make() -> tuple[bytes, dict[str, str]]:
        mosaic = filter_mosaic(conv.weight, scale=scale, gap=gap, columns=columns)
        return png_bytes(mosaic), {}

    key = cache_key("filter-mosaic", engine.name, id(conv), name, scale, gap, columns)
    return png_response(request, state.responses.render(key, make), "public, max-age=3600")


@job_route(
    router,
    "/models/{model}/analyses/dead-channels",
    "channels of every conv layer that are never positive over a set of images (Fig. 6), as a job",
    examples={"every_sample": {}, "two_images": {"images": ["chelsea", "coffee"]}},
)
def dead_channels_job(
    state: StateDep, engine: EngineDep, client: ClientDep, body: DeadChannelsRequest | None = None
) -> JSONResponse:
    from convscope.analysis.filters import DeadChannels, dead_channels, measurement_points
    from convscope.samples import list_samples

    ids = (body.images if body is not None else None) or [sample.id for sample in list_samples()]
    if not ids:
        raise InvalidRequestError("no images to measure dead channels on")
    if not measurement_points(engine):
        raise InvalidRequestError(f"model {engine.name!r} has no Conv2d layer with a 4-D output")
    sources = [resolve_image(state, image_id, client) for image_id in ids]
    _check_passes(len(sources))

    def run(batch_size: int, task: Job) -> DeadChannels:
        began = time.perf_counter()
        tensors = (prepare(state, engine, source).tensor for source in sources)
        layers = dead_channels(engine, tensors, total=len(sources), batch_size=min(8, batch_size), task=task)
        return DeadChannels([source.id for source in sources], layers, time.perf_counter() - began)

    return _analysis_job(state, "dead-channels", len(sources), run, DeadChannelsResponse.from_result)
