"""`create_app(settings)`: the FastAPI app, its lifespan and the dashboard mount."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from convscope import __version__
from convscope.api import errors, openapi
from convscope.api.limits import BodyLimitMiddleware
from convscope.api.metrics import MetricsMiddleware
from convscope.api.pool import ModelLoader, ModelPool, default_loader
from convscope.api.priority import InteractiveMiddleware
from convscope.api.routes import api_router
from convscope.api.routes import scans as scan_routes
from convscope.api.rules import document_rules
from convscope.api.security import SecurityMiddleware
from convscope.api.settings import Settings, trusted_hosts
from convscope.api.state import AppState
from convscope.api.timeouts import BodyTimeoutMiddleware

log = logging.getLogger("convscope.api")

DESCRIPTION = """\
Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*, over HTTP:
predictions, feature maps, deconvnet projections and occlusion maps of real photos
or uploads. Errors are JSON `{"detail": "..."}` with a 4xx status.
"""


def _document_validation_errors(app: FastAPI) -> None:
    """Describe 422s as they are sent (`{"detail": "...", "errors": [...]}`, see errors.py), for every
    route, including routes that do not declare their 422 themselves."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document_rules(document)
            schemas = document.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError",
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {"type": "string", "title": "Detail", "description": "what was wrong, in words"},
                        "errors": {"type": "array", "items": {"type": "object"}, "title": "Errors"},
                    },
                }
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, loader: ModelLoader = default_loader) -> FastAPI:
    """The app. Models load in a background thread when it starts; `/api/health` says when they are ready."""
    settings = settings or Settings()
    state = AppState.build(settings, ModelPool(settings, loader))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Cap the threads that run sync endpoints (model work, decoding); the engine
        # serialises model work per model anyway, more threads would only queue.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        state.start()
        scan_routes.on_startup(app)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.stop)

    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package, not a CDN
    app = FastAPIOffline(
        title="convscope",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,
    )
    app.state.convscope = state
    errors.install(app)
    if state.jobs.gate is not None:
        app.add_middleware(InteractiveMiddleware, gate=state.jobs.gate)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, body_timeout=settings.body_timeout)
    state.metrics.watch(state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, templates=lambda: app.openapi()["paths"])
    app.add_middleware(  # outermost: Host, token and client id before anything else
        SecurityMiddleware,
        trusted_hosts=trusted_hosts(settings),
        token=settings.api_token(),
        openapi=lambda: app.openapi(),
    )
    app.include_router(api_router)
    scan_routes.install(app, state)
    app.include_router(scan_routes.router, prefix="/api")

    _document_validation_errors(app)
    openapi.install(app)

    frontend = settings.frontend_dir
    if frontend is not None and frontend.is_dir():
        app.mount("/", StaticFiles(directory=frontend, html=True), name="frontend")
    else:
        log.warning("no dashboard directory at %s; serving the API only", frontend)
    return app
