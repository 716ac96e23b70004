"""Images: samples, uploads, and a layer's activations on one."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SampleInfo(BaseModel):
    id: str
    name: str
    width: int = Field(description="original width in pixels")
    height: int = Field(description="original height in pixels")
    thumbnail_url: str


class UploadResponse(BaseModel):
    id: str = Field(description="random id to use as {image_id}")
    width: int = Field(description="original width in pixels")
    height: int = Field(description="original height in pixels")


class SpriteInfo(BaseModel):
    url: str = Field(description="grayscale PNG holding every channel's map")
    columns: int
    rows: int
    tile: int = Field(description="side of one tile in pixels; channel c is at row c // columns, column c % columns")


class ActivationsResponse(BaseModel):
    layer: str
    channels: int
    height: int
    width: int
    max: list[float] = Field(description="per channel: largest activation")
    min: list[float] | None = Field(default=None, description="per channel: smallest activation (may be negative)")
    sum: list[float] = Field(description="per channel: total activation")
    argmax: list[list[int]] = Field(description="per channel: [y, x] of the largest activation")
    sprite: SpriteInfo
