"""The engine on CUDA gives the CPU's projections (skipped, with the reason, without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.engine import Engine, Seed
from convscope.engine.occlusion import occlude
from convscope.models import load_model
from convscope.samples import load_sample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine"),
]


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_cuda_matches_cpu(mode: str) -> None:
    cpu = Engine(load_model(), device_name="cpu")
    gpu = Engine(load_model(), device_name="cuda")
    image = cpu.prepare(load_sample("chelsea"))
    seeds = [Seed(c) for c in range(0, 40, 5)]
    expected = cpu.project_many(image, "blocks.3", seeds, mode=mode)
    actual = gpu.project_many(image, "blocks.3", seeds, mode=mode)  # one vmapped backward on CUDA
    for a, b in zip(actual, expected, strict=True):
        assert a.seed_position == b.seed_position
        scale = float(b.projection.abs().max())
        assert float((a.projection - b.projection).abs().max()) <= 1e-3 * scale
    assert [p.index for p in gpu.predict(image)] == [p.index for p in cpu.predict(image)]


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_a_shared_forward_pass_on_cuda_matches_the_cpu(mode: str) -> None:
    """On CUDA the engine shares forward passes by default: three images in one recorded pass, all
    their seeds in one vmapped backward pass, within the tolerance of the unshared CUDA answers above."""
    cpu = Engine(load_model(), device_name="cpu")
    gpu = Engine(load_model(), device_name="cuda")
    assert gpu.share_forward is True and cpu.share_forward is False
    photos = [cpu.prepare(load_sample(name)) for name in ("chelsea", "coffee", "rocket")]
    requests = [(photo, [Seed(c) for c in range(index, 40, 9)]) for index, photo in enumerate(photos)]
    forward, backward = gpu.stats.forward_passes, gpu.stats.backward_passes
    answers = gpu.project_images("blocks.3", requests, mode=mode)  # type: ignore[arg-type]
    assert gpu.stats.forward_passes == forward + 1 and gpu.stats.shared_images == 3
    assert gpu.stats.backward_passes == backward + 1
    for (photo, seeds), mine in zip(requests, answers, strict=True):
        expected = cpu.project_many(photo, "blocks.3", seeds, mode=mode)  # type: ignore[arg-type]
        for a, b in zip(mine, expected, strict=True):
            assert a.seed_position == b.seed_position
            scale = float(b.projection.abs().max())
            assert float((a.projection - b.projection).abs().max()) <= 1e-3 * scale


def test_cuda_engine_leaves_the_process_tf32_flags_alone() -> None:
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for tf32 in (False, True):
        engine = Engine(load_model("zfnet", pretrained=False), device_name="cuda", tf32=tf32)
        engine.project(engine.prepare(load_sample("chelsea")), "features.conv2", 0)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_cuda_engine_computes_in_float32_unless_asked_for_tf32() -> None:
    cpu = Engine(load_model(), device_name="cpu")
    exact = Engine(load_model(), device_name="cuda")
    fast = Engine(load_model(), device_name="cuda", tf32=True)
    image = cpu.prepare(load_sample("chelsea"))
    expected = cpu.project(image, "blocks.3", 5, mode="gradient").projection
    scale = float(expected.abs().max())
    exact_error = float((exact.project(image, "blocks.3", 5, mode="gradient").projection - expected).abs().max())
    fast_error = float((fast.project(image, "blocks.3", 5, mode="gradient").projection - expected).abs().max())
    assert exact_error <= 1e-3 * scale
    assert fast_error > exact_error  # TF32 was in effect inside the engine's own computations


def test_occlusion_on_cuda_matches_the_cpu() -> None:
    cpu = Engine(load_model(), device_name="cpu")
    gpu = Engine(load_model(), device_name="cuda")
    image = cpu.prepare(load_sample("chelsea"))
    expected = occlude(cpu, image, size=48, stride=32, batch_size=4)
    actual = occlude(gpu, image, size=48, stride=32, batch_size=4)  # several batches in flight
    assert (actual.target, actual.channel) == (expected.target, expected.channel)
    np.testing.assert_allclose(actual.probability, expected.probability, atol=1e-5)
    np.testing.assert_allclose(actual.activity, expected.activity, rtol=1e-4)
    assert (actual.top_label == expected.top_label).all()


def test_auto_picks_cuda() -> None:
    assert Engine(load_model("zfnet"), device_name="auto").device.type == "cuda"
