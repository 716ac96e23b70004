"""Feature evolution during training (the paper's Fig. 4).

For each checkpoint of a run and each chosen feature map, the strongest activation
across an image set (by default the images the run trained on, as in the paper) is
found and projected down to pixel space with the deconvnet. The montage has one
row per feature map (grouped by layer) and one column per checkpoint (epoch); each
tile is the projection cropped to the unit's receptive field (`crop="rf"`, as the
paper's figure shows patches) or the whole input (`crop="full"`), contrast
normalised per tile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convscope.engine import Engine
from convscope.engine.render import contrast_normalise
from convscope.errors import InvalidRequestError
from convscope.layer_names import resolve_name
from convscope.studies.checkpoints import Checkpoint, load_checkpoint
from convscope.studies.data import ImageSet
from convscope.studies.store import FORMAT_VERSION
from convscope.tasks import Task, checkpoint

CROPS = ("rf", "full")
COLORS = ("auto", "rgb", "gray")


@dataclass(frozen=True)
class LayerChoice:
    layer: str
    channels: tuple[int, ...] | None = None  # None: a seeded random subset


def parse_layers(spec: str) -> list[LayerChoice]:
    """`conv1,conv2,conv5` (random channels) or `conv1:0,5,9;conv5:3` (explicit channels)."""
    text = spec.strip()
    if not text:
        raise InvalidRequestError("no layers given")
    parts = text.split(";") if (";" in text or ":" in text) else text.split(",")
    choices = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        name, _, channels = part.partition(":")
        picked: tuple[int, ...] | None = None
        if channels.strip():
            try:
                picked = tuple(int(c) for c in channels.replace(" ", "").split(",") if c)
            except ValueError:
                raise InvalidRequestError(f"bad channel list in {part!r}: use LAYER:0,5,9") from None
        choices.append(LayerChoice(name.strip(), picked))
    if not choices:
        raise InvalidRequestError("no layers given")
    return choices


def resolve_layer_name(engine: Engine, name: str) -> str:
    """A 4-D layer's full name: exact, or the one named `….name` ("conv1" -> "features.conv1")."""
    return resolve_name(name, (info.name for info in engine.layers()), model=engine.name)


@dataclass
class EvolutionResult:
    document: dict[str, Any]
    montage: Image.Image


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _strongest(
    engine: Engine, images: ImageSet, rows: Sequence[tuple[str, int]], batch_size: int
) -> list[tuple[float, int]]:
    """For each (layer, channel): (its largest activation over the set, the image holding it)."""
    layers = sorted({layer for layer, _ in rows})
    best = [(-float("inf"), -1)] * len(rows)
    offset = 0
    mean, std = engine.model.mean, engine.model.std
    for batch in images.batches(engine.input_size, mean, std, batch_size):
        _, outputs = engine.forward_batch(batch, layers)
        for k, (layer, channel) in enumerate(rows):
            peaks = outputs[layer][:, channel].float().amax(dim=(-2, -1)).cpu()
            value, index = peaks.max(dim=0)
            if float(value) > best[k][0]:
                best[k] = (float(value), offset + int(index))
        offset += len(batch)
    return best


def gray_projection(projection: torch.Tensor, std: Sequence[float]) -> torch.Tensor:
    """A 3×S×S projection seen in grey-pixel space (for grey image sets, where R = G = B):
    a grey change δ moves normalised channel c by δ/std_c, so the grey component is
    Σ_c p_c / std_c, shown in all three channels."""
    weights = torch.tensor([1.0 / s for s in std], dtype=projection.dtype).view(3, 1, 1)
    return (projection * weights).sum(dim=0, keepdim=True).expand(3, -1, -1)


def _tile(projection: torch.Tensor, box: tuple[int, int, int, int] | None, size: int, tile: int) -> Image.Image:
    """The projection (cropped to `box`, clamped into the image) as a tile×tile RGB image."""
    if box is not None:
        top, left, bottom, _ = box
        side = max(1, min(bottom - top, size))
        top = min(max(top, 0), size - side)
        left = min(max(left, 0), size - side)
        projection = projection[:, top : top + side, left : left + side]
    image = Image.fromarray(contrast_normalise(projection), mode="RGB")
    resample = Image.Resampling.NEAREST if image.width * 4 <= tile else Image.Resampling.LANCZOS
    return image.resize((tile, tile), resample)


