"""Finished training-time studies, read-only (issue 9): training runs, feature evolution
(Fig. 4), layer ablation (Table 3) and linear probes (Table 7).

The studies are files that `convscope train`, `evolution`, `ablate` and `probe` wrote
somewhere below the `studies_dir` setting (`CONVSCOPE_STUDIES_DIR`); long training is a
CLI job, never an HTTP request. The one exception is the small digits run a fresh install
offers (`POST /api/studies/digits`): a job with progress that trains `zfnet-small` on
scikit-learn's digits for a few epochs into `<studies_dir>/digits-run`. A study's id is its JSON's path below that folder
without `.json`, with `~` for `/` (e.g. `digits~ablation`). Ids are looked up in the
listing, never joined into a path, and a study's image or table is served only when
it lies inside the study's own folder.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from convscope.api.caching import Rendered, etag_of, png_response
from convscope.api.deps import StateDep
from convscope.api.jobs import Job
from convscope.api.routes.common import errors, job_route, png_route
from convscope.api.routes.jobs import accepted
from convscope.api.schemas import DigitsRunRequest, ErrorResponse, StudyList, StudySummary
from convscope.api.state import AppState
from convscope.errors import NotFoundError
from convscope.scan.library import ForbiddenError
from convscope.studies.store import StudyFile, find_studies

router = APIRouter(tags=["studies"])

MAX_IMAGE_BYTES = 64 * 1024 * 1024

StudyId = Annotated[
    str,
    Path(description="a study id from GET /api/studies", examples=["digits~ablation"], max_length=300),
]


def _summary(study: StudyFile) -> StudySummary:
    base = f"/api/studies/{study.id}"
    return StudySummary(
        id=study.id,
        kind=study.kind,
        title=study.title,
        modified=datetime.fromtimestamp(study.modified, tz=timezone.utc).isoformat(timespec="seconds"),
        url=base,
        image_url=f"{base}/image.png" if study.related("image") else None,
        table_url=f"{base}/table.md" if study.related("markdown") else None,
    )


def _find(state: AppState, study_id: str) -> StudyFile:
    for study in find_studies(state.settings.studies_dir):
        if study.id == study_id:
            return study
    raise NotFoundError(f"no finished study {study_id!r} (see GET /api/studies)")


@router.get("/studies", response_model=StudyList, summary="finished studies under the studies folder, newest first")
def list_studies(
    state: StateDep,
    kind: Annotated[Literal["training", "evolution", "ablation", "probe"] | None, Query()] = None,
) -> StudyList:
    folder = state.settings.studies_dir
    found = [study for study in find_studies(folder) if kind is None or study.kind == kind]
    # the folder's name only: the absolute path is the server's business, not its clients'
    return StudyList(studies_dir=folder.name if folder is not None else None, studies=[_summary(s) for s in found])


@router.get(
    "/studies/{study_id}",
    summary="one study's document: its tables (ablation, probe), grid (evolution) or per-epoch log (training)",
    responses=errors(404),
)
def get_study(study_id: StudyId, state: StateDep) -> dict[str, Any]:
    study = _find(state, study_id)
    try:
        document = study.load()
    except (OSError, ValueError):
        raise NotFoundError(f"study {study_id!r} can no longer be read") from None
    summary = _summary(study)
    document.update({"id": study.id, "image_url": summary.image_url, "table_url": summary.table_url})
    return document


@png_route(
    router,
    "/studies/{study_id}/image.png",
    "the study's image (the evolution montage: rows = feature maps, columns = epochs)",
    "the montage",
    responses=errors(404),
)
def study_image(study_id: StudyId, request: Request, state: StateDep) -> Response:
    path = _find(state, study_id).related("image")
    if path is None or path.suffix.lower() != ".png" or path.stat().st_size > MAX_IMAGE_BYTES:
        raise NotFoundError(f"study {study_id!r} has no image")
    body = path.read_bytes()
    # a study may be rewritten in place (same id): revalidate every time, cheaply, by ETag
    return png_response(request, Rendered(body, etag_of(body)), "no-cache")


@router.get(
    "/studies/{study_id}/table.md",
    response_class=PlainTextResponse,
    summary="the study's table as Markdown (ablation, probe)",
    responses={
        200: {"content": {"text/markdown": {}}},
        404: {  # the route's class is text: say that its errors are JSON
            "description": "unknown study, or no table",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        },
    },
)
def study_table(study_id: StudyId, state: StateDep) -> PlainTextResponse:
    path = _find(state, study_id).related("markdown")
    if path is None:
        raise NotFoundError(f"study {study_id!r} has no table")
    return PlainTextResponse(path.read_text(), media_type="text/markdown; charset=utf-8")


DIGITS_RUN = "digits-run"


@job_route(
    router,
    "/studies/digits",
    "train the small digits study (zfnet-small on scikit-learn's digits) as a job; poll its url",
    examples={"quick": {"epochs": 5}, "one_epoch": {"epochs": 1}},
    responses={403: {"model": ErrorResponse, "description": "no studies folder is configured"}, **errors(422, 429)},
)
def run_digits(state: StateDep, body: Annotated[DigitsRunRequest | None, Body()] = None) -> JSONResponse:
    body = body or DigitsRunRequest()
    folder = state.settings.studies_dir
    if folder is None:
        raise ForbiddenError("this server has no studies folder (CONVSCOPE_STUDIES_DIR) to write the run to")
    out = folder / DIGITS_RUN

    def work(job: Job) -> dict[str, Any]:
        from convscope.studies.train import TrainConfig, train

        job.report(0, body.epochs)

        def echo(text: str) -> None:  # train() says "epoch k/N: ..." after each epoch
            job.check_cancelled()
            if text.startswith("epoch "):
                done = text.split(":", 1)[0].removeprefix("epoch ").split("/")[0]
                if done.isdigit():
                    job.report(int(done), body.epochs)

        result = train(TrainConfig(data="digits", epochs=body.epochs), out, device="cpu", resume=True, echo=echo)
        return {"run": DIGITS_RUN, "epochs": body.epochs, "final": result.final}

    job = state.jobs.submit("study", work, total=body.epochs)
    return accepted(job)
