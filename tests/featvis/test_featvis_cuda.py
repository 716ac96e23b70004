"""Feature visualisation on CUDA (skipped where there is none): it runs, and a few steps
on the GPU land where the CPU's do (full float32; same seed, same start, same transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.featvis import visualize
from featvis.conftest import ZF_SIZE
from fixtures.nets import make_engine, zf_shaped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine"),
]


def test_cuda_matches_cpu_for_a_few_steps() -> None:
    from convscope.engine import Engine

    cpu = make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE)
    gpu = Engine(cpu.model, device_name="cuda")  # the same weights, moved
    on_gpu = visualize(gpu, "features.conv3", [0, 4], steps=5, seed=2)
    cpu_engine = make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE)
    on_cpu = visualize(cpu_engine, "features.conv3", [0, 4], steps=5, seed=2)
    for a, b in zip(on_gpu, on_cpu, strict=True):
        assert np.abs(a.input - b.input).max() < 5e-2
        assert a.value == pytest.approx(b.value, rel=5e-2, abs=1e-3)
