"""Projections: the batch endpoint's request and its per-seed answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from convscope.api.schemas.common import refuse_booleans


class ProjectionSeed(BaseModel):
    """One seed of a batch projection: as the single endpoint's channel/select/y/x parameters."""

    model_config = ConfigDict(extra="forbid")

    channel: int = Field(ge=0, description="channel of the layer")
    select: Literal["max", "map"] = Field(
        default="max", description="max: the strongest activation; map: the whole map"
    )
    y: int | None = Field(default=None, ge=0, description="seed row (with x: project this unit instead)")
    x: int | None = Field(default=None, ge=0, description="seed column (with y)")

    _whole_numbers = field_validator("channel", "y", "x", mode="before")(refuse_booleans)

    @model_validator(mode="after")
    def _both_or_neither(self) -> ProjectionSeed:
        if (self.y is None) != (self.x is None):
            raise ValueError("give both y and x for a seed position, or neither")
        return self


class ProjectionsRequest(BaseModel):
    """Many projections of one image and layer, sharing one recorded forward pass."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(min_length=1, max_length=300, description="layer name (see .../layers)")
    mode: Literal["auto", "deconvnet", "guided", "gradient"] = Field(
        default="deconvnet", description="the rule for every seed; auto is resolved for the layer (see `mode`)"
    )
    seeds: list[ProjectionSeed] = Field(
        min_length=1, description="the seeds, at most the server's max_projection_seeds (default 64)"
    )


class ProjectionItem(BaseModel):
    """One seed's projection: what the single endpoint sends as PNG and X-* headers."""

    channel: int
    select: Literal["max", "map"]
    mode: Literal["deconvnet", "guided", "gradient"] = Field(description="the rule used (auto resolved)")
    seed_value: float = Field(description="activation value of the seed (sum of the map for select=map)")
    seed_y: int = Field(description="row of the seed in the layer's map, -1 for select=map")
    seed_x: int = Field(description="column of the seed in the layer's map, -1 for select=map")
    etag: str = Field(description="the single endpoint's ETag for the same PNG")
    png: str = Field(description="the S×S RGB PNG as a data URL (data:image/png;base64,...), usable as an img src")
