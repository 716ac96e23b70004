"""The paper's analyses over HTTP: the request bodies of invariance, correspondence and dead channels,
and the JSON of their results (the jobs' `result`, the filters endpoint, and `convscope invariance /
correspond / filters --json`), made from the analyses' dataclasses by `from_result`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, Field

from convscope.jsonvalues import finite_or_none

if TYPE_CHECKING:
    from convscope.analysis.correspondence import CorrespondenceResult, RandomSummary
    from convscope.analysis.filters import DeadChannels, DeadLayer, FiltersReport, FrequencyCoverage
    from convscope.analysis.invariance import InvarianceCurve, InvarianceResult, Spread

MAX_REQUEST_IMAGES = 16
ImageIds = Annotated[
    list[Annotated[str, Field(max_length=200)]],
    Field(min_length=1, max_length=MAX_REQUEST_IMAGES, description="sample ids or upload ids"),
]
Layer = Annotated[str | None, Field(max_length=300)]
JsonFloat = Annotated[float | None, AfterValidator(lambda v: None if v is None else finite_or_none(v))]
"""A number that JSON can carry: NaN and infinities become null."""


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


# ---- invariance (Fig. 5) ---------------------------------------------------------------------------
class LowHigh(BaseModel):
    low: JsonFloat
    high: JsonFloat


class LowHighLayers(BaseModel):
    low: str = Field(description="the low layer (default: the first conv)")
    high: str = Field(description="the high layer (default: penultimate, the classifier's input)")


class LowHighCurves(BaseModel):
    low: list[JsonFloat]
    high: list[JsonFloat]


class StepSpread(BaseModel):
    """Per step over images: mean, std (ddof 1; null for one image), min and max."""

    mean: list[JsonFloat]
    std: list[JsonFloat]
    min: list[JsonFloat]
    max: list[JsonFloat]

    @classmethod
    def from_spread(cls, spread: Spread) -> StepSpread:
        return cls(mean=spread.mean, std=spread.std, min=spread.min, max=spread.max)


class LowHighSpread(BaseModel):
    low: StepSpread
    high: StepSpread


class InvarianceSummaryResponse(BaseModel):
    n: int = Field(description="images the spread is over")
    relative_distance: LowHighSpread
    probability: StepSpread


class InvarianceImage(BaseModel):
    image: str
    target: int = Field(description="the class whose probability is followed (default: the untransformed top-1)")
    target_label: str
    norm: LowHigh = Field(description="‖x₀‖ of the untransformed image's features")
    distance: LowHighCurves = Field(description="‖x − x₀‖ per transformation value")
    relative_distance: LowHighCurves = Field(description="‖x − x₀‖ / ‖x₀‖ (null where ‖x₀‖ = 0)")
    probability: list[JsonFloat]
    top_label: list[int]
    top_label_names: list[str]

    @classmethod
    def from_curve(cls, curve: InvarianceCurve, labels: list[str]) -> InvarianceImage:
        return cls(
            image=curve.image,
            target=curve.target,
            target_label=curve.target_label,
            norm=LowHigh(low=curve.low_norm, high=curve.high_norm),
            distance=LowHighCurves(low=list(curve.low_distance), high=list(curve.high_distance)),
            relative_distance=LowHighCurves(low=curve.relative_low, high=curve.relative_high),
            probability=list(curve.probability),
            top_label=curve.top_label,
            top_label_names=[labels[i] for i in curve.top_label],
        )


class InvarianceResponse(BaseModel):
    """Fig. 5: per image, the features' distance to the untransformed image and the class probability."""

    transform: Literal["translation", "scale", "rotation"]
    unit: str = Field(description="px, × or °")
    values: list[float] = Field(description="the transformation values, in order")
    edge: Literal["fill", "wrap"]
    input_size: int
    layers: LowHighLayers
    images: list[InvarianceImage]
    summary: InvarianceSummaryResponse
    forward_passes: int
    seconds: float

    @classmethod
    def from_result(cls, result: InvarianceResult) -> InvarianceResponse:
        from convscope.analysis.invariance import UNITS, invariance_summary

        summary = invariance_summary(result)
        return cls(
            transform=result.transform,
            unit=UNITS[result.transform],
            values=result.values,
            edge=result.edge,
            input_size=result.input_size,
            layers=LowHighLayers(low=result.low_layer, high=result.high_layer),
            images=[InvarianceImage.from_curve(curve, result.labels) for curve in result.curves],
            summary=InvarianceSummaryResponse(
                n=summary.n,
                relative_distance=LowHighSpread(
                    low=StepSpread.from_spread(summary.relative_low), high=StepSpread.from_spread(summary.relative_high)
                ),
                probability=StepSpread.from_spread(summary.probability),
            ),
            forward_passes=result.forward_passes,
            seconds=round(result.seconds, 3),
        )


