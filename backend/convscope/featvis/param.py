"""The image parameterisation of Olah, Mordvintsev & Schubert, "Feature Visualization"
(Distill 2017): a Fourier-space image whose frequencies are scaled by 1/f (so plain
gradient steps do not favour high frequencies), mapped through a decorrelated colour
basis and a sigmoid into [0, 1] RGB.

`FourierImage` holds the optimised parameters for a batch of K images; calling it
gives the K×3×S×S RGB batch. The initial spectrum comes from a CPU generator, so the
same seed gives the same start on every device.
"""

from __future__ import annotations

import torch
from torch import nn

# The square root of ImageNet's colour covariance (Lucid's `color_correlation_svd_sqrt`),
# scaled so its largest column has unit norm.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32)
COLOR_MATRIX = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def rfft2d_freqs(height: int, width: int) -> torch.Tensor:
    """|f| of each coefficient of a real 2-D FFT of an H×W image (H × (W//2 + 1))."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class FourierImage(nn.Module):
    """K images of S×S, parameterised by a 1/f-scaled spectrum in a decorrelated colour space."""

    def __init__(
        self,
        count: int,
        size: int,
        *,
        generator: torch.Generator,
        sd: float = 0.01,
        decay_power: float = 1.0,
    ) -> None:
        super().__init__()
        self.count, self.size = count, size
        freqs = rfft2d_freqs(size, size)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay_power
        self.scale: torch.Tensor
        self.register_buffer("scale", scale.float()[None, None, :, :, None], persistent=False)
        one = torch.randn((1, 3, *freqs.shape, 2), generator=generator) * sd
        # every image of the batch starts from the same noise: a unit's result does not depend
        # on which other units share its batch
        self.spectrum = nn.Parameter(one.repeat(count, 1, 1, 1, 1))

    def forward(self) -> torch.Tensor:
        scaled = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        image = torch.fft.irfftn(scaled, s=(self.size, self.size), norm="ortho", dim=(-2, -1))
        image = image / 4.0  # Lucid's "magic" constant: a sensible start range for the sigmoid
        colour = COLOR_MATRIX.to(image.device)
        image = torch.einsum("kchw,dc->kdhw", image, colour)
        return torch.sigmoid(image)
