"""Projection speed against Captum's NeuronDeconvolution, side by side in one run.

For each model and layer, on the same input:
  - one Captum call (forward + backward, hooks registered and removed each call);
  - convscope warm K=1: a click on an image whose forward pass is cached (backward only);
  - convscope cold K=1: the first click on a new image (forward + backward);
  - K=9: the strongest activation of 9 channels, one `project_many` call (cold: includes the
    forward pass) against nine Captum calls.
Targets (issue 2): K=9 at least 5x faster than nine Captum calls; warm K=1 at most 0.5x one
Captum call. Usage: python benchmarks/projection.py [--device cpu|cuda] [--repeats N] [--tf32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from captum.attr import NeuronDeconvolution

from convscope.engine import Engine, Seed
from convscope.models import load_model
from convscope.samples import load_sample

warnings.filterwarnings("ignore")


def timed(fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> float:
    """Median seconds over `repeats` runs after one warm-up run."""
    if setup:
        setup()
    fn()
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(model_name: str, layer: str, device: str, repeats: int, tf32: bool) -> dict[str, float]:
    torch.manual_seed(0)
    loaded = load_model(model_name, pretrained=(model_name == "efficientnet_lite0"))
    engine = Engine(loaded, device_name=device, cache_size=4, tf32=tf32)  # the TF32 flag is global: Captum too
    image = engine.prepare(load_sample("chelsea"))
    maps = engine.activations(image, layer)
    channels = maps.flatten(1).amax(1).argsort(descending=True)[:9].tolist()
    positions = [divmod(int(maps[c].argmax()), maps.shape[2]) for c in channels]

    module = dict(loaded.module.named_modules())[layer]
    captum = NeuronDeconvolution(loaded.module, module)
    x = image.tensor.to(engine.device).clone().requires_grad_(True)

    def captum_one(k: int = 0) -> torch.Tensor:
        y, xx = positions[k]
        return captum.attribute(x, neuron_selector=(channels[k], y, xx))

    def captum_nine() -> None:
        for k in range(9):
            captum_one(k)

    seeds = [Seed(c) for c in channels]
    results = {
        "captum_k1": timed(captum_one, repeats),
        "captum_k9": timed(captum_nine, max(1, repeats // 3)),
        "warm_k1": timed(lambda: engine.project(image, layer, channels[1]), repeats),
        "cold_k1": timed(lambda: engine.project(image, layer, channels[1]), repeats, setup=engine.clear_cache),
        "warm_k9": timed(lambda: engine.project_many(image, layer, seeds), max(1, repeats // 3)),
        "cold_k9": timed(
            lambda: engine.project_many(image, layer, seeds), max(1, repeats // 3), setup=engine.clear_cache
        ),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tf32", action="store_true", help="CUDA: let convolutions use TF32 (both sides)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    where = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    precision = " TF32" if args.tf32 and args.device.startswith("cuda") else ""
    print(f"# projection benchmark, device={args.device} ({where}){precision}, torch {torch.__version__}")
    print(
        "model              layer          captum1   warm1  cold1  | captum9  cold9  warm9 | warm1/captum1  captum9/cold9  captum9/warm9"
    )
    for model_name, layer in (
        ("alexnet", "features.10"),
        ("alexnet", "features.5"),
        ("efficientnet_lite0", "blocks.5"),
        ("efficientnet_lite0", "blocks.2"),
    ):
        r = bench(model_name, layer, args.device, args.repeats, args.tf32)
        print(
            f"{model_name:18s} {layer:12s} {r['captum_k1'] * 1e3:7.1f}ms {r['warm_k1'] * 1e3:6.1f} {r['cold_k1'] * 1e3:6.1f} | "
            f"{r['captum_k9'] * 1e3:7.1f} {r['cold_k9'] * 1e3:6.1f} {r['warm_k9'] * 1e3:6.1f} | "
            f"{r['warm_k1'] / r['captum_k1']:12.2f}x {r['captum_k9'] / r['cold_k9']:13.2f}x {r['captum_k9'] / r['warm_k9']:13.2f}x"
        )


if __name__ == "__main__":
    main()
