"""Invariance curves (paper Fig. 5): how much features and the class probability move
when the image is translated vertically, scaled or rotated.

For every transformed copy of an image, and for two feature vectors (a low layer,
by default the first convolution, and the penultimate layer), the Euclidean
distance to the untransformed image's vector; and the softmax probability of a
target class, by default the untransformed image's top-1.

Transformed copies keep the S×S frame of docs/architecture.md "Preprocessing" and are cut from the original
photo, not from the S×S crop, so a vertical shift of a portrait photo shows more
of the photo rather than an empty border: the original is resized (antialiased)
so that its shorter side is S·scale, then rotated about the crop centre and
shifted, and pixels that fall outside the photo are filled with the model's mean
colour. The identity copy (shift 0, scale 1, angle 0) is exactly the model input
that `prepare_image` makes. `edge="wrap"` (translation only) instead shifts the
S×S model input circularly, which a network of circular convolutions and global
pooling cannot see at all.

Sign conventions: a positive translation moves the content down; a positive
angle rotates it counter-clockwise; a scale above 1 zooms in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

from convscope.analysis.features import (
    FeatureSpec,
    extract_features,
    first_conv_layer,
    resolve_feature,
)
from convscope.errors import InvalidRequestError
from convscope.images import normalise, resize_and_crop
from convscope.tasks import Task, checkpoint

if TYPE_CHECKING:
    from convscope.engine import Engine

Transform = Literal["translation", "scale", "rotation"]
Edge = Literal["fill", "wrap"]
TRANSFORMS: tuple[Transform, ...] = ("translation", "scale", "rotation")
EDGES: tuple[Edge, ...] = ("fill", "wrap")
UNITS: dict[str, str] = {"translation": "px", "scale": "×", "rotation": "°"}
IDENTITY: dict[str, float] = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}
# (start, stop, steps) as in the paper's Fig. 5
DEFAULT_RANGES: dict[str, tuple[float, float, int]] = {
    "translation": (-60.0, 60.0, 13),
    "scale": (1.0, 1.8, 9),
    "rotation": (0.0, 350.0, 36),
}
MAX_STEPS = 361
MAX_IMAGES = 16


def check_transform(transform: str) -> Transform:
    if transform not in TRANSFORMS:
        raise InvalidRequestError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")
    return transform  # type: ignore[return-value]


def transform_values(
    transform: str, start: float | None = None, stop: float | None = None, steps: int | None = None
) -> list[float]:
    """`steps` evenly spaced values from `start` to `stop` inclusive (defaults: the paper's ranges)."""
    kind = check_transform(transform)
    default_start, default_stop, default_steps = DEFAULT_RANGES[kind]
    start = default_start if start is None else float(start)
    stop = default_stop if stop is None else float(stop)
    steps = default_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidRequestError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise InvalidRequestError("start and stop must be finite numbers")
    if kind == "scale" and min(start, stop) <= 0.05:
        raise InvalidRequestError(f"scale factors must be above 0.05, got {start}…{stop}")
    if kind == "scale" and max(start, stop) > 8:
        raise InvalidRequestError(f"scale factors above 8 are not supported, got {start}…{stop}")
    if kind == "translation" and max(abs(start), abs(stop)) > 10_000:
        raise InvalidRequestError("translations beyond ±10000 px are not supported")
    if steps == 1:
        return [start]
    return [float(round(v, 10)) for v in np.linspace(start, stop, steps)]  # 1.7, not 1.7000000000000002


def _fill_rgb(mean: Sequence[float]) -> tuple[int, int, int]:
    r, g, b = (round(255 * float(m)) for m in mean[:3])
    return (r, g, b)


def transformed_image(
    image: Image.Image,
    size: int,
    transform: str,
    value: float,
    fill: tuple[int, int, int] = (124, 116, 104),
    edge: str = "fill",
    crop_pct: float = 1.0,
) -> Image.Image:
    """The S×S copy of `image` under one transformation (see the module docstring)."""
    kind = check_transform(transform)
    if edge not in EDGES:
        raise InvalidRequestError(f"unknown edge mode {edge!r}; use fill or wrap")
    image = image.convert("RGB")
    if edge == "wrap":
        if kind != "translation":
            raise InvalidRequestError("edge='wrap' (circular shift) applies to translation only")
        array = np.asarray(resize_and_crop(image, size, crop_pct))
        return Image.fromarray(np.roll(array, round(value), axis=0))
    scale = value if kind == "scale" else 1.0
    angle = math.radians(value) if kind == "rotation" else 0.0
    shift = value if kind == "translation" else 0.0
    if scale <= 0:
        raise InvalidRequestError(f"scale must be positive, got {scale}")

    # 1. the original resized (antialiased) so its shorter side is S·scale/crop_pct, as resize_and_crop
    #    does for scale 1
    width, height = image.size
    target = max(size, round(size / crop_pct)) * scale
    factor = target / min(width, height)
    new_w, new_h = max(round(target), round(width * factor)), max(round(target), round(height * factor))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    # 2. output pixel p -> resized pixel c_in + R(angle)^-1 (p - c_out - (0, shift)); c_in is the crop centre
    c_in = ((new_w - size) // 2 + size / 2, (new_h - size) // 2 + size / 2)
    c_out = (size / 2, size / 2 + shift)
    cos, sin = math.cos(angle), math.sin(angle)
    if abs(sin) < 1e-12:
        sin, cos = 0.0, math.copysign(1.0, cos)
    a, b, d, e = cos, -sin, sin, cos  # counter-clockwise on screen (y points down)
    c = c_in[0] - a * c_out[0] - b * c_out[1]
    f = c_in[1] - d * c_out[0] - e * c_out[1]
    return resized.transform(
        (size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR, fillcolor=fill
    )


@dataclass
class InvarianceCurve:
    """One image's three curves, one value per transformation value."""

    image: str
    target: int
    target_label: str
    low_norm: float  # ‖x‖ of the untransformed image at the low layer
    high_norm: float  # ‖x‖ at the high (penultimate) layer
    low_distance: list[float]
    high_distance: list[float]
    probability: list[float]
    top_label: list[int]

    @property
    def relative_low(self) -> list[float | None]:
        """‖x − x₀‖ / ‖x₀‖ at the low layer (None where the untransformed vector is zero)."""
        return _relative(self.low_distance, self.low_norm)

    @property
    def relative_high(self) -> list[float | None]:
        return _relative(self.high_distance, self.high_norm)


def _relative(distances: Sequence[float], norm: float) -> list[float | None]:
    return [d / norm if norm > 0 else None for d in distances]


@dataclass
class InvarianceResult:
    transform: Transform
    values: list[float]
    low_layer: str
    high_layer: str
    edge: Edge
    input_size: int
    curves: list[InvarianceCurve]
    labels: list[str] = field(repr=False, default_factory=list)
    forward_passes: int = 0
    seconds: float = 0.0


def invariance(
    engine: Engine,
    images: Sequence[tuple[str, Image.Image]],
    transform: str = "translation",
    *,
    start: float | None = None,
    stop: float | None = None,
    steps: int | None = None,
    values: Sequence[float] | None = None,
    low_layer: str | None = None,
    high_layer: str | None = None,
    edge: str = "fill",
    target: int | None = None,
    batch_size: int = 16,
    task: Task | None = None,
) -> InvarianceResult:
    """The Fig. 5 curves for each `(name, image)`; `values` overrides start/stop/steps."""
    began = time.perf_counter()
    kind = check_transform(transform)
    if edge not in EDGES:
        raise InvalidRequestError(f"unknown edge mode {edge!r}; use fill or wrap")
    if edge == "wrap" and kind != "translation":
        raise InvalidRequestError("edge='wrap' (circular shift) applies to translation only")
    if values is None:
        points = transform_values(kind, start, stop, steps)
    else:
        points = [float(v) for v in values]
        if not points or len(points) > MAX_STEPS or not all(math.isfinite(v) for v in points):
            raise InvalidRequestError(f"values must be 1 to {MAX_STEPS} finite numbers")
    if not images:
        raise InvalidRequestError("no images to transform")
    if len(images) > MAX_IMAGES:
        raise InvalidRequestError(f"{len(images)} images are more than the limit of {MAX_IMAGES}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch size must be a positive integer, got {batch_size!r}")
    num_classes = engine.model.num_classes
    if target is not None and (isinstance(target, bool) or not 0 <= int(target) < num_classes):
        raise InvalidRequestError(f"target class {target} is out of range (0..{num_classes - 1})")
    low = resolve_feature(engine, low_layer, default=first_conv_layer(engine))
    high = resolve_feature(engine, high_layer)
    specs: list[FeatureSpec] = [low, high]
    size = engine.input_size
    fill = _fill_rgb(engine.model.mean)
    mean, std = tuple(engine.model.mean), tuple(engine.model.std)

    total = len(images) * (len(points) + 1)
    done = 0
    curves: list[InvarianceCurve] = []
    for name, image in images:
        reference = engine.prepare(image).tensor
        crop = engine.model.crop_pct
        copies = [normalise(transformed_image(image, size, kind, v, fill, edge, crop), mean, std) for v in points]
        tensors = [reference, *copies]
        low_rows: list[torch.Tensor] = []
        high_rows: list[torch.Tensor] = []
        logit_rows: list[torch.Tensor] = []
        for begin in range(0, len(tensors), batch_size):
            chunk = torch.cat(tensors[begin : begin + batch_size])
            logits, feats = extract_features(engine, chunk, specs)
            logit_rows.append(logits)
            low_rows.append(feats[low.name])
            high_rows.append(feats[high.name])
            done += len(chunk)
            checkpoint(task, done, total, "invariance")
        logits_all = torch.cat(logit_rows).double()
        probabilities = torch.softmax(logits_all, dim=1)
        class_index = int(probabilities[0].argmax()) if target is None else int(target)
        low_all, high_all = torch.cat(low_rows).double(), torch.cat(high_rows).double()
        low_distance = (low_all[1:] - low_all[0]).norm(dim=1)
        high_distance = (high_all[1:] - high_all[0]).norm(dim=1)
        curves.append(
            InvarianceCurve(
                image=name,
                target=class_index,
                target_label=engine.labels[class_index],
                low_norm=float(low_all[0].norm()),
                high_norm=float(high_all[0].norm()),
                low_distance=[float(v) for v in low_distance],
                high_distance=[float(v) for v in high_distance],
                probability=[float(v) for v in probabilities[1:, class_index]],
                top_label=[int(v) for v in probabilities[1:].argmax(dim=1)],
            )
        )
    return InvarianceResult(
        transform=kind,
        values=points,
        low_layer=low.name,
        high_layer=high.name,
        edge=edge,  # type: ignore[arg-type]
        input_size=size,
        curves=curves,
        labels=engine.labels,
        forward_passes=total,
        seconds=time.perf_counter() - began,
    )


@dataclass
class Spread:
    """Per step over images: mean, std (ddof 1; None for one image), min and max, skipping Nones."""

    mean: list[float | None]
    std: list[float | None]
    min: list[float | None]
    max: list[float | None]


def spread(rows: Sequence[Sequence[float | None]]) -> Spread:
    columns = [[v for v in column if v is not None] for column in zip(*rows, strict=True)]
    return Spread(
        mean=[float(np.mean(c)) if c else None for c in columns],
        std=[float(np.std(c, ddof=1)) if len(c) > 1 else None for c in columns],
        min=[float(min(c)) if c else None for c in columns],
        max=[float(max(c)) if c else None for c in columns],
    )


@dataclass
class InvarianceSummary:
    """The curves' spread across images at every step (each image's probability is of its own
    untransformed top-1), with n: what a claim about "the" curve rests on."""

    n: int
    relative_low: Spread
    relative_high: Spread
    probability: Spread


def invariance_summary(result: InvarianceResult) -> InvarianceSummary:
    curves = result.curves
    return InvarianceSummary(
        n=len(curves),
        relative_low=spread([curve.relative_low for curve in curves]),
        relative_high=spread([curve.relative_high for curve in curves]),
        probability=spread([curve.probability for curve in curves]),
    )


def plot_invariance(result: InvarianceResult, path: str) -> None:
    """The three panels of Fig. 5 (low-layer distance, high-layer distance, probability) as one PNG."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend switch

    figure = Figure(figsize=(13.5, 4.0), dpi=110, layout="constrained")
    axes = figure.subplots(1, 3)
    unit = UNITS[result.transform]
    for curve in result.curves:
        axes[0].plot(result.values, curve.low_distance, marker=".", label=curve.image)
        axes[1].plot(result.values, curve.high_distance, marker=".", label=curve.image)
        axes[2].plot(result.values, curve.probability, marker=".", label=f"{curve.image}: {curve.target_label}")
    titles = (
        f"low layer ({result.low_layer}): ‖x − x₀‖",
        f"high layer ({result.high_layer}): ‖x − x₀‖",
        "probability of the untransformed top-1",
    )
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(f"{result.transform} ({unit})")
        axis.grid(alpha=0.3)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=7)
    figure.savefig(path)
