"""Engines for the feature-visualisation tests: the real EfficientNet-Lite0 (ImageNet weights)
and the ZF-shaped fixture net (the real ZFNet class, narrow, random weights with a fixed seed)."""

from __future__ import annotations

import pytest
import torch

from convscope.engine import Engine
from convscope.models import load_model
from convscope.samples import list_samples, load_sample
from fixtures.nets import make_engine, zf_shaped

ZF_SIZE = 112


@pytest.fixture(scope="session")
def zf_engine() -> Engine:
    return make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE, name="zf-shaped")


@pytest.fixture(scope="session")
def effnet_engine() -> Engine:
    return Engine(load_model("efficientnet_lite0"), device_name="cpu")


def photo_batch(engine: Engine) -> torch.Tensor:
    """Every bundled sample photo as the model sees it (N×3×S×S)."""
    return torch.stack([engine.prepare(load_sample(sample.id)).tensor[0] for sample in list_samples()])
