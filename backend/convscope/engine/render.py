"""Turning projections and feature maps into images (no web or CLI code here)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def contrast_normalise(projection: torch.Tensor) -> np.ndarray:
    """A 3×S×S raw projection as an S×S×3 uint8 image, per-image min-max to 0..255 (as in the paper)."""
    array = projection.detach().double().cpu().numpy()
    low, high = float(array.min()), float(array.max())
    flat = high - low < 1e-12
    scaled: np.ndarray = np.full(array.shape, 128.0) if flat else (array - low) / (high - low) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def projection_image(projection: torch.Tensor) -> Image.Image:
    return Image.fromarray(contrast_normalise(projection), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def sprite_grid(channels: int) -> tuple[int, int]:
    """(columns, rows) of a near-square grid holding `channels` tiles."""
    columns = max(1, math.ceil(math.sqrt(channels)))
    rows = max(1, math.ceil(channels / columns))
    return columns, rows


def activation_sprite(
    activations: torch.Tensor, tile: int | None = None, *, signed: bool = False
) -> tuple[Image.Image, int, int, int]:
    """Every channel of a C×H×W map as one grayscale sprite, row-major by channel index.

    Values are scaled by the layer's largest activation (0 and below are black), so
    tiles are comparable across channels; `signed`: 128 is zero and 0 / 255 the layer's
    largest magnitude (for layers with negative values). Returns (sprite, columns, rows, tile side).
    """
    maps = activations.detach().float().cpu()
    channels, height, width = maps.shape
    side = tile or max(height, width)
    columns, rows = sprite_grid(channels)
    peak = float(maps.max())
    scaled = (maps.clamp(min=0) / peak * 255.0) if peak > 0 else torch.zeros_like(maps)
    if signed:
        bound = float(maps.abs().max())
        scaled = maps / bound * 127.5 + 127.5 if bound > 0 else torch.full_like(maps, 127.5)
    if (height, width) != (side, side):
        scaled = torch.nn.functional.interpolate(scaled[None], size=(side, side), mode="nearest")[0]
    canvas = torch.zeros(rows * side, columns * side)
    for channel in range(channels):
        row, column = divmod(channel, columns)
        canvas[row * side : (row + 1) * side, column * side : (column + 1) * side] = scaled[channel]
    return Image.fromarray(canvas.round().clamp(0, 255).to(torch.uint8).numpy(), mode="L"), columns, rows, side
