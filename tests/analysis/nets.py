"""Tiny nets with known properties for the analysis tests (also `package.module:callable` models for the CLI)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from convscope.engine import Engine
from convscope.models import LoadedModel


class CircularNet(nn.Module):
    """Circular convolutions (translation-equivariant under circular shifts) and global average
    pooling: a circular shift of the input changes neither the pooled features nor the logits."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
                relu2=nn.ReLU(),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu3(self.fc1(self.flatten(self.pool(self.features(x))))))


class SmallConvNet(nn.Module):
    """conv1 → ReLU (in place) → conv2 → ReLU → conv3 (linear) → pool → fc: for filters and dead channels."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(self.conv3(x)).flatten(1))


def circular_net() -> nn.Module:
    torch.manual_seed(0)
    return CircularNet()


def small_conv_net() -> nn.Module:
    torch.manual_seed(0)
    return SmallConvNet()


def engine_for(module: nn.Module, size: int = 64) -> Engine:
    module.eval()
    out = module(torch.zeros(1, 3, size, size))
    labels = [f"class {i}" for i in range(int(out.shape[1]))]
    return Engine(LoadedModel("test-net", module, labels, input_size=size), device_name="cpu")
