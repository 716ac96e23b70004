"""torchvision's ImageNet classics, with weights from the cache or a fast-failing download."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from convscope.errors import WeightsUnavailableError


def _constructors() -> dict[str, tuple[Callable[..., nn.Module], Any, dict[str, Any]]]:
    from torchvision import models as tvm

    return {
        "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1, {}),
        "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, {}),
        "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, {}),
        "googlenet": (
            tvm.googlenet,
            tvm.GoogLeNet_Weights.IMAGENET1K_V1,
            {"aux_logits": False, "transform_input": True, "init_weights": False},
        ),
    }


TORCHVISION_MODELS = ("alexnet", "vgg16", "resnet50", "googlenet")


def cached_weights_file(url: str) -> Path:
    """Where torch.hub keeps the file for `url` (under TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def weights_available(name: str, connect_timeout: float = 3.0) -> bool:
    """True when `name`'s ImageNet weights are cached under TORCH_HOME or their host can be reached."""
    _, enum, _ = _constructors()[name]
    return cached_weights_file(enum.url).is_file() or _reachable(enum.url, connect_timeout)


def _reachable(url: str, timeout: float) -> bool:
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def build_torchvision(
    name: str, weights: str | None = None, pretrained: bool = True, connect_timeout: float = 3.0
) -> nn.Module:
    """Build `name`; weights from `weights` (a file), the torch.hub cache, or a download.

    When no weights file is given and the ImageNet weights are neither cached nor
    reachable, fail within `connect_timeout` seconds with a message saying how to
    provide them.
    """
    from convscope.models.weights import load_weights

    constructor, enum, options = _constructors()[name]
    model = constructor(weights=None, **options)
    if weights is not None:
        load_weights(model, weights)
        return model
    if not pretrained:
        return model
    cached = cached_weights_file(enum.url)
    if not cached.is_file() and not _reachable(enum.url, connect_timeout):
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached at {cached} and {urlparse(enum.url).hostname} "
            f"cannot be reached. Download {enum.url} on a machine with internet and either copy it to "
            f"{cached} (set TORCH_HOME to use another cache) or pass --weights FILE."
        )
    try:
        state = enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:
        raise WeightsUnavailableError(f"could not load ImageNet weights for {name}: {exc}") from None
    model.load_state_dict(state, strict=True)
    return model
