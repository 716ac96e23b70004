"""The shapes of the server's JSON answers (docs/api.md), as the client returns them.

Plain dicts typed with `TypedDict`: what the server sends, key for key (`total=False` where the
server may add or omit keys), so nothing is lost when the server grows a field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from PIL import Image

__all__ = [
    "Activations",
    "Health",
    "Job",
    "Label",
    "LayerInfo",
    "ModelInfo",
    "Occlusion",
    "OcclusionMethod",
    "Prediction",
    "Projection",
    "SampleInfo",
    "ScanInfo",
    "ScanRoot",
    "Top",
    "Upload",
]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Mode = Literal["auto", "deconvnet", "guided", "gradient"]
Select = Literal["max", "map"]
OcclusionMethod = Literal["auto", "dense", "incremental"]


class Health(TypedDict, total=False):
    status: Literal["ok", "loading", "failed"]
    detail: str
    engines: list[dict[str, Any]]  # per model, once ready: its cache memory


class ModelInfo(TypedDict):
    name: str
    default: bool
    num_classes: int
    pretrained: bool
    input_size: int
    description: str


class ReceptiveField(TypedDict):
    size: float
    stride: float
    offset: float


class LayerInfo(TypedDict, total=False):
    name: str
    kind: str
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveField


class Label(TypedDict):
    index: int
    label: str


class SampleInfo(TypedDict):
    id: str
    name: str
    width: int
    height: int
    thumbnail_url: str


class Upload(TypedDict):
    id: str
    width: int
    height: int


class Prediction(TypedDict):
    index: int
    label: str
    probability: float


class SpriteInfo(TypedDict):
    url: str
    columns: int
    rows: int
    tile: int


class Activations(TypedDict):
    layer: str
    channels: int
    height: int
    width: int
    max: list[float]
    sum: list[float]
    argmax: list[list[int]]
    sprite: SpriteInfo


class OcclusionFeature(TypedDict):
    layer: str
    channel: int
    activity: list[list[float | None]]


class Occlusion(TypedDict, total=False):
    target: int
    target_label: str
    size: int
    stride: int
    rows: int
    cols: int
    probability: list[list[float | None]]
    top_label: list[list[int]]
    feature: OcclusionFeature
    top_label_names: dict[str, str]
    unoccluded: dict[str, Any]
    method: Literal["dense", "incremental"]  # the method that ran
    method_requested: OcclusionMethod
    planned_ratio: float | None  # incremental's planned arithmetic over dense's
    approximate: bool  # approx or adaptive made the maps approximate
    approx: float | None
    adaptive: float | None
    positions_computed: int
    seconds: float
    note: str | None  # why another method ran than the one asked for


class JobError(TypedDict):
    status: int
    detail: str


class Job(TypedDict):
    id: str
    kind: str
    state: JobState
    progress: float
    done: int
    total: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    url: str
    result: dict[str, Any] | None
    error: JobError | None


class ScanInfo(TypedDict, total=False):
    id: str
    model: str
    status: Literal["running", "complete"]
    source: str
    label: str
    images: int
    top: int
    layers: list[LayerInfo]
    progress: dict[str, Any]
    weights_match: bool
    created_at: float
    finished_at: float | None
    job: str | None
    url: str


class TopImage(TypedDict):
    index: int
    id: str
    sample: bool
    url: str


class TopEntry(TypedDict):
    rank: int
    value: float | None
    image: TopImage
    y: int
    x: int
    box: list[int]
    crop_url: str
    projection_url: str


class Top(TypedDict):
    scan: str
    layer: str
    channel: int
    top: int
    mode: str
    entries: list[TopEntry]


class ScanRoot(TypedDict):
    name: str
    folders: list[str]


@dataclass
class Projection:
    """A deconvnet projection: the S×S RGB image and its seed (from the X-Seed-* headers)."""

    image: Image.Image
    seed_value: float
    seed_y: int
    seed_x: int
    mode: str | None = None  # the rule the server used (X-Mode; `auto` resolved), where it says
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # the raw X-Seed-* (and X-Mode) headers

    @property
    def seed_position(self) -> tuple[int, int] | None:
        """(y, x) of the seed in the layer's map; None for `select=map`."""
        return None if self.seed_y < 0 else (self.seed_y, self.seed_x)
