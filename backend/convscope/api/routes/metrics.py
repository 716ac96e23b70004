"""`GET /api/metrics`: the server's Prometheus metrics (api/metrics.py), in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from convscope.api.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus text format: requests and latency per route, projection batch sizes, jobs, engine passes "
    "and cache bytes per model (the API token applies, as on every /api path but /api/health)",
    responses={200: {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(state: StateDep) -> Response:
    return Response(content=state.metrics.text(), media_type=CONTENT_TYPE_LATEST)
