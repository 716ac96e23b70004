"""Occlusion (paper Fig. 7; docs/architecture.md, "Occlusion"): the request and the maps."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from convscope.api.schemas.common import refuse_booleans


class OcclusionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=32, ge=1, description="occluder side in pixels")
    stride: int = Field(default=16, ge=1, description="pixels between occluder positions")
    target: int | None = Field(default=None, ge=0, description="class index (default: the unoccluded top-1)")
    layer: str | None = Field(default=None, description="feature-map layer (default: the last convolutional layer)")
    method: Literal["auto", "dense", "incremental"] = Field(
        default="auto",
        description="incremental: rerun only what the occluder can change (exact); auto: incremental where it "
        "plans at most 2/3 of dense's arithmetic; a model torch.fx cannot trace runs dense (see `note`)",
    )
    approx: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="approximate: cap each layer's recomputed patch at this share tau of its map (not with dense)",
    )
    adaptive: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="approximate: occlude at twice the stride, then at the stride only in this share of cells "
        "where the target's probability dropped most",
    )

    _no_booleans = field_validator("size", "stride", "target", "approx", "adaptive", mode="before")(refuse_booleans)


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
    method: Literal["dense", "incremental"] | None = Field(default=None, description="the method that ran")
    method_requested: Literal["auto", "dense", "incremental"] | None = None
    planned_ratio: float | None = Field(
        default=None, description="incremental's planned arithmetic over dense's (null: not planned)"
    )
    approximate: bool | None = Field(default=None, description="true when approx or adaptive made the maps approximate")
    approx: float | None = Field(default=None, description="the projective-field cap tau, when it was applied")
    adaptive: float | None = Field(default=None, description="the adaptive drill-down share, when adaptive")
    positions_computed: int | None = Field(default=None, description="positions actually occluded")
    seconds: float | None = Field(default=None, description="computing time on the server")
    note: str | None = Field(default=None, description="why another method ran than the one asked for")
