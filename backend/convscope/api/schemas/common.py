"""Bodies every resource shares: errors and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def refuse_booleans(value: object) -> object:
    """For `field_validator(..., mode="before")` on number fields of a JSON body: JSON true is not the
    number 1 (JSON Schema agrees); 16.0 still is 16."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in words")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="per-field validation errors, when there are any"
    )


class EngineMemory(BaseModel):
    model: str
    device: str
    records: int = Field(
        description="recorded forward passes cached now (one per recently clicked image; a shared pass of several images, CONVSCOPE_SHARE_FORWARD, counts once)"
    )
    bytes: int = Field(
        description="bytes those records hold (saved tensors, layer outputs, inputs; a shared pass's once)"
    )
    limit_bytes: int = Field(description="the cache's bound (CONVSCOPE_ENGINE_CACHE_MB)")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "failed"]
    detail: str | None = Field(default=None, description="why the server is not ready, when it is not")
    engines: list[EngineMemory] | None = Field(default=None, description="per model, once ready: cache memory")
