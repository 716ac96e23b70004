from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, Response, UploadFile

from convscope.api.caching import cache_key, png_response
from convscope.api.deps import ClientDep, ImageDep, StateDep, prepare
from convscope.api.routes.common import errors, png_route
from convscope.api.schemas import UploadResponse
from convscope.engine.render import png_bytes
from convscope.errors import TooLargeError
from convscope.images import check_resized, decode_image

router = APIRouter(tags=["images"])


@router.post(
    "/images",
    response_model=UploadResponse,
    status_code=201,
    summary="upload an image (multipart field `file`); it is kept in a bounded store under a random id",
    responses=errors(400, 413, 415, 422),
)
def upload_image(
    state: StateDep,
    client: ClientDep,
    response: Response,
    file: Annotated[UploadFile, File(description="PNG, JPEG, GIF (first frame), WebP, BMP, TIFF...")],
) -> UploadResponse:
    limit = state.settings.max_upload_bytes
    data = file.file.read(limit + 1)  # the body limit already holds; this is belt and braces
    if len(data) > limit:
        raise TooLargeError(f"the file is larger than the limit of {limit:,} bytes")
    settings = state.settings
    image = decode_image(data, max_pixels=settings.max_pixels, max_aspect=settings.max_aspect_ratio)
    # the largest input side a loaded model may resize it to (every model's own unless one is set)
    check_resized(image.size, settings.input_size or max(engine.input_size for engine in state.pool.engines()))
    item = state.store.add(image, owner=client)
    response.headers["Location"] = f"/api/images/{item.id}"
    width, height = image.size
    return UploadResponse(id=item.id, width=width, height=height)


@png_route(
    router,
    "/images/{image_id}",
    "the S×S model input of an image (shorter side resized to S, centre crop)",
    "the S×S RGB image the model sees",
)
def get_image(
    request: Request,
    state: StateDep,
    image: ImageDep,
    model: Annotated[
        str | None, Query(description="model whose input size to use (default: the default model)")
    ] = None,
) -> Response:
    engine = state.pool.get(model or state.pool.default)
    prepared = prepare(state, engine, image)
    item = state.responses.render(cache_key("input", prepared.key), lambda: (png_bytes(prepared.display), {}))
    return png_response(request, item, image.cache_control)
