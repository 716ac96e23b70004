"""Projection speed against Captum's NeuronDeconvolution, side by side in one run.

For each model and layer, on the same input:
  - one Captum call (forward + backward, hooks registered and removed each call);
  - convscope warm ×1: a click on an image whose forward pass is cached (backward only);
  - convscope cold ×1: the first click on a new image (forward + backward);
  - ×9: the strongest activation of 9 channels, one `project_many` call, warm (backward only)
    and cold (including the forward pass), against nine Captum calls.
Targets (issue 13, 2-core CPU): cold ×1 ≤ 1.0× one Captum call on EfficientNet-Lite0;
Captum ×9 / warm ×9 ≥ 5× on AlexNet features.5/features.10 and EfficientNet-Lite0
blocks.2/blocks.3. Medians of `--repeats` runs after one warm-up; also the process CPU time
of each (read that one when the machine is not quiet).

Usage: python benchmarks/projection.py [--device cpu|cuda] [--repeats N] [--tf32]
       [--rows alexnet:features.10,efficientnet_lite0:blocks.2] [--size 224] [--random] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from captum.attr import NeuronDeconvolution

from convscope.engine import Engine, Seed
from convscope.engine.engine import cuda_precision
from convscope.models import load_model
from convscope.samples import load_sample

warnings.filterwarnings("ignore")


DEFAULT_ROWS = (
    ("alexnet", "features.10"),
    ("alexnet", "features.5"),
    ("efficientnet_lite0", "blocks.5"),
    ("efficientnet_lite0", "blocks.3"),
    ("efficientnet_lite0", "blocks.2"),
)


def timed(fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> tuple[float, float]:
    """Median wall and process-CPU seconds over `repeats` runs after one warm-up run."""
    if setup:
        setup()
    fn()
    times, cpu = [], []
    for _ in range(repeats):
        if setup:
            setup()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu)


def bench(
    model_name: str, layer: str, device: str, repeats: int, tf32: bool, size: int, random: bool
) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    loaded = load_model(model_name, pretrained=(model_name == "efficientnet_lite0" and not random), input_size=size)
    engine = Engine(loaded, device_name=device, tf32=tf32)
    image = engine.prepare(load_sample("chelsea"))
    maps = engine.activations(image, layer)
    channels = maps.flatten(1).amax(1).argsort(descending=True)[:9].tolist()
    positions = [divmod(int(maps[c].argmax()), maps.shape[2]) for c in channels]

    module = dict(loaded.module.named_modules())[layer]
    captum = NeuronDeconvolution(loaded.module, module)
    x = image.tensor.to(engine.device).clone().requires_grad_(True)

    def captum_one(k: int = 0) -> torch.Tensor:
        y, xx = positions[k]
        # the engine scopes TF32 to its own work; give Captum the same precision
        with cuda_precision(tf32) if engine.device.type == "cuda" else contextlib.nullcontext():
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


def _rows(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return list(DEFAULT_ROWS)
    rows = []
    for item in text.split(","):
        model, _, layer = item.partition(":")
        rows.append((model.strip(), layer.strip()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tf32", action="store_true", help="CUDA: let convolutions use TF32 (both sides)")
    parser.add_argument("--rows", default=None, help="model:layer,... (default: the issue's rows)")
    parser.add_argument("--size", type=int, default=224, help="model input side S")
    parser.add_argument("--random", action="store_true", help="random weights for every model (a quick check)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    where = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    precision = " TF32" if args.tf32 and args.device.startswith("cuda") else ""
    print(
        f"# projection benchmark, device={args.device} ({where}){precision}, torch {torch.__version__}, S={args.size}"
    )
    print("# wall-clock medians in ms (process CPU in brackets); ratios from wall-clock")
    print(
        f"{'model':18s} {'layer':12s} | {'captum×1':>14s} {'warm×1':>14s} {'cold×1':>14s} | "
        f"{'captum×9':>15s} {'warm×9':>14s} {'cold×9':>14s} | cold1/captum1 captum9/warm9 captum9/cold9"
    )
    figures = []
    for model_name, layer in _rows(args.rows):
        r = bench(model_name, layer, args.device, args.repeats, args.tf32, args.size, args.random)

        def cell(key: str, width: int = 14, r: dict[str, tuple[float, float]] = r) -> str:
            wall, cpu = r[key]
            return f"{wall * 1e3:.1f} ({cpu * 1e3:.1f})".rjust(width)

        ratios = {
            "cold1_over_captum1": r["cold_k1"][0] / r["captum_k1"][0],
            "captum9_over_warm9": r["captum_k9"][0] / r["warm_k9"][0],
            "captum9_over_cold9": r["captum_k9"][0] / r["cold_k9"][0],
        }
        print(
            f"{model_name:18s} {layer:12s} | {cell('captum_k1')} {cell('warm_k1')} {cell('cold_k1')} | "
            f"{cell('captum_k9', 15)} {cell('warm_k9')} {cell('cold_k9')} | "
            f"{ratios['cold1_over_captum1']:12.2f}x {ratios['captum9_over_warm9']:12.2f}x "
            f"{ratios['captum9_over_cold9']:12.2f}x"
        )
        figures.append(
            {
                "model": model_name,
                "layer": layer,
                **{f"{key}_ms": wall * 1e3 for key, (wall, _) in r.items()},
                **{f"{key}_cpu_ms": cpu * 1e3 for key, (_, cpu) in r.items()},
                **ratios,
            }
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": args.device, "size": args.size, "rows": figures}, handle, indent=2)


if __name__ == "__main__":
    main()
