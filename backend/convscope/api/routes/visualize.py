"""Feature visualisation by optimisation over HTTP (issue 17), and the static atlas folder.

`POST /api/models/{model}/visualizations` starts a job that optimises one image per
channel of one layer (all in one batch, or batches of 16) and answers 202 with the job;
its result lists each unit's objective and the URL of its PNG. Units are cached on disk
(`CONVSCOPE_FEATVIS_DIR`) by (model, weights hash, layer, channel, objective, steps,
size, seed), so a unit is computed once: `GET .../visualizations?...` says whether one is
stored, `GET .../visualizations/image.png?...` serves it.

`GET /api/atlas` says whether the server was given an atlas folder
(`CONVSCOPE_ATLAS_DIR`, written by `convscope atlas`); its files are served read-only
under `/api/atlas/`.
"""

from __future__ import annotations

import contextlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from convscope.api.caching import PUBLIC, Rendered, etag_of, png_response
from convscope.api.deps import EngineDep, FeatvisDep, StateDep
from convscope.api.jobs import Job, current_client
from convscope.api.routes.common import MODEL_ERRORS, errors, job_route, png_route
from convscope.api.routes.jobs import accepted
from convscope.api.schemas.featvis import MAX_API_STEPS, AtlasInfo, ObjectiveName, StoredUnit, VisualizationRequest
from convscope.api.state import AppState
from convscope.engine import Engine
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.featvis.limits import DEFAULT_STEPS, MAX_SIZE, MIN_SIZE

router = APIRouter(tags=["feature visualisation"])

MAX_UNIT_STEPS = 64 * 512  # channels × steps one request may ask for
BATCH = 16  # units optimised together


def image_url(model: str, target: Any, channel: int) -> str:
    params: dict[str, Any] = {
        "layer": target.layer,
        "channel": channel,
        "objective": target.objective,
        "steps": target.steps,
        "size": target.size,
        "seed": target.seed,
    }
    if target.objective == "unit" and target.position is not None:
        params["y"], params["x"] = target.position
    return f"/api/models/{quote(model, safe='')}/visualizations/image.png?{urlencode(params)}"


def _target(
    engine: Engine,
    layer: str | None,
    channels: list[int],
    objective: str,
    steps: int,
    size: int | None,
    seed: int,
    position: tuple[int, int] | None,
) -> Any:
    from convscope.featvis.objectives import check_target

    if len(channels) * steps > MAX_UNIT_STEPS:
        raise InvalidRequestError(
            f"this request needs {len(channels) * steps:,} unit-steps; the limit is {MAX_UNIT_STEPS:,} "
            "(fewer channels or steps)"
        )
    return check_target(engine, layer, channels, objective, steps, size, seed, position)


def _position(y: int | None, x: int | None) -> tuple[int, int] | None:
    if (y is None) != (x is None):
        raise InvalidRequestError("give both y and x, or neither")
    return None if y is None or x is None else (y, x)


