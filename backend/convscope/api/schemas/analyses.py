"""The paper's analyses over HTTP: the request bodies of invariance, correspondence and dead channels."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

MAX_REQUEST_IMAGES = 16
ImageIds = Annotated[
    list[Annotated[str, Field(max_length=200)]],
    Field(min_length=1, max_length=MAX_REQUEST_IMAGES, description="sample ids or upload ids"),
]
Layer = Annotated[str | None, Field(max_length=300)]


class InvarianceRequest(BaseModel):
    """Fig. 5: each transformed copy's feature distance to the untransformed image, and the class probability."""

    images: ImageIds = Field(default_factory=lambda: ["chelsea"])
    transform: Literal["translation", "scale", "rotation"] = "translation"
    start: float | None = Field(default=None, description="default: -60 px, 1.0×, 0°")
    stop: float | None = Field(default=None, description="default: 60 px, 1.8×, 350°")
    steps: int | None = Field(default=None, ge=1, le=361, description="default: 13, 9, 36")
    low_layer: Layer = Field(default=None, description="a module name or NAME:input (default: the first conv)")
    high_layer: Layer = Field(default=None, description="default: penultimate (the classifier's input)")
    edge: Literal["fill", "wrap"] = Field(default="fill", description="wrap: circular shift (translation only)")
    target: int | None = Field(default=None, ge=0, description="class (default: the untransformed top-1)")


class CorrespondenceRequest(BaseModel):
    """Fig. 8 / Table 1: Δ of occluding the same part in every image, against random same-size boxes."""

    images: ImageIds
    parts: dict[
        Annotated[str, Field(max_length=100)],
        list[list[float]] | dict[Annotated[str, Field(max_length=200)], list[float]],
    ] = Field(
        description="per part, one box [x, y, width, height] per image (a list in image order, or {image id: box})",
        examples=[{"left_eye": [[81, 39, 14, 9], [84, 56, 24, 14]]}],
    )
    size: int | None = Field(default=None, ge=1, le=4096, description="the frame the boxes are in (default: S)")
    layers: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None, min_length=1, max_length=4, description="default: the last conv layer and the penultimate"
    )
    draws: int = Field(default=5, ge=1, le=100, description="random-box draws")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class DeadChannelsRequest(BaseModel):
    images: list[Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=256, description="image ids (default, or null: every sample photo)"
    )
