"""The paper's architecture (Zeiler & Fergus 2014, Fig. 3), and its filter renormalisation.

At a 224×224 input the maps are 110, 55, 26, 13, 13, 13 and 6 pixels wide (conv1
padding 1, ceil-mode pooling), exactly as in the paper.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

ZF_WIDTHS = (96, 256, 384, 384, 256)


class ZFNet(nn.Module):
    """conv1..conv5 with ReLU, max-pooling and cross-map contrast normalisation; fc6, fc7, fc8."""

    def __init__(
        self,
        num_classes: int = 1000,
        widths: Sequence[int] = ZF_WIDTHS,
        fc_width: int = 4096,
        input_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.input_size = input_size
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, c1, kernel_size=7, stride=2, padding=1)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                    ("norm1", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)),
                    ("conv2", nn.Conv2d(c1, c2, kernel_size=5, stride=2, padding=0)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                    ("norm2", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)),
                    ("conv3", nn.Conv2d(c2, c3, kernel_size=3, padding=1)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(c3, c4, kernel_size=3, padding=1)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("conv5", nn.Conv2d(c4, c5, kernel_size=3, padding=1)),
                    ("relu5", nn.ReLU(inplace=True)),
                    ("pool5", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                ]
            )
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, input_size, input_size)).numel()
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(flat, fc_width)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(fc_width, fc_width)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(fc_width, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def zfnet(num_classes: int = 1000) -> ZFNet:
    return ZFNet(num_classes=num_classes)


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
