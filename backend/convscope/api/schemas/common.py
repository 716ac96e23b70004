"""Bodies every resource shares: errors and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in words")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="per-field validation errors, when there are any"
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "failed"]
    detail: str | None = Field(default=None, description="why the server is not ready, when it is not")
