"""Typed dependencies: the app state, an engine by model name, an image by id (and as a model's input),
the scan and featvis services."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated, NamedTuple

from fastapi import Depends, Path, Request
from PIL import Image

from convscope.api.caching import PRIVATE, PUBLIC
from convscope.api.featvis import FeatvisService
from convscope.api.pool import ModelPool
from convscope.api.scans import ScanService
from convscope.api.security import client_of
from convscope.api.state import AppState
from convscope.engine import Engine
from convscope.images import PreparedImage
from convscope.models import DEFAULT_MODEL
from convscope.samples import get_sample, load_sample


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.convscope
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_scan_service(request: Request) -> ScanService:
    service: ScanService = request.app.state.scans
    return service


ScanServiceDep = Annotated[ScanService, Depends(get_scan_service)]

_featvis_lock = threading.Lock()


def get_featvis(request: Request) -> FeatvisService:
    """The app's feature-visualisation service, made by the first request that needs it (its cache
    folder is created then, not at start-up)."""
    with _featvis_lock:
        service: FeatvisService | None = getattr(request.app.state, "featvis", None)
        if service is None:
            service = request.app.state.featvis = FeatvisService(request.app.state.convscope)
        return service


FeatvisDep = Annotated[FeatvisService, Depends(get_featvis)]


async def get_pool(state: StateDep) -> ModelPool:
    return state.pool


PoolDep = Annotated[ModelPool, Depends(get_pool)]


async def get_client(request: Request) -> str | None:
    """The requesting client's opaque id (see api/security.py)."""
    return client_of(request.scope)


ClientDep = Annotated[str | None, Depends(get_client)]

ModelName = Annotated[
    str,
    Path(description="a model this server loaded (see GET /api/models)", examples=[DEFAULT_MODEL], max_length=200),
]
ImageId = Annotated[
    str,
    Path(description="a sample id (see GET /api/samples) or an upload id", examples=["chelsea"], max_length=200),
]


async def get_engine(model: ModelName, pool: PoolDep) -> Engine:
    """The engine of a loaded model; 404 for any other name (never imports anything)."""
    return pool.get(model)


EngineDep = Annotated[Engine, Depends(get_engine)]


@dataclass(frozen=True)
class SourceImage:
    """An image as it arrived: a bundled sample or an upload."""

    id: str
    image: Image.Image
    is_upload: bool

    @property
    def cache_control(self) -> str:
        """Sample results are the same for everyone; uploads are one client's."""
        return PRIVATE if self.is_upload else PUBLIC


def resolve_image(state: AppState, image_id: str, client: str | None) -> SourceImage:
    """A sample (shared), or one of this client's uploads; 404 otherwise."""
    upload = state.store.find(image_id, client)
    if upload is not None:
        return SourceImage(image_id, upload.image, True)
    sample = get_sample(image_id)  # 404 when unknown
    return SourceImage(sample.id, load_sample(sample.id), False)


def get_image(image_id: ImageId, state: StateDep, client: ClientDep) -> SourceImage:
    return resolve_image(state, image_id, client)


ImageDep = Annotated[SourceImage, Depends(get_image)]


def prepare(state: AppState, engine: Engine, image: SourceImage) -> PreparedImage:
    """The S×S model input of an image for a model (cached)."""
    return state.prepared.get_or_make((engine.name, image.id), lambda: engine.prepare(image.image))


def get_prepared(engine: EngineDep, image: ImageDep, state: StateDep) -> PreparedImage:
    return prepare(state, engine, image)


PreparedDep = Annotated[PreparedImage, Depends(get_prepared)]


class ModelInput(NamedTuple):
    """An image as one model takes it: the model's engine, the image as it arrived (its id, its
    caching) and its S×S input; what the routes about one image's layers work on."""

    engine: Engine
    image: SourceImage
    prepared: PreparedImage


def get_model_input(engine: EngineDep, image: ImageDep, prepared: PreparedDep) -> ModelInput:
    return ModelInput(engine, image, prepared)


ModelInputDep = Annotated[ModelInput, Depends(get_model_input)]
