from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from convscope.api.deps import EngineDep, PoolDep, PreparedDep
from convscope.api.routes.common import MODEL_ERRORS, errors
from convscope.api.schemas import LabelInfo, LayerResponse, ModelInfo, PredictionResponse, Preprocessing

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelInfo], summary="the loaded models", responses=errors(503))
async def list_models(pool: PoolDep) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=engine.name,
            default=engine.name == pool.default,
            num_classes=engine.model.num_classes,
            pretrained=engine.model.pretrained,
            input_size=engine.input_size,
            description=engine.model.description,
            preprocessing=Preprocessing.model_validate(engine.model.preprocessing),
        )
        for engine in pool.engines()
    ]


@router.get(
    "/models/{model}/layers",
    response_model=list[LayerResponse],
    summary="every layer with a 4-D output, in forward order, with shape and receptive field",
    responses=errors(404, 422, 503),
)
async def list_layers(engine: EngineDep) -> list[LayerResponse]:
    return [LayerResponse.from_info(info) for info in engine.layers()]


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
