"""Occlusion maps (paper Fig. 7): convscope against Captum's `Occlusion` and against plain inference.

For each model and occluder setting (size/stride at S×S), in one run and on one image:

- convscope: `occlude(...)`; it gives three maps (target probability, top label,
  feature-map activity) from one forward pass per position;
- Captum: `Occlusion(softmax ∘ model).attribute(...)` with the same window, stride and
  baseline (0, the model's mean colour after normalisation); it gives one map (the
  target's attribution, spread back to pixels);
- plain: N + 1 batched forward passes of the unoccluded image (N = number of positions)
  through the bare module, no hooks, no occluding: the floor for any method that
  re-runs the whole network.

Both are timed at each of a few batch sizes (`batch_size`, `perturbations_per_eval`),
interleaved so that a slow spell on a shared machine hits both, and each is reported
at its best (over batch sizes and `--rounds`); the plain passes use convscope's best
batch size. "CPU-s ratios" are Captum/ours and ours/plain again in process CPU seconds,
which other work on a shared machine disturbs less than wall time. With `--pairs K` the
three are then timed back to back K more times at their best settings and the medians
of the per-pair ratios are printed: on a machine whose speed drifts, the most robust figure.

The run also checks that both compute the same thing: Captum's per-pixel attribution
equals the mean probability drop over the windows that cover the pixel, which is
rebuilt from convscope's probability map.

    .venv/bin/python benchmarks/occlusion.py                       # the recorded run
    .venv/bin/python benchmarks/occlusion.py --models efficientnet_lite0 --settings 32/16
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.engine import Engine
from convscope.engine.occlusion import OcclusionResult, occlude, occlusion_grid
from convscope.models import load_model
from convscope.samples import load_sample

PRETRAINED = {"efficientnet_lite0": True, "vgg16": False}  # VGG16 with random weights (none offline)


@dataclass
class Timing:
    """Best wall-clock and best process CPU seconds over repeats (CPU time is less disturbed
    by other work on a shared machine, wall time is what a user waits)."""

    wall: float = math.inf
    cpu: float = math.inf

    def add(self, wall: float, cpu: float) -> None:
        self.wall = min(self.wall, wall)
        self.cpu = min(self.cpu, cpu)


@dataclass
class Row:
    model: str
    setting: str
    positions: int
    ours: dict[int, Timing]  # by batch size
    captum: dict[int, Timing]  # by perturbations_per_eval
    plain: Timing  # at ours' best batch size
    max_diff: float
    paired: list[tuple[float, float]] = field(default_factory=list)  # per pair: Captum/ours, ours/plain

    @staticmethod
    def best(times: dict[int, Timing]) -> int:
        return min(times, key=lambda key: times[key].wall)


def timed(function: Callable[[], object]) -> tuple[float, float, object]:
    """Wall and process CPU seconds of `function()`; on CUDA, its queued kernels are waited for."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def plain_passes(engine: Engine, image: torch.Tensor, count: int, batch_size: int) -> None:
    """The unoccluded image through the bare module: 1 + `count` images, `batch_size` at a time."""
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
    """Captum's per-pixel attribution rebuilt from convscope's map: the mean drop over covering windows."""
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
    plain_passes(engine, image.tensor, max(args.batch), max(args.batch))  # warm-up
    rows = []
    for size, stride in settings:
        r, c, _ = occlusion_grid(engine.input_size, size, stride)
        count = r * c
        ours = {batch: Timing() for batch in args.batch}
        captum = {batch: Timing() for batch in args.batch}
        plain = Timing()
        max_diff = 0.0
        if engine.device.type == "cuda":  # cuDNN picks kernels per shape: no method pays for that in a timing
            for batch in args.batch:
                target = occlude(engine, image, size, stride, batch_size=batch).target
                captum_occlusion(engine, image.tensor, size, stride, target, batch)
                plain_passes(engine, image.tensor, count, batch)
        for _ in range(args.rounds):
            for batch in args.batch:  # interleaved, so a slow spell on a shared machine hits both
                wall, cpu, value = timed(lambda: occlude(engine, image, size, stride, batch_size=batch))  # noqa: B023
                ours[batch].add(wall, cpu)
                assert isinstance(value, OcclusionResult)
                result = value
                wall, cpu, attribution = timed(
                    lambda: captum_occlusion(engine, image.tensor, size, stride, result.target, batch)  # noqa: B023
                )
                captum[batch].add(wall, cpu)
                assert isinstance(attribution, torch.Tensor)
                expected = attribution_from_map(result, engine.input_size)
                diff = float(np.abs(attribution[0].double().cpu().numpy() - expected[None]).max())
                max_diff = max(max_diff, diff)
            best = Row.best(ours)
            wall, cpu, _ = timed(lambda: plain_passes(engine, image.tensor, count, best))  # noqa: B023
            plain.add(wall, cpu)
        row = Row(model_name, f"{size}/{stride}", count, ours, captum, plain, max_diff)
        ours_batch, captum_ppe = Row.best(ours), Row.best(captum)
        for pair in range(args.pairs):  # back to back at the best settings: ratios within one spell
            if pair % 2:  # every other pair Captum goes first, so neither always follows the plain passes
                captum_s, _, _ = timed(
                    lambda: captum_occlusion(engine, image.tensor, size, stride, result.target, captum_ppe)  # noqa: B023
                )
            ours_s, _, _ = timed(lambda: occlude(engine, image, size, stride, batch_size=ours_batch))  # noqa: B023
            if not pair % 2:
                captum_s, _, _ = timed(
                    lambda: captum_occlusion(engine, image.tensor, size, stride, result.target, captum_ppe)  # noqa: B023
                )
            plain_s, _, _ = timed(lambda: plain_passes(engine, image.tensor, count, ours_batch))  # noqa: B023
            row.paired.append((captum_s / ours_s, ours_s / plain_s))
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


