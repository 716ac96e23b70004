"""Every error is JSON `{"detail": "..."}` with a 4xx status; 500 only for our own bugs."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException

from convscope.errors import ConvscopeError

log = logging.getLogger("convscope.api")


def _where(loc: Any) -> str:
    parts = [str(part) for part in loc]
    if len(parts) >= 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {'.'.join(parts[1:])!r}"
    if parts and parts[0] == "body":
        return "body" + (f" field {'.'.join(parts[1:])!r}" if len(parts) > 1 else "")
    return ".".join(parts) or "request"


def validation_message(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{_where(error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in errors)


async def convscope_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvscopeError)
    headers = {"Retry-After": "5"} if exc.status_code in (429, 503) else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str, bytes: lambda b: repr(b)})
    for error in errors:
        error.pop("input", None)  # can be a whole upload; never echo it
    return JSONResponse({"detail": validation_message(errors), "errors": errors}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=getattr(exc, "headers", None))
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ConvscopeError, convscope_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
