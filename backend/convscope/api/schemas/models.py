"""Models and what they answer directly: the model list, layers, labels, predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from convscope.engine.engine import LayerInfo, Prediction


class Preprocessing(BaseModel):
    input_size: int = Field(description="side S of the S×S model input")
    mean: list[float] = Field(description="per-channel mean of x/255 (R, G, B)")
    std: list[float] = Field(description="per-channel std of x/255 (R, G, B)")
    crop_pct: float = Field(description="the shorter side is resized to S / crop_pct, then the central S×S is cut")


class ModelInfo(BaseModel):
    name: str
    default: bool = Field(description="the model used when a request names none")
    num_classes: int
    pretrained: bool
    input_size: int = Field(description="side S of the S×S model input")
    description: str = ""
    loaded: bool = Field(default=True, description="false: offered, loaded by the first request that needs it")
    preprocessing: Preprocessing | None = Field(
        default=None, description="how a photo becomes the model's input (timm pretrained_cfg keys)"
    )


class ReceptiveFieldInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    size: float = Field(description="side of the receptive field in input pixels (along the rows, y)")
    stride: float = Field(description="input pixels between neighbouring units (along y)")
    offset: float = Field(description="centre of unit (0, 0) in input pixels (along y)")
    size_x: float | None = Field(default=None, description="along the columns (x), only where it differs from size")
    stride_x: float | None = Field(default=None, description="along x, only where it differs from stride")
    offset_x: float | None = Field(default=None, description="along x, only where it differs from offset")

    @field_validator("size", "stride", "offset", "size_x", "stride_x", "offset_x")
    @classmethod
    def _rounded(cls, value: float | None) -> float | None:
        return None if value is None else round(float(value), 3)


class RuleCoverage(BaseModel):
    covered: list[str] = Field(description="element-wise activations below/at the layer that follow the mode's rule")
    uncovered: list[str] = Field(
        description="element-wise non-linearities below/at the layer the engine has no rule for: they keep their "
        "plain derivative in every mode"
    )


class LayerResponse(BaseModel):
    name: str = Field(description="module name, as in model.named_modules()")
    kind: str = Field(description="module class name")
    channels: int = Field(description="feature maps in the layer's output")
    height: int = Field(description="rows of each map")
    width: int = Field(description="columns of each map")
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

    @classmethod
    def from_info(cls, info: LayerInfo) -> LayerResponse:
        """The API's (and `convscope layers --json`'s) description of an engine layer."""
        rules = RuleCoverage(covered=list(info.rules_covered), uncovered=list(info.rules_uncovered))
        names = ("name", "kind", "channels", "height", "width", "has_switches", "units")
        fields = {name: getattr(info, name) for name in names}
        return cls(**fields, receptive_field=ReceptiveFieldInfo.model_validate(info.receptive_field), rules=rules)


class LabelInfo(BaseModel):
    index: int
    label: str


class PredictionResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    index: int = Field(description="class index")
    label: str = Field(description="class label")
    probability: float = Field(description="softmax probability")

    @classmethod
    def from_prediction(cls, prediction: Prediction) -> PredictionResponse:
        return cls.model_validate(prediction)