# ---- correspondence (Fig. 8 / Table 1) ------------------------------------------------------------------
Box = tuple[int, int, int, int]


class RandomDelta(BaseModel):
    """The random boxes' Δ over draws (null where no draw gave a finite Δ)."""

    mean: JsonFloat
    std: JsonFloat
    min: JsonFloat
    max: JsonFloat
    values: list[float] = Field(description="one Δ per draw (finite ones)")

    @classmethod
    def from_summary(cls, summary: RandomSummary) -> RandomDelta:
        return cls(mean=summary.mean, std=summary.std, min=summary.min, max=summary.max, values=summary.values)


class PartResult(BaseModel):
    name: str
    boxes: list[Box] = Field(description="one [x, y, width, height] per image, in the S×S frame")
    delta: dict[str, JsonFloat] = Field(description="per layer: Δ of occluding this part")
    random_same_size: dict[str, RandomDelta] = Field(description="per layer: Δ of random boxes of this part's sizes")
    p_value: dict[str, JsonFloat] = Field(description="per layer: share of random draws with a Δ as low (+1 rule)")
    delta_nonzero: dict[str, JsonFloat] = Field(description="per layer: Δ over components that moved in both images")
    p_value_nonzero: dict[str, JsonFloat]


class RandomResult(BaseModel):
    draws: int
    seed: int
    delta: dict[str, RandomDelta] = Field(description="per layer; per draw, the mean over parts")
    delta_nonzero: dict[str, RandomDelta]
    boxes: list[dict[str, list[Box]]] = Field(description="per draw, per part: one box per image")


class TableCellResponse(BaseModel):
    mean: JsonFloat
    std: JsonFloat = Field(description="random boxes only: the spread over draws")
    p_value: JsonFloat = Field(description="parts only")


class TableRowResponse(BaseModel):
    occlusion: str = Field(description="a part's name, or `random`")
    delta: dict[str, TableCellResponse] = Field(description="per layer")


class CorrespondenceCounts(BaseModel):
    images: int
    pairs: int
    draws: int


class CorrespondenceResponse(BaseModel):
    """Fig. 8 / Table 1: Δ per part and for random boxes, per layer, with the Table 1-like `table`."""

    images: list[str]
    layers: list[str]
    input_size: int
    parts: list[PartResult]
    random: RandomResult
    table: list[TableRowResponse]
    n: CorrespondenceCounts
    forward_passes: int
    seconds: float

    @classmethod
    def from_result(cls, result: CorrespondenceResult) -> CorrespondenceResponse:
        layers = result.layers
        parts = [
            PartResult(
                name=part,
                boxes=boxes,
                delta={layer: result.part_delta[part][layer] for layer in layers},
                random_same_size={
                    layer: RandomDelta.from_summary(result.random_summary(layer, part)) for layer in layers
                },
                p_value={layer: result.p_value(part, layer) for layer in layers},
                delta_nonzero={layer: result.part_delta_nonzero[part][layer] for layer in layers},
                p_value_nonzero={layer: result.p_value(part, layer, nonzero=True) for layer in layers},
            )
            for part, boxes in result.parts.items()
        ]
        return cls(
            images=result.images,
            layers=layers,
            input_size=result.input_size,
            parts=parts,
            random=RandomResult(
                draws=result.draws,
                seed=result.seed,
                delta={layer: RandomDelta.from_summary(result.random_summary(layer)) for layer in layers},
                delta_nonzero={
                    layer: RandomDelta.from_summary(result.random_summary(layer, nonzero=True)) for layer in layers
                },
                boxes=result.random_boxes,
            ),
            table=[
                TableRowResponse(
                    occlusion=row.occlusion,
                    delta={
                        layer: TableCellResponse(mean=cell.mean, std=cell.std, p_value=cell.p_value)
                        for layer, cell in row.delta.items()
                    },
                )
                for row in result.table()
            ],
            n=CorrespondenceCounts(images=len(result.images), pairs=result.pairs, draws=result.draws),
            forward_passes=result.forward_passes,
            seconds=round(result.seconds, 3),
        )


