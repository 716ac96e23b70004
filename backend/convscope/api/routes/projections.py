"""Projections: the single PNG endpoint and the batch endpoint, both answered through the engine's batching
queue (api/coalesce.py), which they await without holding a worker thread."""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from convscope.api.caching import Rendered, cache_key, png_response
from convscope.api.deps import ModelInputDep, StateDep
from convscope.api.openapi import body_examples
from convscope.api.routes.common import MODEL_ERRORS, LayerQuery, png
from convscope.api.schemas import ProjectionItem, ProjectionsRequest
from convscope.engine.engine import Seed, Select
from convscope.engine.rules import Mode
from convscope.errors import InvalidRequestError

log = logging.getLogger("convscope.api")
router = APIRouter(tags=["projections"])

SEED_HEADERS: dict[str, Any] = {
    "X-Seed-Value": {
        "description": "activation value of the seed (sum of the map for select=map)",
        "schema": {"type": "string"},
    },
    "X-Seed-Y": {"description": "row of the seed in the layer's map, -1 for select=map", "schema": {"type": "integer"}},
    "X-Seed-X": {
        "description": "column of the seed in the layer's map, -1 for select=map",
        "schema": {"type": "integer"},
    },
    "X-Mode": {
        "description": "the rule used: deconvnet, guided or gradient (mode=auto resolved for the layer)",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/models/{model}/images/{image_id}/projection",
    response_class=Response,
    summary="deconvnet projection of one feature map down to pixel space (docs/deconvnet.md), as an S×S RGB PNG",
    responses={**png("the projection, contrast-normalised to 0..255", SEED_HEADERS), **MODEL_ERRORS},
)
async def projection(
    request: Request,
    state: StateDep,
    model_input: ModelInputDep,
    layer: LayerQuery,
    channel: Annotated[int, Query(ge=0, description="channel of the layer", examples=[0])],
    mode: Annotated[
        Mode,
        Query(
            description="deconvnet, guided (backprop), gradient, or auto: deconvnet where max-pool switches lie "
            "below the layer, guided otherwise (the rule used is in X-Mode)"
        ),
    ] = "deconvnet",
    select: Annotated[Select, Query(description="max: the strongest activation; map: the whole map")] = "max",
    y: Annotated[int | None, Query(ge=0, description="seed row (with x: project this unit instead)")] = None,
    x: Annotated[int | None, Query(ge=0, description="seed column (with y)")] = None,
) -> Response:
    engine, image, prepared = model_input
    if (y is None) != (x is None):
        raise InvalidRequestError("give both y and x for a seed position, or neither")
    position = (y, x) if y is not None and x is not None else None
    rule = engine.resolve_mode(layer, mode)
    key = _key(engine.name, prepared.key, layer, channel, rule, select, position)
    item = state.responses.get(key)
    if item is None:
        (item,) = await state.projections.project(engine, prepared, layer, rule, [Seed(channel, select, position)])
        state.responses.put(key, item)
    return png_response(request, item, image.cache_control)


def _key(*parts: object) -> str:
    """The response-cache key of one projection PNG, shared by the single and the batch endpoint."""
    return cache_key("projection", *parts)


def _item(channel: int, select: Select, rendered: Rendered) -> ProjectionItem:
    headers = rendered.headers
    return ProjectionItem(
        channel=channel,
        select=select,
        mode=headers["X-Mode"],  # type: ignore[arg-type]
        seed_value=float(headers["X-Seed-Value"]),
        seed_y=int(headers["X-Seed-Y"]),
        seed_x=int(headers["X-Seed-X"]),
        etag=rendered.etag,
        png="data:image/png;base64," + base64.b64encode(rendered.body).decode("ascii"),
    )


@router.post(
    "/models/{model}/images/{image_id}/projections",
    summary="many projections of one image and layer in one response, sharing one recorded forward pass",
    description="One entry per seed, in order; each PNG is byte-identical to GET .../projection with the same "
    "parameters (same ETag) and comes as a data URL, so a client needs one round trip. Projections already "
    "rendered are reused; the others are computed in one `Engine.project_many` call (coalesced with other "
    "requests that arrive within CONVSCOPE_PROJECTION_WINDOW_MS). More seeds than the "
    "server's `max_projection_seeds` (default 64), or none, is a 422.",
    responses=MODEL_ERRORS,
    openapi_extra=body_examples(
        top_three_channels={"layer": "blocks.4.0.conv_pw", "mode": "auto", "seeds": [{"channel": c} for c in range(3)]},
        one_unit_and_a_map={
            "layer": "conv_stem",
            "seeds": [{"channel": 0, "y": 10, "x": 20}, {"channel": 1, "select": "map"}],
        },
    ),
)
async def batch_projections(
    body: ProjectionsRequest,
    state: StateDep,
    model_input: ModelInputDep,
) -> list[ProjectionItem]:
    engine, image, prepared = model_input
    limit = state.settings.max_projection_seeds
    if len(body.seeds) > limit:
        raise InvalidRequestError(f"{len(body.seeds)} seeds is more than this server's limit of {limit} per request")
    rule = engine.resolve_mode(body.layer, body.mode)  # 404 for an unknown layer
    seeds = [Seed(s.channel, s.select, (s.y, s.x) if s.y is not None and s.x is not None else None) for s in body.seeds]
    keys = [_key(engine.name, prepared.key, body.layer, s.channel, rule, s.select, s.position) for s in seeds]
    found = {key: state.responses.get(key) for key in keys}
    missing = list(dict.fromkeys(key for key, item in found.items() if item is None))
    if missing:
        todo = [seeds[keys.index(key)] for key in missing]
        computed = await state.projections.project(engine, prepared, body.layer, rule, todo)
        for key, item in zip(missing, computed, strict=True):
            state.responses.put(key, item)
            found[key] = item
    log.debug("projections of %s on %s: %d seeds, %d computed", image.id, body.layer, len(seeds), len(missing))
    rendered = {key: item for key, item in found.items() if item is not None}  # every key by now
    return [_item(seed.channel, seed.select, rendered[key]) for seed, key in zip(seeds, keys, strict=True)]