def feature_evolution(
    checkpoints: Sequence[Checkpoint],
    images: ImageSet,
    layers: Sequence[LayerChoice],
    *,
    per_layer: int = 4,
    seed: int = 0,
    crop: str = "rf",
    color: str = "auto",
    tile: int = 64,
    device: str = "auto",
    batch_size: int = 128,
    title: str | None = None,
    task: Task | None = None,
) -> EvolutionResult:
    """Fig. 4 for a run's checkpoints: rows = feature maps, columns = checkpoints."""
    if not checkpoints:
        raise InvalidRequestError("no checkpoints to compare")
    if len(images) == 0:
        raise InvalidRequestError("the image set is empty")
    if crop not in CROPS:
        raise InvalidRequestError(f"unknown crop {crop!r}; use rf or full")
    if color not in COLORS:
        raise InvalidRequestError(f"unknown colour mode {color!r}; use auto, rgb or gray")
    gray = images.is_gray() if color == "auto" else color == "gray"
    if per_layer < 1 or tile < 8:
        raise InvalidRequestError("channels per layer must be ≥ 1 and tiles ≥ 8 pixels")
    began = time.perf_counter()

    # The rows: chosen (or seeded random) channels of each layer, checked on the first checkpoint.
    first = Engine(load_checkpoint(checkpoints[0].path), device_name=device)
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int]] = []
    resolved = [LayerChoice(resolve_layer_name(first, c.layer), c.channels) for c in layers]
    for choice in resolved:
        info = first.layer(choice.layer)  # NotFoundError for unknown / non-4-D layers
        if choice.channels is not None:
            for channel in choice.channels:
                if not 0 <= channel < info.channels:
                    raise InvalidRequestError(
                        f"channel {channel} is out of range for {choice.layer} (0..{info.channels - 1})"
                    )
            picked = list(choice.channels)
        else:
            picked = sorted(int(c) for c in rng.choice(info.channels, min(per_layer, info.channels), replace=False))
        rows.extend((choice.layer, channel) for channel in picked)
    del first

    columns: list[list[dict[str, Any]]] = []
    tiles: list[list[Image.Image]] = []
    for step, run_checkpoint in enumerate(checkpoints):
        engine = Engine(load_checkpoint(run_checkpoint.path), device_name=device, cache_size=2)
        size = engine.input_size
        strongest = _strongest(engine, images, rows, batch_size)
        column: list[dict[str, Any]] = []
        column_tiles: list[Image.Image] = []
        for (layer, channel), (value, index) in zip(rows, strongest, strict=True):
            prepared = engine.prepare(images.images[index])
            result = engine.project(prepared, layer, channel, mode="deconvnet", select="max")
            y, x = result.seed_position
            box = engine.layer(layer).receptive_field.box(y, x, size) if crop == "rf" else None
            projection = gray_projection(result.projection, engine.model.std) if gray else result.projection
            column_tiles.append(_tile(projection, box, size, tile))
            column.append(
                {
                    "layer": layer,
                    "channel": channel,
                    "epoch": run_checkpoint.epoch,
                    "image": index,
                    "label": images.classes[int(images.labels[index])],
                    "activation": value,
                    "position": [y, x],
                    "box": list(box) if box is not None else [0, 0, size, size],
                }
            )
        columns.append(column)
        tiles.append(column_tiles)
        checkpoint(task, step + 1, len(checkpoints), "evolution")
        del engine

    montage, geometry = _montage(rows, [c.label for c in checkpoints], tiles, tile)
    cells = [[columns[c][r] for c in range(len(checkpoints))] for r in range(len(rows))]
    document: dict[str, Any] = {
        "study": "evolution",
        "version": FORMAT_VERSION,
        "finished": True,
        "title": title or "Feature evolution",
        "epochs": [c.epoch for c in checkpoints],
        "checkpoints": [c.path.name for c in checkpoints],
        "rows": [{"layer": layer, "channel": channel} for layer, channel in rows],
        "shape": {"rows": len(rows), "cols": len(checkpoints)},
        "cells": cells,
        "crop": crop,
        "color": "gray" if gray else "rgb",
        "geometry": geometry,
        "drift": weight_drift(checkpoints),
        "images": {"dataset": images.name, "count": len(images)},
        "seconds": time.perf_counter() - began,
    }
    return EvolutionResult(document, montage)


def weight_drift(checkpoints: Sequence[Checkpoint]) -> dict[str, Any]:
    """How far each layer's weights still are from the last checkpoint's: ‖W_e − W_last‖ / ‖W_last‖
    per layer (rows) and checkpoint (columns). A layer has settled once its row is near 0."""
    from convscope.models.weights import read_state_dict

    states = [read_state_dict(c.path) for c in checkpoints]
    last = states[-1]
    names = [k for k, v in last.items() if k.endswith(".weight") and v.dim() in (2, 4)]
    values = []
    for name in names:
        norm = float(last[name].float().norm()) or 1.0
        values.append([float((state[name].float() - last[name].float()).norm()) / norm for state in states])
    return {"layers": [name.removesuffix(".weight") for name in names], "values": values}


def _montage(
    rows: Sequence[tuple[str, int]], epochs: Sequence[str], tiles: Sequence[Sequence[Image.Image]], tile: int
) -> tuple[Image.Image, dict[str, Any]]:
    """White canvas: epoch labels on top, `layer #channel` on the left, a gap between layers."""
    gap, block_gap, left, top = 2, 8, 72, 20
    row_y: list[int] = []
    y = top
    for r, (layer, _) in enumerate(rows):
        if r > 0:
            y += gap + (block_gap if rows[r - 1][0] != layer else 0)
        row_y.append(y)
        y += tile
    width = left + len(epochs) * (tile + gap) - gap + 4
    height = y + 4
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((4, 4), "epoch", fill=(40, 40, 40), font=font)
    for c, label in enumerate(epochs):
        x = left + c * (tile + gap)
        draw.text((x + 2, 4), label, fill=(40, 40, 40), font=font)
    for r, (layer, channel) in enumerate(rows):
        short = layer.rsplit(".", 1)[-1]
        draw.text((4, row_y[r] + tile // 2 - 6), f"{short} #{channel}", fill=(40, 40, 40), font=font)
        for c in range(len(epochs)):
            canvas.paste(tiles[c][r], (left + c * (tile + gap), row_y[r]))
    col_x = [left + c * (tile + gap) for c in range(len(epochs))]
    geometry = {
        "tile": tile,
        "left": left,
        "top": top,
        "width": width,
        "height": height,
        "row_y": row_y,
        "col_x": col_x,
    }
    return canvas, geometry