HEADER = (
    f"{'model':18s} {'size/stride':>11s} {'N':>4s} {'convscope s (batch)':>19s} {'Captum s (ppe)':>14s} "
    f"{'Captum/ours':>11s} {'N plain s':>9s} {'ours/plain':>10s} {'CPU-s ratios':>12s} {'max |Δattr|':>11s}"
    " paired medians  wall s by batch: ours|Captum"
)


def format_row(row: Row) -> str:
    ours, captum = row.ours[Row.best(row.ours)], row.captum[Row.best(row.captum)]
    cpu_ours = min(t.cpu for t in row.ours.values())
    cpu_captum = min(t.cpu for t in row.captum.values())
    by_batch = ", ".join(f"{b}: {row.ours[b].wall:.3f}|{row.captum[b].wall:.3f}" for b in row.ours)
    if row.paired:
        captum_ratio, plain_ratio = (statistics.median(values) for values in zip(*row.paired, strict=True))
        paired = f"{captum_ratio:.2f}x {plain_ratio:.2f}x ({len(row.paired)})"
    else:
        paired = "-"
    return (
        f"{row.model:18s} {row.setting:>11s} {row.positions:4d} {f'{ours.wall:.3f} ({Row.best(row.ours)})':>19s} "
        f"{f'{captum.wall:.3f} ({Row.best(row.captum)})':>14s} {captum.wall / ours.wall:10.2f}x "
        f"{row.plain.wall:9.3f} {ours.wall / row.plain.wall:9.2f}x "
        f"{f'{cpu_captum / cpu_ours:.2f}x {cpu_ours / row.plain.cpu:.2f}x':>12s} {row.max_diff:11.1e} {paired:>14s}  {by_batch}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16"])
    parser.add_argument("--settings", nargs="+", default=["32/16", "16/8"], help="occluder size/stride pairs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[8, 16, 32],
        help="batch sizes: convscope's batch_size and Captum's perturbations_per_eval, each at its best",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; each time is the best of the rounds")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="then time ours, Captum and plain back to back this many times at their best settings and "
        "report the median ratios (robust on a shared machine)",
    )
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    settings = [(int(a), int(b)) for a, b in (s.split("/") for s in args.settings)]
    import captum

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {args.device}, torch {torch.__version__}, captum {captum.__version__}, "
        f"input {args.input_size}×{args.input_size}, image {args.image}, load average {os.getloadavg()[0]:.1f}"
    )
    print(HEADER, flush=True)
    for model_name in args.models:
        run(model_name, settings, args)
    print(f"# load average at the end {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
