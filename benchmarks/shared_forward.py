"""Shared forward passes (`Engine.share_forward`): N new images recorded together against one at a time.

For each N (default 1, 4, 8), on N distinct photos whose records are cleared before every run, the median ms of
  - forward: recording the N images' passes up to the layer (`record_together` against N first-click records);
  - forward + backward: one seed on each image (`project_images` with sharing on, against N `project_many`);
  - a later click: one more seed on one of them, through the shared N-image pass against its own record;
and the ratio shared ÷ one at a time of each (below 1: sharing pays). docs/architecture.md "Shared forward
passes" says why the engine shares on CUDA only. Usage:
    python benchmarks/shared_forward.py [--device cuda] [--n 1 4 8] [--repeats 7] [--size 224] [--layer L]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from PIL import ImageOps

from convscope.engine import Engine, Seed
from convscope.images import PreparedImage
from convscope.models import load_model
from convscope.samples import list_samples, load_sample

warnings.filterwarnings("ignore")


def photos(engine: Engine, count: int) -> list[PreparedImage]:
    """`count` distinct inputs: the bundled photos, then mirrored and turned copies of them."""
    names = [sample.id for sample in list_samples()]
    result = []
    for index in range(count):
        image = load_sample(names[index % len(names)])
        turn = index // len(names)
        if turn:
            image = ImageOps.mirror(image).rotate(turn * 13)
        result.append(engine.prepare(image))
    return result


def timed(engine: Engine, setup: Callable[[], object], run: Callable[[], object], repeats: int) -> float:
    """Median ms of `run` over `repeats` runs after one warm-up, `setup` (untimed) before each."""
    samples = []
    for index in range(repeats + 1):
        setup()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        if index:
            samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def bench(engine: Engine, images: list[PreparedImage], layer: str, repeats: int) -> dict[str, float]:
    seeds = [[Seed(index % 8)] for index in range(len(images))]
    requests = list(zip(images, seeds, strict=True))
    later = [Seed(9)]
    row: dict[str, float] = {}

    def alone_forward() -> None:
        for image in images:
            engine._record(image, layer)

    def alone_projections() -> None:
        for image, mine in requests:
            engine.project_many(image, layer, mine)

    engine.share_forward = False
    row["forward_alone"] = timed(engine, engine.clear_cache, alone_forward, repeats)
    row["both_alone"] = timed(engine, engine.clear_cache, alone_projections, repeats)
    row["later_alone"] = timed(engine, lambda: None, lambda: engine.project_many(images[0], layer, later), repeats)
    engine.share_forward = True
    row["forward_shared"] = timed(engine, engine.clear_cache, lambda: engine.record_together(images, layer), repeats)
    row["both_shared"] = timed(engine, engine.clear_cache, lambda: engine.project_images(layer, requests), repeats)
    row["later_shared"] = timed(engine, lambda: None, lambda: engine.project_many(images[0], layer, later), repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the model's)")
    parser.add_argument("--layer", default="blocks.3", help="the clicked layer (a first click's pass stops there)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8], help="images per burst")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, input_size=args.size), device_name=args.device)
    name = torch.cuda.get_device_name(0) if engine.device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"{args.model} at {engine.input_size} px, layer {args.layer}, {engine.device} ({name}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(
        "N | forward: alone / shared ms (ratio) | forward + 1 seed each: alone / shared ms (ratio) | later click (ratio)"
    )
    for count in args.n:
        r = bench(engine, photos(engine, count), args.layer, args.repeats)
        cells = [
            f"{r[f'{kind}_alone']:.1f} / {r[f'{kind}_shared']:.1f} ({r[f'{kind}_shared'] / r[f'{kind}_alone']:.2f}×)"
            for kind in ("forward", "both", "later")
        ]
        print(f"{count} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
