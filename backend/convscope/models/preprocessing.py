"""Per-model preprocessing: input size, mean, std and crop fraction, as timm's `pretrained_cfg`.

A model is fed an S×S image: the photo is resized (bilinear) so that its shorter
side is `round(S / crop_pct)`, the central S×S square is cut out, and each channel
is normalised with `(x / 255 - mean) / std`. `crop_pct = 1` (the default) keeps
the whole shorter side; timm's and torchvision's ImageNet evaluation uses 0.875
(resize to 256, crop 224).

Where the numbers come from, the first that has them winning, key by key:

1. explicit overrides (`load_model(preprocessing=...)`, the CLI's `--input-size`,
   `--mean`, `--std`, `--crop-pct`, the server's `CONVSCOPE_PREPROCESSING`);
2. for `package.module:callable` models, a `pretrained_cfg` (or `default_cfg`) on
   the returned module or on the callable, with timm's keys `input_size`
   (`(3, H, W)` or an int), `mean`, `std`, `crop_pct` (a timm model returned by
   the callable brings its own);
3. the registry's defaults (ImageNet mean and std, 224, crop 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from convscope.errors import InvalidRequestError
from convscope.models.spec import IMAGENET_MEAN, IMAGENET_STD

KEYS = ("input_size", "mean", "std", "crop_pct")


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the model's input (see the module docstring)."""

    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 1.0

    def updated(self, values: Mapping[str, Any] | None, source: str = "preprocessing") -> Preprocessing:
        """A copy with the given timm-style keys (None values ignored), each checked."""
        if not values:
            return self
        unknown = sorted(set(values) - set(KEYS) - {"interpolation", "num_classes", "first_conv", "classifier"})
        if unknown:
            raise InvalidRequestError(f"{source}: unknown key(s) {', '.join(unknown)}; use {', '.join(KEYS)}")
        changes: dict[str, Any] = {}
        if values.get("input_size") is not None:
            changes["input_size"] = _size(values["input_size"], source)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                changes[key] = _triple(values[key], key, source)
        if values.get("crop_pct") is not None:
            changes["crop_pct"] = _crop(values["crop_pct"], source)
        return replace(self, **changes)


def model_cfg(*owners: object) -> dict[str, Any]:
    """The first `pretrained_cfg` / `default_cfg` mapping found on `owners` (a module, a callable), else {}."""
    for owner in owners:
        for attribute in ("pretrained_cfg", "default_cfg"):
            cfg = getattr(owner, attribute, None)
            if cfg is not None and not isinstance(cfg, Mapping) and hasattr(cfg, "to_dict"):
                cfg = cfg.to_dict()  # timm's PretrainedCfg dataclass
            if isinstance(cfg, Mapping) and cfg:
                return {key: cfg[key] for key in KEYS if cfg.get(key) is not None}
    return {}


def model_options(args: Any) -> dict[str, Any]:
    """`load_model` keywords from the CLI's model flags (`--size`/`--input-size`, `--mean`, `--std`, `--crop-pct`)."""
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    return {
        "input_size": getattr(args, "input_size", None) or getattr(args, "size", None),
        "preprocessing": {
            "mean": parse_floats(mean, "--mean") if mean else None,
            "std": parse_floats(std, "--std") if std else None,
            "crop_pct": getattr(args, "crop_pct", None),
        },
    }


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """`0.5,0.5,0.5` (commas or spaces) -> a tuple of floats, for CLI flags."""
    try:
        return tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise InvalidRequestError(f"{what} must be three numbers such as 0.5,0.5,0.5, not {text!r}") from None


def _size(value: Any, source: str) -> int:
    if isinstance(value, (list, tuple)):
        dims = [int(v) for v in value]
        if len(dims) == 3:
            dims = dims[1:]
        if len(dims) != 2 or dims[0] != dims[1]:
            raise InvalidRequestError(f"{source}: input_size must be square (C, S, S) or S, got {tuple(value)}")
        value = dims[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or not 8 <= value <= 4096:
        raise InvalidRequestError(f"{source}: input_size must be an integer from 8 to 4096, got {value!r}")
    return int(value)


def _triple(value: Any, key: str, source: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{source}: {key} must be three numbers (R, G, B), got {value!r}") from None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise InvalidRequestError(f"{source}: {key} must be three finite numbers (R, G, B), got {value!r}")
    if key == "std" and not all(v > 0 for v in numbers):
        raise InvalidRequestError(f"{source}: std must be positive, got {value!r}")
    return numbers


def _crop(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= float(value) <= 1.0:
        raise InvalidRequestError(f"{source}: crop_pct must be a number from 0.1 to 1, got {value!r}")
    return float(value)
