"""Occlusion (paper Fig. 7; docs/architecture.md, "Occlusion"): the request and the maps."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OcclusionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=32, ge=1, description="occluder side in pixels")
    stride: int = Field(default=16, ge=1, description="pixels between occluder positions")
    target: int | None = Field(default=None, ge=0, description="class index (default: the unoccluded top-1)")
    layer: str | None = Field(default=None, description="feature-map layer (default: the last convolutional layer)")


class OcclusionFeature(BaseModel):
    model_config = ConfigDict(extra="allow")

    layer: str
    channel: int
    activity: list[list[float | None]] = Field(description="total activation of the channel; null if not finite")


class OcclusionReference(BaseModel):
    probability: float | None
    top_label: int
    activity: float | None


class OcclusionResponse(BaseModel):
    """Occlusion (docs/architecture.md): one value per occluder position, rows × cols."""

    model_config = ConfigDict(extra="allow")

    target: int = Field(description="the class whose probability is mapped (default: the unoccluded top-1)")
    target_label: str = Field(description="its label")
    size: int = Field(description="occluder side in pixels of the S×S input")
    stride: int = Field(description="pixels between occluder positions")
    rows: int = Field(description="positions down (top-left corners 0, stride, … while the square fits)")
    cols: int = Field(description="positions across")
    probability: list[list[float | None]] = Field(description="target-class probability; null if not finite")
    top_label: list[list[int]] = Field(description="most probable class index")
    feature: OcclusionFeature
    top_label_names: dict[str, str] | None = Field(
        default=None, description="class index -> label for every class in top_label, the target and the top-1"
    )
    unoccluded: OcclusionReference | None = Field(default=None, description="the values without an occluder")
