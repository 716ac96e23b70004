"""GPU projections against the CPU's, with and without TF32 (needs CUDA).

For the default model and a photo, projects the strongest unit of 8 channels of a few
layers in each mode on the CPU and on the GPU, once with convscope's default (full float32)
and once with TF32 allowed (`Engine(tf32=True)`, `CONVSCOPE_TF32=true`), and prints the worst
difference relative to the CPU projection's peak, and how far the class probabilities move.

Usage: python benchmarks/cuda_precision.py
"""

from __future__ import annotations

import argparse

import torch

from convscope.engine import Engine, Seed
from convscope.models import load_model
from convscope.samples import load_sample

LAYERS = ("blocks.1", "blocks.3", "blocks.5", "conv_head")
MODES = ("deconvnet", "guided", "gradient")


def worst_relative(gpu: Engine, cpu: Engine, image_name: str, layer: str, mode: str) -> float:
    image = cpu.prepare(load_sample(image_name))
    channels = cpu.layer(layer).channels
    seeds = [Seed(c * channels // 8) for c in range(8)]
    expected = cpu.project_many(image, layer, seeds, mode=mode)  # type: ignore[arg-type]
    actual = gpu.project_many(image, layer, seeds, mode=mode)  # type: ignore[arg-type]
    return max(
        float((a.projection - b.projection).abs().max()) / max(float(b.projection.abs().max()), 1e-12)
        for a, b in zip(actual, expected, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="chelsea")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is not available on this machine")
    cpu = Engine(load_model(), device_name="cpu")
    image = cpu.prepare(load_sample(args.image))
    reference = cpu.probabilities(image)
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, image {args.image}; 8 seeds per cell")
    print("# worst |GPU - CPU| / max |CPU| over the seeds, per layer and mode")
    print(f"{'tf32':6s} {'layer':10s} " + " ".join(f"{m:>10s}" for m in MODES) + "   max |Δp|")
    for tf32 in (False, True):
        gpu = Engine(load_model(), device_name="cuda", tf32=tf32)
        dp = float((gpu.probabilities(gpu.prepare(load_sample(args.image))) - reference).abs().max())
        for layer in LAYERS:
            cells = [worst_relative(gpu, cpu, args.image, layer, mode) for mode in MODES]
            print(f"{tf32!s:6s} {layer:10s} " + " ".join(f"{c:10.2e}" for c in cells) + f"   {dp:.1e}")


if __name__ == "__main__":
    main()