# ---- filters (Fig. 6) ---------------------------------------------------------------------------------
class FrequencyResponse(BaseModel):
    """Each filter's share of spectral energy in a low, a mid and a high band of spatial frequency."""

    layer: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    channels: int
    bands: list[str] = Field(description="low, mid, high")
    band_edges: list[float] = Field(description="the bands' lower edges in radial frequency (a fraction of Nyquist)")
    per_filter: list[list[float]] = Field(description="per filter, its share in each band (rows add to 1)")
    mean: list[float]
    dominant_counts: list[int] = Field(description="filters whose largest share is in each band")
    white_reference: list[float] = Field(description="the shares of a white-noise kernel")

    @classmethod
    def from_coverage(cls, coverage: FrequencyCoverage) -> FrequencyResponse:
        from convscope.analysis.filters import BAND_EDGES, BAND_NAMES, white_reference

        return cls(
            layer=coverage.layer,
            kernel_size=coverage.kernel_size,
            stride=coverage.stride,
            channels=len(coverage.bands),
            bands=list(BAND_NAMES),
            band_edges=[0.0, *BAND_EDGES],
            per_filter=[[round(float(v), 6) for v in row] for row in coverage.bands],
            mean=coverage.mean,
            dominant_counts=coverage.dominant_counts,
            white_reference=white_reference(),
        )


class FiltersResponse(BaseModel):
    layer: str
    in_channels: int
    out_channels: int
    frequency: FrequencyResponse
    mosaic_url: str = Field(description="the filters as tiles (PNG)")

    @classmethod
    def from_coverage(cls, model: str, coverage: FrequencyCoverage, in_channels: int) -> FiltersResponse:
        layer = coverage.layer
        return cls(
            layer=layer,
            in_channels=in_channels,
            out_channels=len(coverage.bands),
            frequency=FrequencyResponse.from_coverage(coverage),
            mosaic_url=f"/api/models/{quote(model, safe='')}/filters/mosaic.png?layer={quote(layer, safe='')}",
        )


class DeadLayerResponse(BaseModel):
    layer: str = Field(description="the convolution")
    measured_at: str = Field(description="where `positive` is checked: its activation, or the conv itself")
    rectified: bool = Field(description="false: no activation follows, measured at the conv's own output")
    channels: int
    dead: int = Field(description="channels never positive over the images")
    dead_fraction: float
    dead_channels: list[int]

    @classmethod
    def from_layer(cls, layer: DeadLayer) -> DeadLayerResponse:
        dead = layer.dead
        return cls(
            layer=layer.layer,
            measured_at=layer.measured_at,
            rectified=layer.rectified,
            channels=layer.channels,
            dead=len(dead),
            dead_fraction=layer.dead_fraction,
            dead_channels=dead,
        )


class DeadChannelsResponse(BaseModel):
    images: list[str]
    layers: list[DeadLayerResponse]
    conv_layers: int
    total_channels: int
    total_dead: int
    rectified_dead: int = Field(description="dead channels measured after an activation")
    seconds: float

    @classmethod
    def from_result(cls, result: DeadChannels) -> DeadChannelsResponse:
        return cls(
            images=result.images,
            layers=[DeadLayerResponse.from_layer(layer) for layer in result.layers],
            conv_layers=len(result.layers),
            total_channels=result.total_channels,
            total_dead=result.total_dead,
            rectified_dead=result.rectified_dead,
            seconds=round(result.seconds, 3),
        )


class FiltersReportResponse(BaseModel):
    """`convscope filters --json`: the same `frequency` as GET .../filters and the same `dead` as the
    dead-channels job's result."""

    model: str
    frequency: FrequencyResponse
    dead: DeadChannelsResponse | None
    mosaic: str | None = Field(default=None, description="the mosaic PNG written, if any")

    @classmethod
    def from_report(cls, report: FiltersReport, mosaic: str | None = None) -> FiltersReportResponse:
        return cls(
            model=report.model,
            frequency=FrequencyResponse.from_coverage(report.frequency),
            dead=DeadChannelsResponse.from_result(report.dead) if report.dead is not None else None,
            mosaic=mosaic,
        )
