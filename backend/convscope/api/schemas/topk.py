"""A channel's top-k in a scan (paper Fig. 2): its entries with their images, crops and projections."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ScanImageRef(BaseModel):
    index: int = Field(description="index of the image in the scan")
    id: str = Field(description="the sample id (source 'samples') or the path inside the scanned folder")
    sample: bool = Field(description="true when `id` is a sample id usable as {image_id} elsewhere")
    url: str = Field(description="the S×S image the model saw, as PNG")


class TopEntry(BaseModel):
    rank: int
    value: float | None = Field(description="the activation; null if not finite")
    image: ScanImageRef
    y: int = Field(description="row of the unit in the layer's map")
    x: int = Field(description="column of the unit in the layer's map")
    box: list[int] = Field(description="[top, left, bottom, right] of the crop in the S×S input, half-open")
    crop_url: str
    projection_url: str


class TopResponse(BaseModel):
    scan: str
    layer: str
    channel: int
    top: int
    mode: str = Field(default="deconvnet", description="the projection mode of projection_url (auto resolved)")
    entries: list[TopEntry]


class TopProjection(BaseModel):
    """One top-k projection, as `top/{rank}/projection.png` sends it, inside a JSON answer."""

    rank: int
    mode: str = Field(description="the projection mode (auto resolved)")
    etag: str = Field(description="the ETag of the same PNG at its projection_url")
    png: str = Field(description="the PNG as a data URL (data:image/png;base64,...), usable as an img src")
