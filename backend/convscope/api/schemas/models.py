"""Models and what they answer directly: the model list, layers, labels, predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

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
    preprocessing: Preprocessing | None = Field(
        default=None, description="how a photo becomes the model's input (timm pretrained_cfg keys)"
    )


class ReceptiveFieldInfo(BaseModel):
    size: float = Field(description="side of the receptive field in input pixels")
    stride: float = Field(description="input pixels between neighbouring units")
    offset: float = Field(description="centre of unit (0, 0) in input pixels")


class LayerResponse(BaseModel):
    name: str = Field(description="module name, as in model.named_modules()")
    kind: str = Field(description="module class name")
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveFieldInfo

    @classmethod
    def from_info(cls, info: LayerInfo) -> LayerResponse:
        """The API's (and `convscope layers --json`'s) description of an engine layer."""
        field_ = info.receptive_field
        return cls(
            name=info.name,
            kind=info.kind,
            channels=info.channels,
            height=info.height,
            width=info.width,
            receptive_field=ReceptiveFieldInfo(
                size=round(field_.size, 3), stride=round(field_.stride, 3), offset=round(field_.offset, 3)
            ),
        )


class LabelInfo(BaseModel):
    index: int
    label: str


class PredictionResponse(BaseModel):
    index: int
    label: str
    probability: float

    @classmethod
    def from_prediction(cls, prediction: Prediction) -> PredictionResponse:
        return cls(index=prediction.index, label=prediction.label, probability=prediction.probability)
