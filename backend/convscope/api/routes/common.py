"""OpenAPI fragments shared by the routers."""

from __future__ import annotations

from typing import Any

from convscope.api.schemas import ErrorResponse

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