# ---- routes ---------------------------------------------------------------------------------------
@job_route(
    router,
    "/models/{model}/visualizations",
    "optimise an image for each channel of one layer (feature visualisation), as a job",
    examples={
        "three_channels": {"layer": "blocks.4", "channels": [0, 1, 2], "steps": 128},
        "class_logit": {"objective": "logit", "channels": [285], "steps": 128},
    },
    started="started (or joined) a job: poll its `url`",
)
def start_visualization(service: FeatvisDep, engine: EngineDep, body: VisualizationRequest) -> JSONResponse:
    target = _target(engine, body.layer, body.channels, body.objective, body.steps, body.size, body.seed, body.position)
    cache = service.cache
    missing = [c for c in target.channels if not cache.has(engine, target, c)]
    total = max(1, target.steps * -(-len(missing) // BATCH))

    def work(job: Job) -> dict[str, Any]:
        results = cache.visualize(engine, target, batch_size=BATCH, task=job)
        return {
            "model": engine.name,
            "layer": target.layer,
            "objective": target.objective,
            "steps": target.steps,
            "size": target.size,
            "seed": target.seed,
            "position": list(target.position) if target.position is not None else None,
            "units": [
                {
                    "channel": vis.channel,
                    "value": vis.value,
                    "cached": vis.cached,
                    "seconds": round(vis.seconds, 4),
                    "url": image_url(engine.name, target, vis.channel),
                }
                for vis in results
            ],
        }

    key = (current_client.get(), engine.name, id(engine), target)  # jobs belong to their client
    job = service.submit(key, work, total)
    return accepted(job)


Channel = Annotated[int, Query(ge=0, description="channel of the layer (class for logit)")]
Layer = Annotated[str | None, Query(max_length=300, description="module name (not needed for logit)")]
Steps = Annotated[int, Query(ge=1, le=MAX_API_STEPS)]
Size = Annotated[int | None, Query(ge=MIN_SIZE, le=MAX_SIZE, description="default: the model's input size")]
Seed = Annotated[int, Query(ge=0, le=2**32 - 1)]
Coordinate = Annotated[int | None, Query(ge=0, description="unit objective: the position (default: centre)")]


@dataclass(frozen=True)
class StoredUnitQuery:
    """One unit named in a query string, checked: the channel and its optimisation target."""

    channel: int
    target: Any


def stored_unit_query(
    engine: EngineDep,
    channel: Channel,
    layer: Layer = None,
    objective: ObjectiveName = "channel",
    steps: Steps = DEFAULT_STEPS,
    size: Size = None,
    seed: Seed = 0,
    y: Coordinate = None,
    x: Coordinate = None,
) -> StoredUnitQuery:
    return StoredUnitQuery(channel, _target(engine, layer, [channel], objective, steps, size, seed, _position(y, x)))


UnitQuery = Annotated[StoredUnitQuery, Depends(stored_unit_query)]


@router.get(
    "/models/{model}/visualizations",
    response_model=StoredUnit,
    summary="whether one unit's optimised image is stored, and where",
    responses=MODEL_ERRORS,
)
def stored_visualization(service: FeatvisDep, engine: EngineDep, unit: UnitQuery) -> StoredUnit:
    vis = service.cache.get(engine, unit.target, unit.channel)
    return StoredUnit(
        channel=unit.channel,
        cached=vis is not None,
        value=vis.value if vis else None,
        url=image_url(engine.name, unit.target, unit.channel),
    )


@png_route(
    router,
    "/models/{model}/visualizations/image.png",
    "one unit's optimised image (S×S RGB PNG), once a job has computed it",
    "RGB PNG, S×S",
)
def visualization_png(request: Request, service: FeatvisDep, engine: EngineDep, unit: UnitQuery) -> Response:
    target, channel = unit.target, unit.channel
    path = service.cache.path(engine, target, channel, ".png")
    if not service.cache.has(engine, target, channel):
        raise NotFoundError(
            f"channel {channel} of {target.layer!r} is not computed yet for these settings; "
            f"POST /api/models/{engine.name}/visualizations to compute it"
        )
    body = path.read_bytes()
    return png_response(request, Rendered(body, etag_of(body)), PUBLIC)


# ---- the atlas folder ---------------------------------------------------------------------------
def _atlas_dir(state: AppState) -> FilePath | None:
    folder = getattr(state.settings, "atlas_dir", None)
    if folder is None:
        return None
    folder = FilePath(folder)
    return folder if (folder / "index.html").is_file() else None


@router.get("/atlas", response_model=AtlasInfo, summary="the atlas folder this server serves, if any")
def atlas_info(state: StateDep) -> AtlasInfo:
    import json

    folder = _atlas_dir(state)
    if folder is None:
        return AtlasInfo(available=False, url=None)
    model = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        model = json.loads((folder / "atlas.json").read_text()).get("model")
    return AtlasInfo(available=True, url="/api/atlas/index.html", model=model)


@router.get(
    "/atlas/{path:path}",
    response_class=Response,
    summary="a file of the atlas folder (read-only)",
    responses=errors(404),
)
def atlas_file(state: StateDep, path: Annotated[str, Path(max_length=500)]) -> Response:
    folder = _atlas_dir(state)
    if folder is None:
        raise NotFoundError("this server has no atlas (set CONVSCOPE_ATLAS_DIR to a `convscope atlas` folder)")
    root = folder.resolve()
    wanted = (root / (path or "index.html")).resolve()
    if (root not in wanted.parents and wanted != root) or any(
        part.startswith("_") for part in wanted.relative_to(root).parts
    ):
        raise NotFoundError(f"no atlas file {path!r}")
    if wanted.is_dir():
        wanted = wanted / "index.html"
    if not wanted.is_file():
        raise NotFoundError(f"no atlas file {path!r}")
    media = mimetypes.guess_type(wanted.name)[0] or "application/octet-stream"
    return FileResponse(wanted, media_type=media, headers={"Cache-Control": "no-cache"})


__all__ = ["router"]
