"""Top-k scans (paper Fig. 2): list a model's scans, read a channel's top-k with its crops and
deconvnet projections, draw the montage, and scan a server-side folder as a job.

Folders can only be scanned inside the roots the server is configured with
(`CONVSCOPE_SCAN_ROOTS`), named as `<root name>/<path>`; the bundled sample photos can
always be scanned (the dashboard does this for a layer the start-up scan left out). At start-up the server scans
the bundled sample photos for its default model in the background (a job), unless
`CONVSCOPE_SCAN_ON_STARTUP=false`.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from convscope.api.caching import PUBLIC, Rendered, cache_key, etag_of, png_response
from convscope.api.deps import EngineDep
from convscope.api.jobs import Job
from convscope.api.routes.activations import LayerQuery
from convscope.api.routes.common import errors, png
from convscope.api.routes.jobs import job_response, job_url
from convscope.api.schemas import (
    ErrorResponse,
    JobResponse,
    LayerResponse,
    ScanImageRef,
    ScanInfo,
    ScanProgress,
    ScanRequest,
    TopEntry,
    TopResponse,
)
from convscope.api.state import AppState
from convscope.engine import Engine
from convscope.engine.render import png_bytes
from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.jsonvalues import finite_or_none
from convscope.scan.library import SAMPLES_SCAN, ScanEntry, ScanLibrary
from convscope.scan.render import ScanRenderer

log = logging.getLogger("convscope.api.scans")

router = APIRouter(tags=["scans"])

ScanId = Annotated[
    str, Path(description="a scan id (see GET .../scans)", examples=[SAMPLES_SCAN], min_length=1, max_length=128)
]
ChannelQuery = Annotated[int, Query(ge=0, description="channel of the layer", examples=[0])]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "the scan is unfinished, or was made with other weights"}
}
MONTAGE_MAX_CHANNELS = 64


class ScanService:
    """The app's scans: the library on disk and the jobs writing it."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        settings = state.settings
        self.library = ScanLibrary(settings.scan_dir, settings.scan_roots)
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()

    def job_for(self, model: str, scan_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get((model, scan_id))
        return job if job is not None and not job.finished else None

    def submit(self, model: str, scan_id: str, work: Any) -> Job:
        """Start a scan job, or return the one already writing this scan."""
        with self._lock:
            job = self._jobs.get((model, scan_id))
            if job is not None and not job.finished:
                return job
            job = self.state.jobs.submit("scan", work)
            self._jobs[(model, scan_id)] = job
            return job

    def scan_job(self, model: str, scan_id: str, source_factory: Any, **options: Any) -> Any:
        from convscope.scan.scanner import run_scan

        library, pool, settings = self.library, self.state.pool, self.state.settings

        def work(job: Job) -> dict[str, Any]:
            while not pool.wait(0.5):
                job.check_cancelled()
            engine = pool.get(model)
            source = source_factory()
            job.report(0, len(source.paths))
            result = run_scan(
                engine,
                source,
                library.store(model, scan_id).directory,
                batch_size=settings.scan_batch_size,
                resume=True,
                wait_lock=True,
                task=job,
                **options,
            )
            data = result.to_dict()
            data.pop("directory", None)
            return {"scan": scan_id, "model": model, "url": scan_url(model, scan_id), **data}

        return work

    def start_samples_scan(self) -> Job | None:
        from convscope.scan.scanner import samples_source

        model = self.state.settings.default_model
        work = self.scan_job(
            model,
            SAMPLES_SCAN,
            samples_source,
            replace=True,
            extra={"label": "the bundled sample photos"},
        )
        try:
            return self.submit(model, SAMPLES_SCAN, work)
        except ConvscopeError as exc:
            log.warning("cannot start the sample scan: %s", exc)
            return None


def install(app: FastAPI, state: AppState) -> ScanService:
    """Add the scan routes' service to the app (call from `create_app`)."""
    service = ScanService(state)
    app.state.scans = service
    return service


def on_startup(app: FastAPI) -> None:
    """Start the background scan of the sample photos (call from the lifespan)."""
    service: ScanService = app.state.scans
    if service.state.settings.scan_on_startup:
        service.start_samples_scan()


def get_service(request: Request) -> ScanService:
    service: ScanService = request.app.state.scans
    return service


def scan_url(model: str, scan_id: str) -> str:
    return f"/api/models/{quote(model, safe='')}/scans/{quote(scan_id, safe='')}"


def _scan_info(service: ScanService, engine: Engine, entry: ScanEntry) -> ScanInfo:
    manifest = entry.manifest
    config = manifest.config
    progress = manifest.progress
    job = service.job_for(entry.model, entry.id)
    label = str(manifest.extra.get("label") or manifest.extra.get("folder") or config.source_kind)
    return ScanInfo(
        id=entry.id,
        model=entry.model,
        status="complete" if manifest.complete else "running",
        source=config.source_kind,
        label=label,
        images=config.image_count,
        top=config.top,
        layers=[LayerResponse.from_info(layer) for layer in config.layers],
        progress=ScanProgress(
            images_done=progress.images_done,
            skipped=progress.skipped,
            next_batch=progress.next_batch,
            batches=progress.batches,
            seconds=round(progress.seconds, 3),
        ),
        weights_match=service.library.matches(engine, manifest),
        created_at=manifest.created_at,
        finished_at=manifest.finished_at,
        job=job_url(job) if job is not None else None,
        url=scan_url(entry.model, entry.id),
    )


def _renderer(service: ScanService, engine: Engine, model: str, scan_id: str) -> ScanRenderer:
    entry = service.library.get(model, scan_id)
    return service.library.renderer(entry, engine)


# ---- routes ---------------------------------------------------------------------------------------
@router.get(
    "/models/{model}/scans",
    response_model=list[ScanInfo],
    summary="the model's top-k scans (the sample scan first), finished or running",
    responses=errors(404, 422, 503),
)
def list_scans(request: Request, engine: EngineDep) -> list[ScanInfo]:
    service = get_service(request)
    return [_scan_info(service, engine, entry) for entry in service.library.list(engine.name)]


@router.post(
    "/models/{model}/scans",
    status_code=202,
    response_model=JobResponse,
    summary="scan the sample photos, or a folder under one of the server's scan roots (a job; poll its url)",
    responses={
        403: {"model": ErrorResponse, "description": "no scan roots, or the folder is outside them"},
        **errors(400, 404, 422, 429, 503),
    },
)
def start_scan(request: Request, engine: EngineDep, body: Annotated[ScanRequest, Body()]) -> JSONResponse:
    from convscope.scan.scanner import folder_source, resolve_layers, samples_source

    service = get_service(request)
    layers: str | list[str] | None = body.layers
    if body.layers == ["all"]:
        layers = "all"
    if body.folder is not None:
        folder = service.library.resolve_folder(body.folder)
        resolve_layers(engine, layers)  # unknown layers: 404 now, not in the job
        scan_id = service.library.folder_scan_id(body.folder, body.layers, body.top)
        label = body.folder.strip().strip("/")
        work = service.scan_job(
            engine.name,
            scan_id,
            lambda: folder_source(folder, confine=True),
            layers=layers,
            top=body.top,
            replace=True,  # the folder changed since its last scan: scan it anew
            extra={"label": label, "folder": label},
        )
    else:
        resolve_layers(engine, layers)
        scan_id = service.library.samples_scan_id(body.layers, body.top)
        work = service.scan_job(
            engine.name,
            scan_id,
            samples_source,
            layers=layers,
            top=body.top,
            replace=True,
            extra={"label": "the bundled sample photos"},
        )
    job = service.submit(engine.name, scan_id, work)
    return JSONResponse(job_response(job).model_dump(mode="json"), status_code=202, headers={"Location": job_url(job)})


@router.get(
    "/models/{model}/scans/{scan_id}",
    response_model=ScanInfo,
    summary="one scan: what was scanned, its layers and progress",
    responses=errors(404, 422, 503),
)
def get_scan(request: Request, engine: EngineDep, scan_id: ScanId) -> ScanInfo:
    service = get_service(request)
    return _scan_info(service, engine, service.library.get(engine.name, scan_id))


@router.get(
    "/models/{model}/scans/{scan_id}/top",
    response_model=TopResponse,
    summary="the top-k of one channel: values, source images, and URLs of their crops and projections",
    responses={**errors(404, 422, 503), **CONFLICT},
)
def top(request: Request, engine: EngineDep, scan_id: ScanId, layer: LayerQuery, channel: ChannelQuery) -> TopResponse:
    service = get_service(request)
    renderer = _renderer(service, engine, engine.name, scan_id)
    entries = renderer.entries(layer, channel)
    base = scan_url(engine.name, scan_id)
    query = urlencode({"layer": layer, "channel": channel})
    samples = renderer.manifest.config.source_kind == "samples"
    rows = []
    for rank, entry in enumerate(entries):
        image_id, _, _, _ = renderer.store.image(entry.image)
        rows.append(
            TopEntry(
                rank=rank,
                value=finite_or_none(entry.value),
                image=ScanImageRef(
                    index=entry.image, id=image_id, sample=samples, url=f"{base}/images/{entry.image}.png"
                ),
                y=entry.y,
                x=entry.x,
                box=list(renderer.box(layer, entry)),
                crop_url=f"{base}/top/{rank}/crop.png?{query}",
                projection_url=f"{base}/top/{rank}/projection.png?{query}",
            )
        )
    return TopResponse(scan=scan_id, layer=layer, channel=channel, top=renderer.manifest.config.top, entries=rows)


def _png(request: Request, body: bytes) -> Response:
    return png_response(request, Rendered(body, etag_of(body)), PUBLIC)


@router.get(
    "/models/{model}/scans/{scan_id}/top/{rank}/{kind}.png",
    response_class=Response,
    summary="the receptive-field crop (kind=crop) or the deconvnet projection (kind=projection) of one top-k entry",
    responses={**png("RGB PNG, the size of the unit's receptive field"), **errors(404, 422, 503), **CONFLICT},
)
def top_image(
    request: Request,
    engine: EngineDep,
    scan_id: ScanId,
    rank: Annotated[int, Path(ge=0, le=10_000, description="0 = the strongest")],
    kind: Annotated[Literal["crop", "projection"], Path(description="crop or projection")],
    layer: LayerQuery,
    channel: ChannelQuery,
) -> Response:
    renderer = _renderer(get_service(request), engine, engine.name, scan_id)
    return _png(request, renderer.png(layer, channel, rank, kind))


@router.get(
    "/models/{model}/scans/{scan_id}/images/{index}.png",
    response_class=Response,
    summary="a scanned image as the model saw it (S×S)",
    responses={**png("RGB PNG, S×S"), **errors(404, 422, 503), **CONFLICT},
)
def scan_image(
    request: Request,
    engine: EngineDep,
    scan_id: ScanId,
    index: Annotated[int, Path(ge=0, description="image index in the scan")],
) -> Response:
    service = get_service(request)
    entry = service.library.get(engine.name, scan_id)
    renderer = ScanRenderer(entry.store)
    key = cache_key("scan-image", engine.name, scan_id, entry.manifest.created_at, index)
    item = service.state.responses.render(key, lambda: (png_bytes(renderer.display(index)), {}))
    return png_response(request, item, PUBLIC)


@router.get(
    "/models/{model}/scans/{scan_id}/montage.png",
    response_class=Response,
    summary="a Fig. 2-style montage: per channel its top-k projections beside the image patches",
    responses={**png("RGB PNG"), **errors(404, 422, 503), **CONFLICT},
)
def montage_png(
    request: Request,
    engine: EngineDep,
    scan_id: ScanId,
    layer: LayerQuery,
    channels: Annotated[
        str | None,
        Query(description="e.g. 0,1,5-8 (default: the first 16)", max_length=1000, examples=["0-3"]),
    ] = None,
    tile: Annotated[int, Query(ge=16, le=128, description="tile side in pixels")] = 48,
) -> Response:
    from convscope.scan.montage import montage, parse_channels

    service = get_service(request)
    renderer = _renderer(service, engine, engine.name, scan_id)
    wanted = parse_channels(channels, renderer.manifest.layer(layer).channels)
    if len(wanted) > MONTAGE_MAX_CHANNELS:
        raise InvalidRequestError(f"at most {MONTAGE_MAX_CHANNELS} channels per montage")
    key = cache_key("montage", engine.name, scan_id, renderer.manifest.updated_at, layer, tuple(wanted), tile)
    item = service.state.responses.render(key, lambda: (png_bytes(montage(renderer, layer, wanted, tile=tile)), {}))
    return png_response(request, item, PUBLIC)


__all__ = ["ScanService", "install", "on_startup", "router"]
