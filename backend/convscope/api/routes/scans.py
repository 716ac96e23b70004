"""Top-k scans (paper Fig. 2): list a model's scans, read a channel's top-k with its crops and
deconvnet projections, draw the montage, and scan a server-side folder as a job.

Folders can only be scanned inside the roots the server is configured with
(`CONVSCOPE_SCAN_ROOTS`), named as `<root name>/<path>`; the bundled sample photos can
always be scanned (the dashboard does this for a layer the start-up scan left out). At start-up the server scans
the bundled sample photos for its default model in the background (a job), unless
`CONVSCOPE_SCAN_ON_STARTUP=false`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from convscope.api.budget import check_scan_memory
from convscope.api.caching import PUBLIC, Rendered, cache_key, etag_of, png_response
from convscope.api.deps import EngineDep, ScanServiceDep
from convscope.api.jobs import Job
from convscope.api.openapi import body_examples
from convscope.api.routes.common import MODEL_ERRORS, LayerQuery, errors, png_route
from convscope.api.routes.jobs import accepted, job_url
from convscope.api.scans import ScanService, install, on_startup, scan_url
from convscope.api.schemas import ErrorResponse, JobResponse, LayerResponse
from convscope.api.schemas.scans import ScanInfo, ScanProgress, ScanRequest, ScanRootInfo
from convscope.api.schemas.topk import ScanImageRef, TopEntry, TopProjection, TopResponse
from convscope.engine import Engine, LayerInfo
from convscope.engine.render import png_bytes
from convscope.engine.rules import Rule
from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.jsonvalues import finite_or_none
from convscope.scan.library import SAMPLES_SCAN, ScanEntry, normalise_folder
from convscope.scan.render import ScanRenderer

router = APIRouter(tags=["scans"])

ScanId = Annotated[
    str, Path(description="a scan id (see GET .../scans)", examples=[SAMPLES_SCAN], min_length=1, max_length=128)
]
ChannelQuery = Annotated[int, Query(ge=0, le=2**31 - 1, description="channel of the layer", examples=[0])]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "the scan is unfinished, or was made with other weights"}
}
MONTAGE_MAX_CHANNELS = 64
STARTS_JOB: dict[str, Any] = {"status_code": 202, "response_model": JobResponse}  # 202 + the job, as accepted()
ModeQuery = Annotated[
    Literal["auto", "deconvnet", "guided", "gradient"],
    Query(description="projection mode; auto: deconvnet where max-pool switches lie below the layer, else guided"),
]
MODE_HEADER: dict[str, Any] = {"X-Mode": {"description": "the mode used (auto resolved)", "schema": {"type": "string"}}}
FOLDERS_LISTED = 200


def _with_rules(engine: Engine, layer: LayerInfo) -> LayerInfo:
    """A scanned layer with the engine's switch and rule facts (the manifest keeps the shape only)."""
    try:
        known = engine.layer(layer.name)
    except ConvscopeError:
        return layer
    return replace(
        layer,
        has_switches=known.has_switches,
        rules_covered=known.rules_covered,
        rules_uncovered=known.rules_uncovered,
    )


def _scan_info(service: ScanService, engine: Engine, entry: ScanEntry) -> ScanInfo:
    manifest = entry.manifest
    config = manifest.config
    progress = manifest.progress
    job = service.job_for(entry.model, entry.id)
    label = str(manifest.extra.get("label") or manifest.extra.get("folder") or config.source_kind)
    status: Literal["running", "complete", "interrupted"] = "complete"
    if not manifest.complete:
        status = "running" if job is not None else "interrupted"  # no job behind it: a restart cut it short
    return ScanInfo(
        id=entry.id,
        model=entry.model,
        status=status,
        source=config.source_kind,
        label=label,
        images=config.image_count,
        top=config.top,
        layers=[LayerResponse.from_info(_with_rules(engine, layer)) for layer in config.layers],
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
        resume_url=f"{scan_url(entry.model, entry.id)}/resume" if status == "interrupted" else None,
    )


def _renderer(service: ScanService, engine: Engine, model: str, scan_id: str) -> ScanRenderer:
    entry = service.library.get(model, scan_id)
    return service.library.renderer(entry, engine)


@dataclass(frozen=True)
class ScanChannel:
    """One channel of a scan named by the query: the scan's renderer, the layer, the channel, and the
    projection mode resolved for the layer (mode=auto: deconvnet where switches lie below it)."""

    scan_id: str
    renderer: ScanRenderer
    layer: str
    channel: int
    mode: Rule


def scan_channel(
    service: ScanServiceDep,
    engine: EngineDep,
    scan_id: ScanId,
    layer: LayerQuery,
    channel: ChannelQuery,
    mode: ModeQuery = "deconvnet",
) -> ScanChannel:
    renderer = _renderer(service, engine, engine.name, scan_id)
    return ScanChannel(scan_id, renderer, layer, channel, engine.resolve_mode(layer, mode))


ScanChannelDep = Annotated[ScanChannel, Depends(scan_channel)]


