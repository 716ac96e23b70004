"""Top-k scans (paper Fig. 2): a scan, its request, a channel's top-k."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from convscope.api.schemas.models import LayerResponse


class ScanProgress(BaseModel):
    images_done: int = Field(description="images scanned so far (as of the last checkpoint)")
    skipped: int = Field(description="unreadable files skipped")
    next_batch: int
    batches: int
    seconds: float


class ScanInfo(BaseModel):
    id: str
    model: str
    status: Literal["running", "complete", "interrupted"] = Field(
        description="interrupted: unfinished and no job writes it (a restart); POST its resume_url to finish it"
    )
    source: str = Field(description="'samples' (the bundled photos) or 'folder'")
    label: str = Field(description="what was scanned, in words")
    images: int = Field(description="image files listed")
    top: int = Field(description="entries kept per channel (k)")
    layers: list[LayerResponse]
    progress: ScanProgress
    weights_match: bool = Field(description="the scan was made with this server's weights (projections available)")
    created_at: float
    finished_at: float | None
    job: str | None = Field(default=None, description="URL of the job scanning it, while it runs")
    url: str
    resume_url: str | None = Field(default=None, description="when interrupted: POST here to resume it (a job)")


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # folder xor samples: stated in x-convscope-rules (api/rules.py)

    folder: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="<root name>/<path inside it>, for a root listed in the server's scan_roots",
        examples=["photos/cats"],
    )
    samples: bool = Field(default=False, description="scan the bundled sample photos instead of a folder")
    layers: list[str] | None = Field(
        default=None, max_length=300, description="layer names; null: one per resolution; ['all']: every layer"
    )
    top: int = Field(default=9, ge=1, le=100, description="entries kept per channel")

    @model_validator(mode="after")
    def _one_source(self) -> ScanRequest:
        if (self.folder is None) == (not self.samples):
            raise ValueError("give either a folder or samples=true")
        return self


class ScanRootInfo(BaseModel):
    name: str = Field(description="the root's name (its folder name), the first part of a scan's `folder`")
    folders: list[str] = Field(description="the root itself and its subfolders, as `folder` values for a scan")
