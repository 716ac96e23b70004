"""The `convscope visualize` command (docs/architecture.md, "The command line"): one unit's optimised image to a PNG."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from convscope.arguments import pick
from convscope.errors import InvalidRequestError
from convscope.featvis.limits import DEFAULT_STEPS, MAX_SIZE, MAX_STEPS, MIN_SIZE, OBJECTIVE_NAMES
from convscope.tasks import ConsoleTask


def parse_position(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise InvalidRequestError(f"--position takes Y,X (two integers), not {text!r}") from None
    return y, x


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer", default=None, help="module name (not needed for --objective logit)")
    parser.add_argument("--channel", type=int, required=True, help="channel of the layer (the class for logit)")
    parser.add_argument("--objective", default="channel", choices=list(OBJECTIVE_NAMES))
    parser.add_argument("--position", default=None, help="unit objective: Y,X in the layer's map (default: centre)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Adam steps (1..{MAX_STEPS})")
    parser.add_argument(
        "--size", type=int, default=224, help=f"image side S, also the model input ({MIN_SIZE}..{MAX_SIZE})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--raw", default=None, help="NPZ with `input`, the optimised 1×3×S×S normalised tensor")


def check_sizes(steps: int, size: int) -> None:
    """The cheap checks, before any model is loaded."""
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequestError(f"--steps must be between 1 and {MAX_STEPS} (got {steps})")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidRequestError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {size})")


def visualize_main(args: argparse.Namespace) -> int:
    from convscope.engine import Engine
    from convscope.featvis.objectives import check_target
    from convscope.featvis.optimise import run_target
    from convscope.models import load_model
    from convscope.scan.store import atomic_write_bytes

    check_sizes(args.steps, args.size)
    position = parse_position(args.position)
    engine = Engine(load_model(args.model, weights=args.weights, input_size=args.size), device_name=args.device)
    target = check_target(
        engine, args.layer, [args.channel], args.objective, args.steps, args.size, args.seed, position
    )
    with ConsoleTask("visualize", unit="step", total=target.steps) as task:
        (vis,) = run_target(engine, target, task=task)
    try:
        atomic_write_bytes(Path(args.out), vis.png())
        if args.raw:
            import numpy as np

            raw = io.BytesIO()
            np.savez(raw, input=vis.input.astype(np.float32))
            atomic_write_bytes(Path(args.raw), raw.getvalue())
    except OSError as exc:
        raise InvalidRequestError(f"cannot write output: {exc.strerror or exc}") from None
    where = f" at {target.position}" if target.position is not None else ""
    print(
        f"{target.layer} channel {vis.channel} ({target.objective}{where}): {vis.value:.4g} after {target.steps} steps "
        f"in {vis.seconds:.1f}s -> {args.out}"
    )
    return 0


def add_atlas_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", nargs="+", default=None, help="layer names (default: one per resolution)")
    parser.add_argument("--channels", default=None, help="e.g. 0-3,7 (default: the first 16 of each layer)")
    parser.add_argument(
        "--scan", default=None, help="a `convscope scan` store for the top 9 (default: scan the sample photos)"
    )
    parser.add_argument("--objective", default="channel", choices=["channel", "unit"])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Adam steps per unit (1..{MAX_STEPS})")
    parser.add_argument("--size", type=int, default=224, help=f"model input and image side ({MIN_SIZE}..{MAX_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="units optimised together in one batch")
    parser.add_argument("--cache", default=None, help="feature-visualisation cache folder (default: OUT/_featvis)")
    parser.add_argument("--out", required=True, help="folder to write (index.html opens from file://)")


def atlas_main(args: argparse.Namespace) -> int:
    from convscope.engine import Engine
    from convscope.featvis.atlas import build_atlas
    from convscope.featvis.cache import FeatvisCache
    from convscope.models import load_model

    check_sizes(args.steps, args.size)
    if args.batch_size < 1:
        raise InvalidRequestError(f"--batch-size must be at least 1 (got {args.batch_size})")
    engine = Engine(load_model(args.model, weights=args.weights, input_size=args.size), device_name=args.device)
    cache = FeatvisCache(args.cache) if args.cache else None
    with ConsoleTask("atlas", unit="unit") as task:
        flags = pick(args, "layers", "channels", "scan", "steps", "size", "seed", "objective", "batch_size")
        result = build_atlas(engine, args.out, cache=cache, task=task, **flags)
    index = Path(result.directory) / "index.html"
    print(
        f"atlas of {result.units} units in {len(result.layers)} layers ({result.computed} computed now, "
        f"{result.seconds:.1f}s) -> {index.resolve().as_uri()}"
    )
    return 0
