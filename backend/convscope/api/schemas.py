"""Response and request bodies; they make `/openapi.json` and `/docs` describe every endpoint."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in words")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="per-field validation errors, when there are any"
    )


class EngineMemory(BaseModel):
    model: str
    device: str
    records: int = Field(description="recorded forward passes cached now (one per recently clicked image)")
    bytes: int = Field(description="bytes those records hold (saved tensors, layer outputs, inputs)")
    limit_bytes: int = Field(description="the cache's bound (CONVSCOPE_ENGINE_CACHE_MB)")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "failed"]
    detail: str | None = Field(default=None, description="why the server is not ready, when it is not")
    engines: list[EngineMemory] | None = Field(default=None, description="per model, once ready: cache memory")


class ModelInfo(BaseModel):
    name: str
    default: bool = Field(description="the model used when a request names none")
    num_classes: int
    pretrained: bool
    input_size: int = Field(description="side S of the S×S model input")
    description: str = ""
    loaded: bool = Field(default=True, description="false: offered, loaded by the first request that needs it")


class ReceptiveFieldInfo(BaseModel):
    size: float = Field(description="side of the receptive field in input pixels (along the rows, y)")
    stride: float = Field(description="input pixels between neighbouring units (along y)")
    offset: float = Field(description="centre of unit (0, 0) in input pixels (along y)")
    size_x: float | None = Field(default=None, description="along the columns (x), only where it differs from size")
    stride_x: float | None = Field(default=None, description="along x, only where it differs from stride")
    offset_x: float | None = Field(default=None, description="along x, only where it differs from offset")


class RuleCoverage(BaseModel):
    covered: list[str] = Field(description="element-wise activations below/at the layer that follow the mode's rule")
    uncovered: list[str] = Field(
        description="element-wise non-linearities below/at the layer the engine has no rule for: they keep their "
        "plain derivative in every mode"
    )


class LayerResponse(BaseModel):
    name: str = Field(description="module name, as in model.named_modules()")
    kind: str = Field(description="module class name")
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveFieldInfo
    has_switches: bool = Field(
        description="a max-pool with switches lies below the layer: deconvnet projections depend on the image; "
        "mode=auto resolves to deconvnet here, to guided elsewhere"
    )
    rules: RuleCoverage
    units: int | None = Field(
        default=None,
        description="2-D projection starts only (`logits`, linear layers): the unit count (channels = units, 1×1); "
        "channel = unit index, select does not apply",
    )


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


class PredictionResponse(BaseModel):
    index: int
    label: str
    probability: float


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

    @field_validator("size", "stride", "target", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        """JSON true is not the integer 1 (JSON Schema agrees); 16.0 still is 16."""
        if isinstance(value, bool):
            raise ValueError("expected an integer, not a boolean")
        return value


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
    """DESIGN §4/§6: one value per occluder position, rows × cols."""

    model_config = ConfigDict(extra="allow")

    target: int
    target_label: str
    size: int
    stride: int
    rows: int
    cols: int
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


class JobError(BaseModel):
    status: int
    detail: str


class JobResponse(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(description="0..1")
    done: int
    total: int
    cancel_requested: bool
    created_at: float = Field(description="seconds since the epoch")
    started_at: float | None
    finished_at: float | None
    url: str
    result: dict[str, Any] | None = Field(description="the result once succeeded (for occlusion: its 200 body)")
    error: JobError | None


# ---- top-k scans (paper Fig. 2) ------------------------------------------------------------------


class ScanLayerInfo(BaseModel):
    name: str
    kind: str
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveFieldInfo


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
    layers: list[ScanLayerInfo]
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


class ScanRootInfo(BaseModel):
    name: str = Field(description="the root's name (its folder name), the first part of a scan's `folder`")
    folders: list[str] = Field(description="the root itself and its subfolders, as `folder` values for a scan")
