"""Random transformations applied to the image before every optimisation step (Lucid's
`standard_transforms`: pad, jitter, scale, rotate, jitter). They make the result robust
to small shifts, so it shows what the unit responds to rather than adversarial noise.

One draw per step is shared by the whole batch (so a unit's result does not depend on the
other units in its batch), drawn from a CPU generator (so a seed gives the same sequence
on every device). The output keeps the S×S size: a single affine resampling of the
padded image, grey (0.5) outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAD = 12
JITTER = 8
FINE_JITTER = 4
SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))  # 0.90 .. 1.10
ANGLES = tuple(range(-10, 11)) + (0,) * 5  # degrees; 0 more often


@dataclass(frozen=True)
class Draw:
    dy: float
    dx: float
    scale: float
    angle: float  # degrees


def draw(generator: torch.Generator) -> Draw:
    """The random transformation of one step."""
    values = torch.randint(0, 1 << 30, (6,), generator=generator).tolist()
    dy = values[0] % (2 * JITTER + 1) - JITTER + values[4] % (2 * FINE_JITTER + 1) - FINE_JITTER
    dx = values[1] % (2 * JITTER + 1) - JITTER + values[5] % (2 * FINE_JITTER + 1) - FINE_JITTER
    return Draw(float(dy), float(dx), SCALES[values[2] % len(SCALES)], float(ANGLES[values[3] % len(ANGLES)]))


def apply(images: torch.Tensor, step: Draw) -> torch.Tensor:
    """Pad with grey, then scale, rotate and shift the K×3×S×S batch in one resampling."""
    _, _, height, width = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD), value=0.5)
    big = height + 2 * PAD
    angle = math.radians(step.angle)
    cos, sin = math.cos(angle) / step.scale, math.sin(angle) / step.scale
    # output grid in [-1, 1] of the S×S result -> input coordinates of the padded image
    ratio = height / big
    theta = torch.tensor(
        [
            [cos * ratio, -sin * ratio, -2.0 * step.dx / big],
            [sin * ratio, cos * ratio, -2.0 * step.dy / big],
        ],
        dtype=images.dtype,
        device=images.device,
    )
    grid = F.affine_grid(theta[None].expand(len(images), 2, 3), [len(images), 3, height, width], align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
