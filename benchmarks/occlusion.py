"""Occlusion maps (paper Fig. 7): convscope against Captum's `Occlusion` and against plain inference.

For each model and occluder setting (size/stride at S×S), in one run and on one image:

- convscope: `occlude(...)` at its default batch size; it gives three maps (target
  probability, top label, feature-map activity) from one forward pass per position;
- Captum: `Occlusion(softmax ∘ model).attribute(...)` with the same window, stride and
  baseline (0, the model's mean colour after normalisation), timed at a few values of
  `perturbations_per_eval` and reported at its best; it gives one map (the target's
  attribution, spread back to pixels);
- plain: N + 1 batched forward passes of the unoccluded image (N = number of positions),
  no hooks, no occluding: the floor for any method that re-runs the whole network.

The run also checks that both compute the same thing: Captum's per-pixel attribution
equals the mean probability drop over the windows that cover the pixel, which is
rebuilt from convscope's probability map.

    .venv/bin/python benchmarks/occlusion.py                       # the recorded run
    .venv/bin/python benchmarks/occlusion.py --models efficientnet_lite0 --settings 32/16
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from convscope.engine import Engine
from convscope.engine.occlusion import OcclusionResult, occlude, occlusion_grid
from convscope.models import load_model
from convscope.samples import load_sample

PRETRAINED = {"efficientnet_lite0": True, "vgg16": False}  # VGG16 with random weights (none offline)


@dataclass
class Row:
    model: str
    setting: str
    positions: int
    ours: float
    plain: float
    captum: dict[int, float]
    max_diff: float

    @property
    def best_ppe(self) -> int:
        return min(self.captum, key=lambda ppe: self.captum[ppe])


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def plain_passes(engine: Engine, image: torch.Tensor, count: int, batch_size: int) -> None:
    module = engine.model.module
    base = image.to(engine.device)
    with torch.no_grad():
        module(base)
        for start in range(0, count, batch_size):
            module(base.expand(min(batch_size, count - start), -1, -1, -1).contiguous())


def captum_occlusion(
    engine: Engine, image: torch.Tensor, size: int, stride: int, target: int, ppe: int
) -> torch.Tensor:
    from captum.attr import Occlusion

    module = engine.model.module
    with torch.no_grad():
        return Occlusion(lambda x: torch.softmax(module(x), dim=1)).attribute(
            image.to(engine.device),
            sliding_window_shapes=(3, size, size),
            strides=(3, stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=ppe,
        )


def attribution_from_map(result: OcclusionResult, image_size: int) -> np.ndarray:
    drops = np.zeros((image_size, image_size))
    counts = np.zeros((image_size, image_size))
    for (y, x), p in zip(result.positions, result.probability.flat, strict=True):
        drops[y : y + result.size, x : x + result.size] += result.unoccluded_probability - p
        counts[y : y + result.size, x : x + result.size] += 1
    return np.divide(drops, counts, out=np.zeros_like(drops), where=counts > 0)


def run(model_name: str, settings: list[tuple[int, int]], args: argparse.Namespace) -> list[Row]:
    engine = Engine(
        load_model(model_name, pretrained=PRETRAINED.get(model_name, True), input_size=args.input_size),
        device_name=args.device,
    )
    image = engine.prepare(load_sample(args.image))
    plain_passes(engine, image.tensor, args.batch_size, args.batch_size)  # warm-up
    rows = []
    for size, stride in settings:
        r, c, _ = occlusion_grid(engine.input_size, size, stride)
        count = r * c
        plain, _ = timed(lambda: plain_passes(engine, image.tensor, count, args.batch_size))  # noqa: B023
        ours, value = timed(lambda: occlude(engine, image, size, stride, batch_size=args.batch_size))  # noqa: B023
        assert isinstance(value, OcclusionResult)
        result = value
        captum: dict[int, float] = {}
        attributions: dict[int, torch.Tensor] = {}
        for ppe in args.ppe:
            captum[ppe], attribution = timed(
                lambda: captum_occlusion(engine, image.tensor, size, stride, result.target, ppe)  # noqa: B023
            )
            assert isinstance(attribution, torch.Tensor)
            attributions[ppe] = attribution
        expected = attribution_from_map(result, engine.input_size)
        max_diff = max(
            float(np.abs(attr[0].double().cpu().numpy() - expected[None]).max()) for attr in attributions.values()
        )
        row = Row(model_name, f"{size}/{stride}", count, ours, plain, captum, max_diff)
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


HEADER = (
    f"{'model':18s} {'size/stride':>11s} {'N':>5s} {'convscope s':>11s} {'N plain s':>9s} "
    f"{'Captum best s (ppe)':>20s} {'Captum/ours':>11s} {'ours/plain':>10s} {'max |Δattr|':>11s}  Captum by ppe"
)


def format_row(row: Row) -> str:
    best = row.best_ppe
    by_ppe = ", ".join(f"{ppe}: {seconds:.1f}s" for ppe, seconds in row.captum.items())
    return (
        f"{row.model:18s} {row.setting:>11s} {row.positions:5d} {row.ours:11.1f} {row.plain:9.1f} "
        f"{f'{row.captum[best]:.1f} ({best})':>20s} {row.captum[best] / row.ours:10.2f}x "
        f"{row.ours / row.plain:9.2f}x {row.max_diff:11.1e}  {by_ppe}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16"])
    parser.add_argument("--settings", nargs="+", default=["32/16", "16/8"], help="occluder size/stride pairs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32, help="convscope's batch and the plain passes' batch")
    parser.add_argument("--ppe", type=int, nargs="+", default=[16, 32, 64], help="Captum perturbations_per_eval")
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    settings = [(int(a), int(b)) for a, b in (s.split("/") for s in args.settings)]
    import captum

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {args.device}, torch {torch.__version__}, captum {captum.__version__}, "
        f"input {args.input_size}×{args.input_size}, image {args.image}, convscope batch {args.batch_size}"
    )
    print(HEADER, flush=True)
    for model_name in args.models:
        run(model_name, settings, args)


if __name__ == "__main__":
    main()
