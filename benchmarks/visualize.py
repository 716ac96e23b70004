"""Feature visualisation on the CPU: convscope's `featvis` against torch-lucent's `render_vis`.

For the same model, layer, channels, steps and image size, times one unit alone and a
batch of K units (one optimisation for all K), and measures the objective reached (the
channel's mean activation, computed on the model from each tool's final image, with
the same code for both). The anchor is torch-lucent (`pip install torch-lucent`, the
PyTorch port of Lucid, with its default regularisers: Fourier + decorrelated colour,
pad / jitter / scale / rotate); a plain unregularised gradient ascent in pixel space is
printed beside them for reference. The target: the same or a higher objective than
lucent in the same number of steps, at ≤ 1× its time.

Usage: python benchmarks/visualize.py [--steps 256] [--size 224] [--k 4] [--repeats 1]
(on a shared machine the figures are noise; record quiet-machine runs in docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from convscope.engine import Engine
from convscope.featvis import visualize
from convscope.models import load_model


def objective(engine: Engine, layer: str, channels: list[int], rgb: torch.Tensor) -> list[float]:
    """Mean activation of channel k on image k (K×3×S×S in [0, 1])."""
    mean = torch.tensor(engine.model.mean).view(1, 3, 1, 1)
    std = torch.tensor(engine.model.std).view(1, 3, 1, 1)
    _, outputs = engine.forward_batch((rgb.float() - mean) / std, [layer])
    out = outputs[layer].float().cpu()
    return [float(out[k, c].mean()) for k, c in enumerate(channels)]


def run_convscope(engine: Engine, layer: str, channels: list[int], steps: int, size: int) -> torch.Tensor:
    results = visualize(engine, layer, channels, steps=steps, size=size, seed=0)
    mean = np.array(engine.model.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(engine.model.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy(np.concatenate([r.input * std + mean for r in results]))


def run_lucent(engine: Engine, layer: str, channels: list[int], steps: int, size: int) -> torch.Tensor:
    from lucent.optvis import objectives, param, render

    torch.manual_seed(0)
    name = layer.replace(".", "_")
    goal = sum(objectives.channel(name, c, batch=k) for k, c in enumerate(channels))
    images = render.render_vis(
        engine.model.module,
        goal,
        param_f=lambda: param.image(size, batch=len(channels)),
        thresholds=(steps,),
        show_image=False,
        progress=False,
        fixed_image_size=size,
    )
    return torch.from_numpy(np.asarray(images[-1])).permute(0, 3, 1, 2).contiguous()


def run_plain(engine: Engine, layer: str, channels: list[int], steps: int, size: int) -> torch.Tensor:
    """Unregularised: Adam on the pixels directly, no transformations."""
    from convscope.engine.capture import LayerCapture

    generator = torch.Generator().manual_seed(0)
    pixels = (0.5 + 0.01 * torch.randn(len(channels), 3, size, size, generator=generator)).requires_grad_(True)
    optimiser = torch.optim.Adam([pixels], lr=0.05)
    mean = torch.tensor(engine.model.mean).view(1, 3, 1, 1)
    std = torch.tensor(engine.model.std).view(1, 3, 1, 1)
    index = torch.arange(len(channels))
    for _ in range(steps):
        optimiser.zero_grad()
        with torch.enable_grad(), LayerCapture(engine.model.module, [layer]) as capture:
            engine.model.module((pixels.clamp(0, 1) - mean) / std)
            value = capture.outputs[layer][index, torch.tensor(channels)].mean(dim=(-2, -1)).sum()
        (-value).backward()
        optimiser.step()
    return pixels.detach().clamp(0, 1)


RUNNERS: dict[str, Callable[[Engine, str, list[int], int, int], torch.Tensor]] = {
    "convscope": run_convscope,
    "lucent": run_lucent,
    "plain": run_plain,
}


def measure(
    engine: Engine, name: str, layer: str, channels: list[int], steps: int, size: int, repeats: int
) -> dict[str, Any]:
    times, values = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        rgb = RUNNERS[name](engine, layer, channels, steps, size)
        times.append(time.perf_counter() - started)
        values = objective(engine, layer, channels, rgb)
    return {"seconds": statistics.median(times), "objective": statistics.mean(values), "per_unit": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default="blocks.3.0")
    parser.add_argument("--channels", default="0,5,9,17", help="the first is the single unit; the first K the batch")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=4, help="units in the batch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(load_model(args.model, input_size=args.size), device_name="cpu")
    channels = [int(c) for c in args.channels.split(",")][: args.k]
    try:
        import lucent  # noqa: F401

        tools = ["convscope", "lucent", "plain"]
    except ImportError:
        print("torch-lucent is not installed: comparing with plain gradient ascent only")
        tools = ["convscope", "plain"]
    print(
        f"{args.model} {args.layer}, {args.steps} steps, {args.size}px, CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    rows: dict[str, Any] = {}
    for label, units in (("1 unit", channels[:1]), (f"batch of {len(channels)}", channels)):
        rows[label] = {
            tool: measure(engine, tool, args.layer, units, args.steps, args.size, args.repeats) for tool in tools
        }
        print(f"\n{label} (channels {units})")
        print(f"{'tool':10s} {'seconds':>9s} {'s/unit':>8s} {'objective':>10s}  vs lucent (time, objective)")
        anchor = rows[label].get("lucent")
        for tool, row in rows[label].items():
            ratio = ""
            if anchor and tool != "lucent":
                ratio = f"  {row['seconds'] / anchor['seconds']:.2f}×  {row['objective'] - anchor['objective']:+.3g}"
            print(
                f"{tool:10s} {row['seconds']:9.2f} {row['seconds'] / len(units):8.2f} {row['objective']:10.4g}{ratio}"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
