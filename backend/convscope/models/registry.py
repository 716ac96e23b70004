"""The model registry: a name (or `package.module:callable`) -> a `LoadedModel`.

Built-ins are listed in `BUILTIN_MODELS`; any importable callable returning an
`nn.Module` works too, with `weights` a state-dict file loaded with
`torch.load(..., weights_only=True)`. Each model's preprocessing (input size, mean,
std, crop fraction) follows timm's `pretrained_cfg` convention; see
`convscope.models.preprocessing` for where the numbers come from.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.errors import InvalidRequestError, NotFoundError
from convscope.models.labels import labels_for
from convscope.models.preprocessing import Preprocessing, model_cfg
from convscope.models.spec import LoadedModel

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    build: Callable[[str | None, bool], nn.Module]
    has_pretrained: bool
    preprocessing: Mapping[str, Any] = field(default_factory=dict)  # timm-style keys over the defaults


def _efficientnet(weights: str | None, pretrained: bool) -> nn.Module:
    from convscope.models.efficientnet_lite import build_efficientnet_lite0

    if not pretrained and weights is None:
        import timm

        return timm.create_model("efficientnet_lite0", pretrained=False)
    return build_efficientnet_lite0(weights)


def _zfnet(weights: str | None, pretrained: bool) -> nn.Module:
    from convscope.models.weights import load_weights
    from convscope.models.zfnet import zfnet

    model = zfnet()
    if weights is not None:
        load_weights(model, weights)
    return model


def _zfnet_small(weights: str | None, pretrained: bool) -> nn.Module:
    """`zfnet-small` (64×64 inputs: load it with input_size=64, `--size 64`): random init with
    10 classes, or a trained checkpoint (`convscope train`), its architecture read from the
    model.json beside it or inferred from the weights' shapes."""
    from convscope.models.zfnet import load_zfnet_checkpoint, zfnet_small

    if weights is None:
        return zfnet_small()
    return load_zfnet_checkpoint(weights)


def _torchvision(name: str) -> Callable[[str | None, bool], nn.Module]:
    def build(weights: str | None, pretrained: bool) -> nn.Module:
        from convscope.models.torchvision_zoo import build_torchvision

        return build_torchvision(name, weights=weights, pretrained=pretrained)

    return build


BUILTIN_MODELS: dict[str, ModelEntry] = {
    "efficientnet_lite0": ModelEntry(
        "efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights bundled (default)", _efficientnet, True
    ),
    "alexnet": ModelEntry("alexnet", "torchvision AlexNet, ImageNet", _torchvision("alexnet"), True),
    "vgg16": ModelEntry("vgg16", "torchvision VGG16, ImageNet", _torchvision("vgg16"), True),
    "resnet50": ModelEntry("resnet50", "torchvision ResNet-50, ImageNet", _torchvision("resnet50"), True),
    "googlenet": ModelEntry("googlenet", "torchvision GoogLeNet, ImageNet", _torchvision("googlenet"), True),
    "zfnet": ModelEntry("zfnet", "Zeiler & Fergus 2014 architecture (random init unless --weights)", _zfnet, False),
    "zfnet-small": ModelEntry(
        "zfnet-small",
        "ZF topology, fewer channels, 64×64 input (random init, or a `convscope train` checkpoint)",
        _zfnet_small,
        False,
        {"input_size": 64},
    ),
}

_CALLABLE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _import_callable(reference: str) -> Callable[[], nn.Module]:
    module_name, attr = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(f"cannot import module {module_name!r} for model {reference!r}: {exc}") from None
    target = getattr(module, attr, None)
    if target is None or not callable(target):
        raise NotFoundError(f"{module_name!r} has no callable {attr!r}")
    return target  # type: ignore[no-any-return]


def _output_classes(module: nn.Module, size: int) -> int:
    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InvalidRequestError("the model must return a 2-D tensor of class scores (batch × classes)")
    return int(out.shape[1])


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | None = None,
    *,
    pretrained: bool = True,
    input_size: int | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build a model by registry name or `package.module:callable`, in eval mode, frozen.

    `pretrained=False` gives the architecture with random weights (for tests and
    studies); `weights` loads a state-dict file instead of the default weights.
    `input_size` and `preprocessing` (timm keys `input_size`, `mean`, `std`,
    `crop_pct`) override the model's own preprocessing.
    """
    pre = Preprocessing()
    if name in BUILTIN_MODELS:
        entry = BUILTIN_MODELS[name]
        module = entry.build(weights, pretrained)
        is_pretrained = weights is not None or (pretrained and entry.has_pretrained)
        description = entry.description
        pre = pre.updated(entry.preprocessing, f"model {name}")
    elif _CALLABLE_REF.match(name):
        factory = _import_callable(name)
        module = factory()
        if not isinstance(module, nn.Module):
            raise InvalidRequestError(f"{name} returned {type(module).__name__}, not a torch.nn.Module")
        if weights is not None:
            from convscope.models.weights import load_weights

            load_weights(module, weights)
        is_pretrained = weights is not None
        description = f"custom model {name}"
        pre = pre.updated(model_cfg(module, factory), f"{name} pretrained_cfg")
    else:
        known = ", ".join(BUILTIN_MODELS)
        raise NotFoundError(f"unknown model {name!r}; use one of {known} or package.module:callable")
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    pre = pre.updated({"input_size": input_size}, "input size").updated(preprocessing)
    labels = labels_for(_output_classes(module, pre.input_size))
    return LoadedModel(
        name=name,
        module=module,
        labels=labels,
        input_size=pre.input_size,
        mean=pre.mean,
        std=pre.std,
        pretrained=is_pretrained,
        description=description,
        crop_pct=pre.crop_pct,
    )