# ---- routes ---------------------------------------------------------------------------------------
@router.get(
    "/models/{model}/scans",
    response_model=list[ScanInfo],
    summary="the model's top-k scans (the sample scan first), finished or running",
    responses=errors(404, 422, 503),
)
def list_scans(service: ScanServiceDep, engine: EngineDep) -> list[ScanInfo]:
    return [_scan_info(service, engine, entry) for entry in service.library.list(engine.name)]


@router.post(
    "/models/{model}/scans",
    **STARTS_JOB,
    summary="scan the sample photos, or a folder under one of the server's scan roots (a job; poll its url)",
    responses={
        403: {"model": ErrorResponse, "description": "no scan roots, or the folder is outside them"},
        **errors(400, 404, 422, 429, 503),
    },
    openapi_extra=body_examples(
        samples={"samples": True, "layers": ["conv_head"], "top": 9}, folder={"folder": "photos/cats"}
    ),
)
def start_scan(service: ScanServiceDep, engine: EngineDep, body: Annotated[ScanRequest, Body()]) -> JSONResponse:
    from convscope.scan.scanner import folder_source, resolve_layers, samples_source

    layers: str | list[str] | None = body.layers
    if body.layers == ["all"]:
        layers = "all"
    source: Any = samples_source
    extra: dict[str, Any] = {"label": "the bundled sample photos"}
    if body.folder is not None:
        folder = service.library.resolve_folder(body.folder)
        label = normalise_folder(body.folder)
        source, extra = (lambda: folder_source(folder, confine=True)), {"label": label, "folder": label}
    infos = resolve_layers(engine, layers)  # unknown layers: 404 now, not in the job
    check_scan_memory(service.state.settings, infos, service.state.settings.scan_batch_size)
    if body.folder is not None:
        scan_id = service.library.folder_scan_id(body.folder, body.layers, body.top)
    else:
        scan_id = service.library.samples_scan_id(body.layers, body.top)
    # replace=True: a folder that changed since its last scan is scanned anew
    work = service.scan_job(engine.name, scan_id, source, layers=layers, top=body.top, replace=True, extra=extra)
    job = service.submit(engine.name, scan_id, work)
    return accepted(job)


@router.post(
    "/models/{model}/scans/{scan_id}/resume",
    **STARTS_JOB,
    summary="finish an interrupted scan from its last checkpoint (a job; poll its url)",
    responses={
        403: {"model": ErrorResponse, "description": "the scanned folder is no longer inside a scan root"},
        **errors(404, 422, 429, 503),
    },
)
def resume_scan(service: ScanServiceDep, engine: EngineDep, scan_id: ScanId) -> JSONResponse:
    from convscope.scan.scanner import folder_source, samples_source

    entry = service.library.get(engine.name, scan_id)
    manifest = entry.manifest
    options: dict[str, Any] = {
        "layers": [layer.name for layer in manifest.config.layers],
        "top": manifest.config.top,
        "extra": dict(manifest.extra),
    }
    if manifest.config.source_kind == "folder":
        folder = service.library.resolve_folder(str(manifest.extra.get("folder", "")))
        work = service.scan_job(engine.name, scan_id, lambda: folder_source(folder, confine=True), **options)
    else:
        work = service.scan_job(engine.name, scan_id, samples_source, **options)
    job = service.submit(engine.name, scan_id, work)
    return accepted(job)


@router.get(
    "/models/{model}/scans/{scan_id}",
    response_model=ScanInfo,
    summary="one scan: what was scanned, its layers and progress",
    responses=errors(404, 422, 503),
)
def get_scan(service: ScanServiceDep, engine: EngineDep, scan_id: ScanId) -> ScanInfo:
    return _scan_info(service, engine, service.library.get(engine.name, scan_id))


@router.get(
    "/models/{model}/scans/{scan_id}/top",
    response_model=TopResponse,
    summary="the top-k of one channel: values, source images, and URLs of their crops and projections",
    responses={**errors(404, 422, 503), **CONFLICT},
)
def top(engine: EngineDep, unit: ScanChannelDep) -> TopResponse:
    renderer, layer, channel, resolved, scan_id = unit.renderer, unit.layer, unit.channel, unit.mode, unit.scan_id
    entries = renderer.entries(layer, channel)
    base = scan_url(engine.name, scan_id)
    query = urlencode({"layer": layer, "channel": channel})
    projection_query = urlencode({"layer": layer, "channel": channel, "mode": resolved})
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
                projection_url=f"{base}/top/{rank}/projection.png?{projection_query}",
            )
        )
    return TopResponse(
        scan=scan_id, layer=layer, channel=channel, top=renderer.manifest.config.top, mode=resolved, entries=rows
    )


@router.get(
    "/models/{model}/scans/{scan_id}/top/projections",
    response_model=list[TopProjection],
    summary="every top-k projection of one channel (in `mode`) in one answer, as data URLs: the bytes of each "
    "top/{rank}/projection.png, rendered together (one recorded forward pass per source image)",
    responses={**errors(404, 422, 503), **CONFLICT},
)
def top_projections(unit: ScanChannelDep) -> list[TopProjection]:
    renderer, layer, channel, resolved = unit.renderer, unit.layer, unit.channel, unit.mode
    ranks = range(len(renderer.entries(layer, channel)))
    renderer.render(layer, [(channel, rank) for rank in ranks], kinds=("projection",), mode=resolved)
    bodies = [renderer.png(layer, channel, rank, "projection", resolved) for rank in ranks]
    return [
        TopProjection(
            rank=rank,
            mode=resolved,
            etag=etag_of(body),
            png="data:image/png;base64," + base64.b64encode(body).decode("ascii"),
        )
        for rank, body in zip(ranks, bodies, strict=True)
    ]


