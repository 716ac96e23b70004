from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from PIL import Image

from convscope.api.caching import PUBLIC, cache_key, png_response
from convscope.api.deps import StateDep
from convscope.api.routes.common import errors, png_route
from convscope.api.schemas import SampleInfo
from convscope.engine.render import png_bytes
from convscope.images import resize_and_crop
from convscope.samples import get_sample, list_samples, load_sample

router = APIRouter(tags=["samples"])

THUMBNAIL = 96


@lru_cache(maxsize=64)
def _original_size(sample_id: str) -> tuple[int, int]:
    with Image.open(get_sample(sample_id).path) as image:
        return image.size


@router.get("/samples", response_model=list[SampleInfo], summary="the bundled real photos")
def samples() -> list[SampleInfo]:
    rows = []
    for sample in list_samples():
        width, height = _original_size(sample.id)
        rows.append(
            SampleInfo(
                id=sample.id,
                name=sample.name,
                width=width,
                height=height,
                thumbnail_url=f"/api/samples/{sample.id}/thumbnail.png",
            )
        )
    return rows


@png_route(
    router,
    "/samples/{sample_id}/thumbnail.png",
    f"a {THUMBNAIL}×{THUMBNAIL} centre crop of a sample photo",
    "thumbnail",
    responses=errors(404, 422),
)
def thumbnail(
    request: Request,
    state: StateDep,
    sample_id: Annotated[str, Path(examples=["chelsea"], max_length=200)],
) -> Response:
    sample = get_sample(sample_id)
    item = state.responses.render(
        cache_key("thumbnail", sample.id, THUMBNAIL),
        lambda: (png_bytes(resize_and_crop(load_sample(sample.id), THUMBNAIL)), {}),
    )
    return png_response(request, item, PUBLIC)
