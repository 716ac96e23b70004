from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from convscope.api.caching import cache_key, png_response
from convscope.api.deps import EngineDep, ImageDep, PreparedDep, StateDep
from convscope.api.routes.activations import LayerQuery
from convscope.api.routes.common import MODEL_ERRORS, png
from convscope.engine.engine import Select
from convscope.engine.render import png_bytes, projection_image
from convscope.engine.rules import Mode
from convscope.errors import InvalidRequestError

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
def projection(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    image: ImageDep,
    prepared: PreparedDep,
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
    if (y is None) != (x is None):
        raise InvalidRequestError("give both y and x for a seed position, or neither")
    position = (y, x) if y is not None and x is not None else None
    rule = engine.resolve_mode(layer, mode)

    def make() -> tuple[bytes, dict[str, str]]:
        result = engine.project(prepared, layer, channel, mode=rule, select=select, position=position)
        seed_y, seed_x = result.seed_position
        headers = {
            "X-Seed-Value": repr(float(result.seed_value)),
            "X-Seed-Y": str(seed_y),
            "X-Seed-X": str(seed_x),
            "X-Mode": result.mode,
        }
        return png_bytes(projection_image(result.projection)), headers

    key = cache_key("projection", engine.name, prepared.key, layer, channel, rule, select, position)
    item = state.responses.render(key, make)
    return png_response(request, item, image.cache_control)
