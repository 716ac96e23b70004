"""The paper's architecture (Zeiler & Fergus 2014, Fig. 3), and its filter renormalisation.

At a 224×224 input the maps are 110, 55, 26, 13, 13, 13 and 6 pixels wide (conv1
padding 1, ceil-mode pooling), exactly as in the paper.

`first_layer="alexnet"` is the first layer the paper's Fig. 6 compares against:
Krizhevsky et al.'s 11×11 filters at stride 4 (padding 2), with conv2 at stride 1
(5×5, padding 2) so that every later map keeps its size — the change the paper made
the other way round (§4.1). At 224×224 its maps are 55, 27, 27, 13, …, 6; at 64×64
(`zfnet-small`) 15, 7, 7, 3, 3, 3, 1 — pool2 onwards exactly as the ZF layer's.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ZF_WIDTHS = (96, 256, 384, 384, 256)

# The layers the paper's Table 3 removes or resizes ("layers 3,4", "layers 6,7"); conv1,
# conv2 (with their pooling and normalisation) and the fc8 classifier always stay.
REMOVABLE_LAYERS = ("conv3", "conv4", "conv5", "fc6", "fc7")

# `zfnet-small`: the same topology with fewer channels, for 64×64 inputs and CPU training.
SMALL_WIDTHS = (32, 64, 96, 96, 64)
SMALL_FC_WIDTH = 512
SMALL_INPUT_SIZE = 64

# conv1 and conv2 as (kernel, stride, padding) for each first layer (the paper's Fig. 6):
# the paper's own 7×7/2, and Krizhevsky et al.'s 11×11/4 with a stride-1 conv2.
FIRST_LAYERS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "zf": ((7, 2, 1), (5, 2, 0)),
    "alexnet": ((11, 4, 2), (5, 1, 2)),
}


class ZFNet(nn.Module):
    """conv1..conv5 with ReLU, max-pooling and cross-map contrast normalisation; fc6, fc7, fc8."""

    def __init__(
        self,
        num_classes: int = 1000,
        widths: Sequence[int] = ZF_WIDTHS,
        fc_width: int = 4096,
        input_size: int = 224,
        dropout: float = 0.5,
        remove: Iterable[str | int] = (),
        first_layer: str = "zf",
    ) -> None:
        """`remove` drops whole layers as in the paper's Table 3 (e.g. `("conv3", "conv4")`,
        `(6, 7)`); the layers that remain keep their names and the shapes still connect.
        `first_layer` is "zf" (7×7/2) or "alexnet" (11×11/4, conv2 at stride 1; Fig. 6)."""
        super().__init__()
        if first_layer not in FIRST_LAYERS:
            raise ValueError(f"unknown first layer {first_layer!r}; use {' or '.join(FIRST_LAYERS)}")
        (k1, s1, p1), (k2, s2, p2) = FIRST_LAYERS[first_layer]
        c1, c2, c3, c4, c5 = widths
        self.input_size = input_size
        self.removed = removable_layers(remove)
        gone = set(self.removed)
        features: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, c1, kernel_size=k1, stride=s1, padding=p1)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
            ("norm1", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)),
            ("conv2", nn.Conv2d(c1, c2, kernel_size=k2, stride=s2, padding=p2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
            ("norm2", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)),
        ]
        channels = c2
        for index, width in ((3, c3), (4, c4), (5, c5)):
            if f"conv{index}" not in gone:
                features.append((f"conv{index}", nn.Conv2d(channels, width, kernel_size=3, padding=1)))
                features.append((f"relu{index}", nn.ReLU(inplace=True)))
                channels = width
        features.append(("pool5", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)))
        self.features = nn.Sequential(OrderedDict(features))
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, input_size, input_size)).numel()
        classifier: list[tuple[str, nn.Module]] = []
        units = flat
        for index in (6, 7):
            if f"fc{index}" not in gone:
                classifier.append((f"fc{index}", nn.Linear(units, fc_width)))
                classifier.append((f"relu{index}", nn.ReLU(inplace=True)))
                classifier.append((f"drop{index}", nn.Dropout(dropout)))
                units = fc_width
        classifier.append(("fc8", nn.Linear(units, num_classes)))
        self.classifier = nn.Sequential(OrderedDict(classifier))
        self.config: dict[str, Any] = {
            "num_classes": num_classes,
            "widths": list(widths),
            "fc_width": fc_width,
            "input_size": input_size,
            "dropout": dropout,
            "remove": list(self.removed),
            "first_layer": first_layer,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.features(x), 1)
        first = self.classifier[0]
        if isinstance(first, nn.Linear) and features.shape[1] != first.in_features:
            from convscope.errors import InvalidRequestError

            side = self.input_size
            raise InvalidRequestError(
                f"this ZFNet was built for {side}×{side} inputs, not {x.shape[-2]}×{x.shape[-1]} (load it with input size {side}, e.g. --size {side})"
            )
        return self.classifier(features)


def zfnet(num_classes: int = 1000) -> ZFNet:
    return ZFNet(num_classes=num_classes)


def removable_layers(remove: Iterable[str | int]) -> tuple[str, ...]:
    """Normalise layer names for `remove`: 3, "3", "conv3" -> "conv3"; 6, "fc6" -> "fc6".

    The result is in network order; unknown or non-removable layers raise ValueError.
    """
    names = set()
    for item in remove:
        text = str(item).strip().lower()
        if not text:
            continue
        if text.isdigit():
            text = f"conv{text}" if int(text) <= 5 else f"fc{text}"
        if text not in REMOVABLE_LAYERS:
            raise ValueError(f"layer {item!r} cannot be removed; removable: 3, 4, 5, 6, 7 (conv3..conv5, fc6, fc7)")
        names.add(text)
    return tuple(name for name in REMOVABLE_LAYERS if name in names)


def zfnet_small(
    num_classes: int = 10,
    widths: Sequence[int] = SMALL_WIDTHS,
    fc_width: int = SMALL_FC_WIDTH,
    input_size: int = SMALL_INPUT_SIZE,
    dropout: float = 0.5,
    remove: Iterable[str | int] = (),
    first_layer: str = "zf",
) -> ZFNet:
    """The ZF topology with fewer channels for small inputs (64×64: maps 30, 15, 6, 3, 3, 3, 1)."""
    return ZFNet(
        num_classes=num_classes,
        widths=widths,
        fc_width=fc_width,
        input_size=input_size,
        dropout=dropout,
        remove=remove,
        first_layer=first_layer,
    )


CONFIG_FILE = "model.json"


def zfnet_from_config(config: dict[str, Any]) -> ZFNet:
    """Rebuild a ZFNet from the `config` a trained one carries (`ZFNet.config`, saved as model.json)."""
    return ZFNet(
        num_classes=int(config.get("num_classes", 1000)),
        widths=tuple(int(w) for w in config.get("widths", ZF_WIDTHS)),
        fc_width=int(config.get("fc_width", 4096)),
        input_size=int(config.get("input_size", 224)),
        dropout=float(config.get("dropout", 0.5)),
        remove=tuple(str(r) for r in config.get("remove", ())),
        first_layer=str(config.get("first_layer", "zf")),
    )


def checkpoint_config(weights: str | Path) -> dict[str, Any] | None:
    """The architecture saved beside a checkpoint (`model.json` in its folder), if any."""
    sidecar = Path(weights).parent / CONFIG_FILE
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    architecture = data.get("architecture") if isinstance(data, dict) else None
    return architecture if isinstance(architecture, dict) else None


def config_from_state_dict(state: dict[str, torch.Tensor], input_size: int | None = None) -> dict[str, Any]:
    """Infer a ZFNet's config from a state dict's shapes (widths, fc width, classes, removed
    layers). The input size is the one given, else the first of 64, 224, 16..512 whose
    pool5 map fits fc6 (several sizes can give the same map: prefer a model.json)."""
    if "classifier.fc8.weight" not in state or "features.conv1.weight" not in state:
        raise ValueError("not a ZFNet state dict (no features.conv1 / classifier.fc8)")
    widths = [int(state["features.conv1.weight"].shape[0]), int(state["features.conv2.weight"].shape[0])]
    remove = []
    for index in (3, 4, 5):
        key = f"features.conv{index}.weight"
        if key in state:
            widths.append(int(state[key].shape[0]))
        else:
            widths.append(widths[-1])
            remove.append(f"conv{index}")
    first_layer = next(
        (name for name, (conv1, _) in FIRST_LAYERS.items() if conv1[0] == state["features.conv1.weight"].shape[-1]),
        "zf",
    )
    fc_width = 4096
    for index in (6, 7):
        key = f"classifier.fc{index}.weight"
        if key in state:
            fc_width = int(state[key].shape[0])
        else:
            remove.append(f"fc{index}")
    first_fc = next(
        k for k in ("classifier.fc6.weight", "classifier.fc7.weight", "classifier.fc8.weight") if k in state
    )
    flat = int(state[first_fc].shape[1])
    last_conv = next(f"features.conv{i}.weight" for i in (5, 4, 3, 2) if f"features.conv{i}.weight" in state)
    channels = int(state[last_conv].shape[0])
    config: dict[str, Any] = {
        "num_classes": int(state["classifier.fc8.weight"].shape[0]),
        "widths": widths,
        "fc_width": fc_width,
        "input_size": input_size,
        "dropout": 0.5,
        "remove": remove,
        "first_layer": first_layer,
    }
    if input_size is None:
        for size in (SMALL_INPUT_SIZE, 224, *range(16, 513)):
            if channels * _pool5_side(size, first_layer) ** 2 == flat:
                config["input_size"] = size
                break
        else:
            raise ValueError(f"no input size gives {flat} features after pool5")
    return config


def _pool5_side(size: int, first_layer: str = "zf") -> int:
    """Side of pool5's map for a size×size input (0 when the input is too small)."""
    conv1, conv2 = FIRST_LAYERS[first_layer]
    side = size
    for kernel, stride, padding in (conv1, (3, 2, -1), conv2, (3, 2, -1), (3, 2, -1)):
        if padding < 0:  # ceil-mode max-pool, no padding
            side = -(-(side - kernel) // stride) + 1
        elif side + 2 * padding < kernel:
            return 0
        else:
            side = (side + 2 * padding - kernel) // stride + 1
        if side < 1:
            return 0
    return side


def load_zfnet_checkpoint(weights: str | Path, input_size: int | None = None) -> ZFNet:
    """A trained ZFNet (any width, removed layers) from a state-dict file: the architecture
    from its model.json when there is one, else inferred from the shapes."""
    from convscope.models.weights import load_weights, read_state_dict

    config = checkpoint_config(weights)
    if config is None:
        try:
            config = config_from_state_dict(read_state_dict(weights), input_size)
        except ValueError as exc:
            from convscope.errors import WeightsUnavailableError

            raise WeightsUnavailableError(f"weights in {weights} are not a ZFNet's: {exc}") from None
    model = zfnet_from_config(config)
    load_weights(model, weights)
    return model


@torch.no_grad()
def renormalise_filters(model: nn.Module, radius: float = 0.1) -> int:
    """Rescale every conv filter whose RMS exceeds `radius` back to `radius` (paper §3).

    Returns how many filters were rescaled; filters at or under the radius are untouched.
    """
    rescaled = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight
            rms = weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            over = rms > radius
            if bool(over.any()):
                scale = torch.where(over, radius / rms.clamp_min(1e-12), torch.ones_like(rms))
                weight.mul_(scale)
                rescaled += int(over.sum())
    return rescaled
