from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from convscope.api.deps import EngineDep, PoolDep, PreparedDep
from convscope.api.routes.common import MODEL_ERRORS, errors
from convscope.api.schemas import LabelInfo, LayerResponse, ModelInfo, PredictionResponse, Preprocessing

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=list[ModelInfo],
    summary="the models on offer (loaded, or loaded on first use)",
    responses=errors(503),
)
async def list_models(pool: PoolDep) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=row.name,
            default=row.name == pool.default,
            num_classes=row.num_classes,
            pretrained=row.pretrained,
            input_size=row.input_size,
            description=row.description,
            loaded=row.loaded,
            preprocessing=Preprocessing.model_validate(pool.get(row.name).model.preprocessing) if row.loaded else None,
        )
        for row in pool.summaries()
    ]


@router.get(
    "/models/{model}/layers",
    response_model=list[LayerResponse],
    response_model_exclude_none=True,
    summary="every layer with a 4-D output, in forward order, with shape and receptive field; then the 2-D "
    "projection starts (linear layers, `logits`) with their `units`",
    responses=errors(404, 422, 503),
)
async def list_layers(engine: EngineDep) -> list[LayerResponse]:
    return [LayerResponse.from_info(info) for info in engine.projection_starts()]


@router.get(
    "/models/{model}/labels",
    response_model=list[LabelInfo],
    summary="the model's class labels, by class index (for choosing an occlusion target)",
    responses=errors(404, 422, 503),
)
async def list_labels(engine: EngineDep) -> list[LabelInfo]:
    return [LabelInfo(index=index, label=label) for index, label in enumerate(engine.labels)]


@router.get(
    "/models/{model}/images/{image_id}/predictions",
    response_model=list[PredictionResponse],
    summary="the most probable classes",
    responses=MODEL_ERRORS,
)
def predictions(
    engine: EngineDep,
    prepared: PreparedDep,
    top: Annotated[int, Query(ge=1, le=1000, description="how many classes")] = 5,
) -> list[PredictionResponse]:
    return [PredictionResponse.from_prediction(p) for p in engine.predict(prepared, top)]
