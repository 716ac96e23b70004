"""Jobs: long work as a resource with progress, a result and cancellation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class JobError(BaseModel):
    status: int
    detail: str


class JobResponse(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(description="0..1")
    done: int
    total: int
    cancel_requested: bool
    created_at: float = Field(description="seconds since the epoch")
    started_at: float | None
    finished_at: float | None
    url: str
    result: dict[str, Any] | None = Field(description="the result once succeeded (for occlusion: its 200 body)")
    error: JobError | None
