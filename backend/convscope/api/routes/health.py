from __future__ import annotations

from fastapi import APIRouter, Response

from convscope.api.deps import StateDep
from convscope.api.schemas import EngineMemory, HealthResponse

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    summary="200 once every model is loaded, 503 before (or when loading failed)",
    responses={503: {"model": HealthResponse, "description": "still loading, or failed to load"}},
)
async def health(state: StateDep, response: Response) -> HealthResponse:
    pool = state.pool
    if pool.state == "ready":
        engines = []
        for engine in pool.engines():
            memory = engine.memory()
            engines.append(
                EngineMemory(
                    model=engine.name,
                    device=str(engine.device),
                    records=memory.records,
                    bytes=memory.bytes,
                    limit_bytes=memory.limit_bytes,
                )
            )
        return HealthResponse(status="ok", engines=engines)
    response.status_code = 503
    response.headers["Retry-After"] = "2"
    return HealthResponse(status=pool.state, detail=pool.error or "the models are still loading")
