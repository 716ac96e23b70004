"""Occlusion maps (paper Fig. 7): convscope dense, incremental and approximate against Captum's `Occlusion`.

For each model and occluder setting (size/stride at S×S), in one run and on one image:

- dense: `occlude(..., method="dense")`, one forward pass of the whole model per position;
- incremental: `occlude(..., method="incremental")`, exact, recomputing only the patch of
  each layer the occluder can change (`convscope.engine.incremental`);
- approx: `occlude(..., approx=TAU)`, incremental with Krypton's projective-field cap
  (approximate; its max |ΔP| against dense is printed);
- Captum: `Occlusion(softmax ∘ model).attribute(...)` with the same window, stride and
  baseline (0, the model's mean colour after normalisation); one map.

All four run back to back `--pairs` times, in a rotating order, so that a slow spell
on a shared machine hits all of them; the figures are medians of the per-round
ratios (paired medians), and each method's *planned* arithmetic ratio (its
multiply-adds over dense's, from the plan) stands beside its *measured* time ratio.
convscope's three maps come from one pass per position; Captum's one map is checked
against the dense probability map (its per-pixel attribution is the mean drop over
the windows covering the pixel).

    .venv/bin/python benchmarks/occlusion.py --pairs 3          # the recorded run (long on a CPU)
    .venv/bin/python benchmarks/occlusion.py --models alexnet --settings 32/16 --input-size 96 --pairs 1
"""

from __future__ import annotations

import argparse
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

PRETRAINED = {"efficientnet_lite0": True}  # the others with random weights (none offline; timing is the same)
METHODS = ("dense", "incremental", "approx", "captum")


@dataclass
class Row:
    model: str
    setting: str
    positions: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    planned: dict[str, float | None] = field(default_factory=dict)
    max_dp_incremental: float = 0.0
    max_dp_approx: float = 0.0
    max_dattr: float = 0.0


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of `function()`; on CUDA, its queued kernels are waited for."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    value = function()
    sync()
    return time.perf_counter() - start, value


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
    torch.manual_seed(0)
    engine = Engine(
        load_model(model_name, pretrained=PRETRAINED.get(model_name, False), input_size=args.input_size),
        device_name=args.device,
    )
    image = engine.prepare(load_sample(args.image))
    rows = []
    for size, stride in settings:
        r, c, _ = occlusion_grid(engine.input_size, size, stride)
        row = Row(model_name, f"{size}/{stride}", r * c)
        batch = args.batch

        def ours(
            method: str, approx: float | None = None, size: int = size, stride: int = stride, batch: int = batch
        ) -> Callable[[], object]:
            return lambda: occlude(engine, image, size, stride, batch_size=batch, method=method, approx=approx)

        calls: dict[str, Callable[[], object]] = {
            "dense": ours("dense"),
            "incremental": ours("incremental"),
            "approx": ours("incremental", args.tau),
        }
        # the first round is untimed: traces, plans, cuDNN's kernel choice, caches
        results = {name: call() for name, call in calls.items()}
        dense = results["dense"]
        assert isinstance(dense, OcclusionResult)
        target = dense.target
        calls["captum"] = lambda: captum_occlusion(engine, image.tensor, size, stride, target, batch)  # noqa: B023
        attribution = calls["captum"]()
        assert isinstance(attribution, torch.Tensor)
        expected = attribution_from_map(dense, engine.input_size)
        row.max_dattr = float(np.abs(attribution[0].double().cpu().numpy() - expected[None]).max())
        for name in ("incremental", "approx"):
            result = results[name]
            assert isinstance(result, OcclusionResult)
            row.planned[name] = result.planned_ratio
            diff = float(np.abs(result.probability - dense.probability).max())
            if name == "incremental":
                assert result.method == "incremental", result.note
                row.max_dp_incremental = diff
            else:
                row.max_dp_approx = diff
        for round_ in range(args.pairs):
            order = METHODS[round_ % len(METHODS) :] + METHODS[: round_ % len(METHODS)]
            for name in order:
                seconds, _ = timed(calls[name])
                row.seconds[name].append(seconds)
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


HEADER = (
    f"{'model':18s} {'size/stride':>11s} {'N':>5s} {'dense s':>8s} {'incr s':>8s} {'approx s':>8s} {'Captum s':>8s} "
    f"{'incr/dense planned|measured':>27s} {'approx/dense planned|measured':>29s} "
    f"{'Captum/incr':>11s} {'Captum/approx':>13s} {'Captum/dense':>12s} {'max|ΔP| incr':>12s} {'max|ΔP| approx':>14s} "
    f"{'max|Δattr|':>10s} rounds"
)


def _paired(row: Row, numerator: str, denominator: str) -> float:
    pairs = zip(row.seconds[numerator], row.seconds[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)


def format_row(row: Row) -> str:
    if not row.seconds["dense"]:
        return f"{row.model:18s} {row.setting:>11s} {row.positions:5d} (no timed rounds: --pairs 0)"
    median = {name: statistics.median(values) for name, values in row.seconds.items()}
    planned_incr = row.planned.get("incremental")
    planned_approx = row.planned.get("approx")

    def ratio_pair(planned: float | None, measured: float) -> str:
        return f"{'-' if planned is None else f'{planned:.3f}'}|{measured:.3f}"

    return (
        f"{row.model:18s} {row.setting:>11s} {row.positions:5d} {median['dense']:8.3f} {median['incremental']:8.3f} "
        f"{median['approx']:8.3f} {median['captum']:8.3f} "
        f"{ratio_pair(planned_incr, _paired(row, 'incremental', 'dense')):>27s} "
        f"{ratio_pair(planned_approx, _paired(row, 'approx', 'dense')):>29s} "
        f"{_paired(row, 'captum', 'incremental'):10.2f}x {_paired(row, 'captum', 'approx'):12.2f}x "
        f"{_paired(row, 'captum', 'dense'):11.2f}x {row.max_dp_incremental:12.1e} {row.max_dp_approx:14.1e} "
        f"{row.max_dattr:10.1e} {len(row.seconds['dense'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "alexnet", "resnet50", "efficientnet_lite0"])
    parser.add_argument("--settings", nargs="+", default=["16/8", "32/16"], help="occluder size/stride pairs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument(
        "--batch", type=int, default=16, help="convscope's batch_size and Captum's perturbations_per_eval"
    )
    parser.add_argument("--tau", type=float, default=0.5, help="the approximate run's projective-field cap")
    parser.add_argument("--pairs", type=int, default=3, help="timed rounds of all four methods (paired medians)")
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    settings = [(int(a), int(b)) for a, b in (s.split("/") for s in args.settings)]
    import captum

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {args.device}, torch {torch.__version__}, captum {captum.__version__}, "
        f"input {args.input_size}×{args.input_size}, image {args.image}, batch {args.batch}, tau {args.tau}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(HEADER, flush=True)
    for model_name in args.models:
        run(model_name, settings, args)
    print(f"# load average at the end {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
