from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import torch
from fastapi import APIRouter, Query, Request, Response

from convscope.api.caching import cache_key, png_response
from convscope.api.deps import ModelInputDep, StateDep
from convscope.api.routes.common import MODEL_ERRORS, LayerQuery, png_route
from convscope.api.schemas import ActivationsResponse, SpriteInfo
from convscope.engine.render import activation_sprite, png_bytes, sprite_grid

router = APIRouter(tags=["activations"])


@router.get(
    "/models/{model}/images/{image_id}/activations",
    response_model=ActivationsResponse,
    summary="per-channel statistics of a layer, and the URL of a sprite with every channel's map",
    responses=MODEL_ERRORS,
)
def activations(model_input: ModelInputDep, layer: LayerQuery) -> ActivationsResponse:
    engine, image, prepared = model_input
    info = engine.layer(layer)
    maps = torch.nan_to_num(engine.activations(prepared, layer), nan=0.0, posinf=3.4e38, neginf=-3.4e38)
    flat = maps.reshape(maps.shape[0], -1)
    peak, where = flat.max(dim=1)
    argmax = [[int(i) // info.width, int(i) % info.width] for i in where.tolist()]
    columns, rows = sprite_grid(info.channels)
    url = f"/api/models/{quote(engine.name, safe='')}/images/{quote(image.id, safe='')}/activations/sprite.png"
    return ActivationsResponse(
        layer=layer,
        channels=info.channels,
        height=info.height,
        width=info.width,
        max=peak.tolist(),
        min=flat.min(dim=1).values.tolist(),
        sum=flat.sum(dim=1).tolist(),
        argmax=argmax,
        sprite=SpriteInfo(
            url=f"{url}?layer={quote(layer, safe='')}",
            columns=columns,
            rows=rows,
            tile=max(info.height, info.width),
        ),
    )


@png_route(
    router,
    "/models/{model}/images/{image_id}/activations/sprite.png",
    "every channel's map in one grayscale PNG, tiles row-major by channel, scaled by the layer maximum",
    "the sprite",
)
def activation_sprite_png(
    request: Request,
    state: StateDep,
    model_input: ModelInputDep,
    layer: LayerQuery,
    signed: Annotated[
        bool, Query(description="128 = zero, 0 and 255 = the largest magnitude (negative values)")
    ] = False,
) -> Response:
    engine, image, prepared = model_input
    engine.layer(layer)

    def make() -> tuple[bytes, dict[str, str]]:
        sprite, columns, rows, tile = activation_sprite(engine.activations(prepared, layer), signed=signed)
        headers = {"X-Sprite-Columns": str(columns), "X-Sprite-Rows": str(rows), "X-Sprite-Tile": str(tile)}
        return png_bytes(sprite), headers

    item = state.responses.render(cache_key("sprite", engine.name, prepared.key, layer, signed), make)
    return png_response(request, item, image.cache_control)
