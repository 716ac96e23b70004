"""Feature visualisation by optimisation (issue 17): the request, a stored unit, the atlas folder."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from convscope.featvis.limits import DEFAULT_STEPS, MAX_SIZE, MIN_SIZE

MAX_API_STEPS = 2048
MAX_CHANNELS = 64

ObjectiveName = Literal["channel", "unit", "logit"]


class VisualizationRequest(BaseModel):
    """Units of one layer to visualise (for `logit`, `channels` are classes and `layer` is unused)."""

    layer: str | None = Field(default=None, max_length=300, description="module name (not needed for logit)")
    channels: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=MAX_CHANNELS)
    objective: ObjectiveName = "channel"
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=MAX_API_STEPS, description="Adam steps")
    size: int | None = Field(default=None, ge=MIN_SIZE, le=MAX_SIZE, description="image side (default: the model's)")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    position: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="unit objective: [y, x] in the layer's map (default: its centre)"
    )


class StoredUnit(BaseModel):
    channel: int
    cached: bool
    value: float | None = Field(description="the objective reached (when cached)")
    url: str = Field(description="its PNG (404 until computed)")


class AtlasInfo(BaseModel):
    available: bool
    url: str | None = Field(description="the atlas's index.html, served read-only by this server")
    model: str | None = None
