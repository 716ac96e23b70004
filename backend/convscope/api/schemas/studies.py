"""Training-time studies: the listing of finished ones, and the request of the small digits run."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StudySummary(BaseModel):
    id: str = Field(description="path of the study's JSON below the studies folder, `~` for `/`, no `.json`")
    kind: str = Field(description="training, evolution, ablation or probe")
    title: str
    modified: str = Field(description="when the study was written (ISO 8601, UTC)")
    url: str = Field(description="the study document")
    image_url: str | None = Field(default=None, description="its PNG (the evolution montage), if any")
    table_url: str | None = Field(default=None, description="its Markdown table, if any")


class StudyList(BaseModel):
    studies_dir: str | None = Field(description="the name of the folder searched (the studies_dir setting)")
    studies: list[StudySummary]


class DigitsRunRequest(BaseModel):
    epochs: int = Field(default=5, ge=1, le=30, description="epochs of zfnet-small on the digits (about 5 s each)")
