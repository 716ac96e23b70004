"""The API routers, one module per resource; `api_router` mounts them all under /api."""

from fastapi import APIRouter

from convscope.api.routes import (
    activations,
    analysis,
    health,
    images,
    jobs,
    metrics,
    models,
    occlusion,
    projections,
    samples,
    studies,
    visualize,
)

api_router = APIRouter(prefix="/api")
for module in (health, models, samples, images, activations, projections, occlusion, jobs, analysis):
    api_router.include_router(module.router)
api_router.include_router(studies.router)
api_router.include_router(visualize.router)
api_router.include_router(metrics.router)

__all__ = ["api_router"]