def _png(request: Request, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return png_response(request, Rendered(body, etag_of(body), headers or {}), PUBLIC)


@png_route(
    router,
    "/models/{model}/scans/{scan_id}/top/{rank}/{kind}.png",
    "the receptive-field crop (kind=crop) or the projection (kind=projection, in `mode`) of one top-k entry",
    "RGB PNG, the size of the unit's receptive field",
    headers=MODE_HEADER,
    responses={**MODEL_ERRORS, **CONFLICT},
)
def top_image(
    request: Request,
    unit: ScanChannelDep,
    rank: Annotated[int, Path(ge=0, le=10_000, description="0 = the strongest")],
    kind: Annotated[Literal["crop", "projection"], Path(description="crop or projection")],
) -> Response:
    png = unit.renderer.png(unit.layer, unit.channel, rank, kind, unit.mode)
    return _png(request, png, {"X-Mode": unit.mode})


@png_route(
    router,
    "/models/{model}/scans/{scan_id}/images/{index}.png",
    "a scanned image as the model saw it (S×S)",
    "RGB PNG, S×S",
    responses={**MODEL_ERRORS, **CONFLICT},
)
def scan_image(
    request: Request,
    service: ScanServiceDep,
    engine: EngineDep,
    scan_id: ScanId,
    index: Annotated[int, Path(ge=0, le=2**53, description="image index in the scan")],
) -> Response:
    entry = service.library.get(engine.name, scan_id)
    renderer = ScanRenderer(entry.store)
    key = cache_key("scan-image", engine.name, scan_id, entry.manifest.created_at, index)
    item = service.state.responses.render(key, lambda: (png_bytes(renderer.display(index)), {}))
    return png_response(request, item, PUBLIC)


@png_route(
    router,
    "/models/{model}/scans/{scan_id}/montage.png",
    "a Fig. 2-style montage: per channel its top-k projections (in `mode`) beside the image patches; "
    "202 and a job to poll (its result names this URL) until it has been rendered",
    "RGB PNG",
    headers=MODE_HEADER,
    responses={
        202: {"model": JobResponse, "description": "being rendered as a job: poll its `url`, then GET this again"},
        **errors(404, 422, 429, 503),
        **CONFLICT,
    },
)
def montage_png(
    request: Request,
    service: ScanServiceDep,
    engine: EngineDep,
    scan_id: ScanId,
    layer: LayerQuery,
    channels: Annotated[
        str | None,
        Query(description="e.g. 0,1,5-8 (default: the first 16)", max_length=1000, examples=["0-3"]),
    ] = None,
    tile: Annotated[int, Query(ge=16, le=128, description="tile side in pixels")] = 48,
    mode: ModeQuery = "deconvnet",
) -> Response:
    from convscope.scan.montage import montage, parse_channels

    renderer = _renderer(service, engine, engine.name, scan_id)
    wanted = parse_channels(channels, renderer.manifest.layer(layer).channels)
    if len(wanted) > MONTAGE_MAX_CHANNELS:
        raise InvalidRequestError(f"at most {MONTAGE_MAX_CHANNELS} channels per montage")
    resolved = engine.resolve_mode(layer, mode)
    key = cache_key("montage", engine.name, scan_id, renderer.manifest.updated_at, layer, tuple(wanted), tile, resolved)
    responses = service.state.responses
    item = responses.get(key)
    if item is not None:
        return png_response(request, item, PUBLIC)
    url = request.url.path + (f"?{request.url.query}" if request.url.query else "")

    def work(job: Job) -> dict[str, Any]:  # up to 64 × k projections: never in a request thread
        body = png_bytes(montage(renderer, layer, wanted, tile=tile, mode=resolved, task=job))
        responses.put(key, Rendered(body, etag_of(body), {"X-Mode": resolved}))
        return {"url": url, "layer": layer, "channels": wanted, "mode": resolved}

    return accepted(service.montage(key, work, len(wanted)), **{"Retry-After": "1"})


@router.get(
    "/scan-roots",
    response_model=list[ScanRootInfo],
    summary="the folders this server may scan: each scan root and its subfolders (POST .../scans with folder)",
)
def list_scan_roots(service: ScanServiceDep) -> list[ScanRootInfo]:
    out = []
    for name, root in sorted(service.library.roots.items()):
        try:
            children = sorted(
                p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            )
        except OSError:
            children = []
        folders = [name] + [f"{name}/{child}" for child in children[:FOLDERS_LISTED]]
        out.append(ScanRootInfo(name=name, folders=folders))
    return out


__all__ = ["ScanService", "install", "on_startup", "router", "scan_url"]
