"""Receptive-field ("cone") backward against the dense backward pass, side by side.

For each model and layer, on one image whose forward pass is recorded (warm):
  - the planned work of the cone over the dense pass (`cone.plan`: multiply-adds weighted by
    their cost, plus the cone's per-node Python overhead), the convolutions' multiply-adds alone
    (median over the 9 seeds), and the box of the image the strongest seed reaches;
  - ms for one projection (x1) and for the strongest unit of 9 channels (x9, one `project_many`),
    dense-only, cone-only and as the engine chooses (cone when planned at most `cone.MAX_RATIO`).
A deep layer whose field covers the whole image leaves nothing to crop: its ratio is ~1 and the
engine keeps the dense pass there. Usage: python benchmarks/cone.py [--repeats N] [--size S]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from convscope.engine import Engine, Seed, cone
from convscope.models import load_model
from convscope.samples import load_sample

warnings.filterwarnings("ignore")

CASES = [
    ("alexnet", "features.5"),
    ("alexnet", "features.10"),
    ("alexnet", "features.12"),
    ("efficientnet_lite0", "blocks.2"),
    ("efficientnet_lite0", "blocks.3"),
    ("efficientnet_lite0", "blocks.4"),
    ("efficientnet_lite0", "blocks.5"),
    ("efficientnet_lite0", "conv_head"),
]
ROUTES = {"dense": -1.0, "cone": float("inf"), "auto": cone.MAX_RATIO}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median ms over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def planned(engine: Engine, image, layer: str, seeds: list[Seed]) -> list[cone.ConePlan]:
    """The cone plan of each seed (through the engine's recorded pass, as `project_many` sees it)."""
    with engine.lock:
        record = engine._record(image)
        output = record.outputs[layer]
        grads, _, _ = engine._seed_tensor(output, seeds)
        return [cone.plan(output, record.image, grad, "deconvnet") for grad in grads]


def bench(model_name: str, layer: str, size: int, repeats: int, timings: bool = True) -> dict[str, object]:
    torch.manual_seed(0)
    loaded = load_model(model_name, pretrained=(model_name == "efficientnet_lite0"), input_size=size)
    engine = Engine(loaded, device_name="cpu", cache_size=4)
    image = engine.prepare(load_sample("chelsea"))
    maps = engine.activations(image, layer)
    seeds = [Seed(c) for c in maps.flatten(1).amax(1).argsort(descending=True)[:9].tolist()]
    plans = planned(engine, image, layer, seeds)
    row: dict[str, object] = {
        "ratio": statistics.median(p.ratio for p in plans),
        "cone_gmac": statistics.median(p.cone_macs for p in plans) / 1e9,
        "dense_gmac": plans[0].dense_macs / 1e9,
        "field": plans[0].image_box,
        "unsupported": plans[0].unsupported,
    }
    default = cone.MAX_RATIO
    try:
        for route, ratio in ROUTES.items() if timings else ():
            cone.MAX_RATIO = ratio
            row[f"{route}_x1"] = timed(lambda: engine.project_many(image, layer, seeds[:1]), repeats)
            row[f"{route}_x9"] = timed(lambda: engine.project_many(image, layer, seeds), max(1, repeats // 3))
    finally:
        cone.MAX_RATIO = default
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--only", default=None, help="run only cases whose 'model layer' contains this")
    parser.add_argument("--plan-only", action="store_true", help="the planned arithmetic, no timings")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = (
        "model, layer | planned work cone/dense | conv GMAC cone/dense | image box | "
        "dense x1 | cone x1 | auto x1 | dense x9 | cone x9 | auto x9 (ms)"
    )
    print(header)
    for model_name, layer in CASES:
        if args.only and args.only not in f"{model_name} {layer}":
            continue
        r = bench(model_name, layer, args.size, args.repeats, timings=not args.plan_only)
        box = r["field"]
        field = "—" if not box else "×".join(str(b - a) for a, b in box[2:])  # type: ignore[union-attr]
        note = f" (dense only: {r['unsupported']})" if r["unsupported"] else ""
        times = " | ".join(f"{r[f'{route}_{k}']:.1f}" for k in ("x1", "x9") for route in ROUTES if f"{route}_{k}" in r)
        print(
            f"{model_name} {layer} | {r['ratio']:.3f} | {r['cone_gmac']:.3f}/{r['dense_gmac']:.3f} | {field} | "
            f"{times or '(not timed)'}{note}",
            flush=True,
        )


if __name__ == "__main__":
    main()
