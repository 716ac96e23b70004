"""What a loaded model carries besides its weights: preprocessing and labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """An `nn.Module` in eval mode with the preprocessing and labels it was trained with."""

    name: str
    module: nn.Module
    labels: list[str]
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pretrained: bool = False
    crop_pct: float = 1.0  # shorter side resized to input_size / crop_pct, then the central square
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def preprocessing(self) -> dict[str, object]:
        """The preprocessing in timm's `pretrained_cfg` keys (see `convscope.models.preprocessing`)."""
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
        }
