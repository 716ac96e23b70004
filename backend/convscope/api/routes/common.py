"""What the routers share: the `layer` query, OpenAPI fragments, `png_route` for the routes that
answer a PNG and `job_route` for those that start a job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Response

from convscope.api.openapi import body_examples
from convscope.api.schemas import ErrorResponse, JobResponse

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

LayerQuery = Annotated[
    str, Query(description="layer name (see .../layers)", examples=["conv_stem"], min_length=1, max_length=300)
]

PNG_CONTENT: dict[str, Any] = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
CACHE_HEADERS: dict[str, Any] = {
    "ETag": {"description": "strong validator: hash of the PNG bytes", "schema": {"type": "string"}},
    "Cache-Control": {"description": "public for sample photos, private for uploads", "schema": {"type": "string"}},
}


def png(description: str, headers: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """A 200 image/png response with its caching headers, and 304 for `If-None-Match`."""
    all_headers = {**CACHE_HEADERS, **(headers or {})}
    return {
        200: {"description": description, "content": PNG_CONTENT, "headers": all_headers},
        304: {"description": "not modified: the If-None-Match ETag is current", "headers": CACHE_HEADERS},
    }


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed request body",
        404: "unknown model, image or layer",
        413: "body or image too large",
        415: "not a readable image",
        422: "invalid parameter value",
        429: "too many jobs; retry later",
        503: "the models are still loading",
    }
    return {code: {"model": ErrorResponse, "description": text.get(code, "error")} for code in codes}


MODEL_ERRORS = errors(404, 422, 503)


def png_route(
    router: APIRouter,
    path: str,
    summary: str,
    image: str,
    *,
    headers: dict[str, Any] | None = None,
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> Callable[[Endpoint], Endpoint]:
    """`router.get(path)` for a route whose answer is a PNG (`image` describes it): its 200 with the
    caching `headers`, its 304, and the error `responses` (default: MODEL_ERRORS)."""
    errors_ = MODEL_ERRORS if responses is None else responses
    return router.get(path, response_class=Response, summary=summary, responses={**png(image, headers), **errors_})


JOB_STARTED = "started as a job: poll its `url` (also in Location)"


def job_route(
    router: APIRouter,
    path: str,
    summary: str,
    *,
    examples: dict[str, Any],
    responses: dict[int | str, dict[str, Any]] | None = None,
    started: str = JOB_STARTED,
) -> Callable[[Endpoint], Endpoint]:
    """`router.post(path)` for a route that answers 202 with a job (`routes.jobs.accepted`): the job's
    schema, what `started` it, the error `responses` (default: 400, 404, 422, 429, 503) and the
    named request-body `examples`."""
    errors_ = errors(400, 404, 422, 429, 503) if responses is None else responses
    return router.post(
        path,
        status_code=202,
        response_model=JobResponse,
        summary=summary,
        responses={202: {"model": JobResponse, "description": started}, **errors_},
        openapi_extra=body_examples(**examples),
    )
