"""Feature visualisation by optimisation: find an input that maximises a unit's objective.

Each step renders the K images of the batch from their Fourier parameters, applies one
random jitter / scale / rotation (`transforms`), normalises with the model's mean/std,
runs the model with the layer's output captured (`engine.capture.LayerCapture`), and
takes one Adam step on the sum of the K objectives (each image only affects its own
term, so one step serves all K units). Every step holds the engine's lock, so other
requests on the same model interleave between steps rather than wait for the whole
optimisation. Deterministic for a seed on the CPU.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.engine import Engine
from convscope.engine.capture import LayerCapture
from convscope.featvis.objectives import Target, check_target, scores
from convscope.featvis.param import FourierImage
from convscope.featvis.transforms import apply, draw
from convscope.tasks import Task, checkpoint

LEARNING_RATE = 0.05


@dataclass
class Visualization:
    """One unit's optimised image, its input in the model's normalised space, and the objective reached."""

    model: str
    layer: str
    channel: int
    objective: str
    steps: int
    size: int
    seed: int
    position: tuple[int, int] | None
    image: np.ndarray  # S×S×3 uint8 RGB, ready for a PNG
    input: np.ndarray  # 1×3×S×S float32: the optimised image normalised with the model's mean/std
    value: float  # the objective on `input` (no transformation)
    trace: list[float] = field(default_factory=list)  # the objective at each step (transformed)
    seconds: float = 0.0
    cached: bool = False

    @classmethod
    def of_target(cls, model: str, target: Target, channel: int, **result: Any) -> Visualization:
        """A unit of `target` (its layer, objective, steps, size, seed and position) with its `result`
        (image, input, value, trace, seconds, cached)."""
        return cls(
            model=model,
            layer=target.layer,
            channel=int(channel),
            objective=target.objective,
            steps=target.steps,
            size=target.size,
            seed=target.seed,
            position=target.position,
            **result,
        )

    def png(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image, mode="RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    def to_dict(self) -> dict[str, object]:
        """The JSON-friendly numbers (no pixels)."""
        return {
            "model": self.model,
            "layer": self.layer,
            "channel": self.channel,
            "objective": self.objective,
            "steps": self.steps,
            "size": self.size,
            "seed": self.seed,
            "position": list(self.position) if self.position is not None else None,
            "value": self.value,
            "seconds": round(self.seconds, 4),
        }


def _model_input(engine: Engine, rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(engine.model.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(engine.model.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _evaluate(engine: Engine, target: Target, batch: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """The K objectives of a normalised batch (with a graph when the batch has one)."""
    module = engine.model.module
    names = [target.layer] if target.uses_layer else []
    with LayerCapture(module, names) as capture:
        logits = module(batch)
    output = capture.outputs[target.layer] if target.uses_layer else logits
    return scores(output, channels, target)


def optimise(
    engine: Engine,
    target: Target,
    channels: Sequence[int],
    *,
    lr: float = LEARNING_RATE,
    task: Task | None = None,
    done: int = 0,
    total: int | None = None,
) -> list[Visualization]:
    """Optimise one batch: `channels` of `target.layer` (a checked target), one image each."""
    total = target.steps if total is None else total
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(target.seed)
    param = FourierImage(len(channels), target.size, generator=generator).to(engine.device)
    optimiser = torch.optim.Adam(param.parameters(), lr=lr)
    traces: list[list[float]] = [[] for _ in channels]
    for step in range(target.steps):
        transform = draw(generator)
        with engine.lock, torch.enable_grad():
            optimiser.zero_grad(set_to_none=True)
            values = _evaluate(engine, target, _model_input(engine, apply(param(), transform)), channels)
            (-values.sum()).backward()
            optimiser.step()
        for trace, value in zip(traces, values.detach().cpu().tolist(), strict=True):
            trace.append(float(value))
        checkpoint(task, done + step + 1, total, "feature visualisation")
    with engine.lock, torch.no_grad():
        rgb = param()
        batch = _model_input(engine, rgb)
        final = _evaluate(engine, target, batch, channels).cpu().tolist()
    seconds = (time.perf_counter() - started) / len(channels)
    images = (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    inputs = batch.float().cpu().numpy()
    return [
        Visualization.of_target(
            engine.name,
            target,
            channel,
            image=np.ascontiguousarray(images[k]),
            input=inputs[k : k + 1].copy(),
            value=float(final[k]),
            trace=traces[k],
            seconds=seconds,
        )
        for k, channel in enumerate(channels)
    ]


def visualize(
    engine: Engine,
    layer: str | None,
    channels: Sequence[int],
    *,
    batch_size: int | None = None,
    lr: float = LEARNING_RATE,
    task: Task | None = None,
    **settings: Any,
) -> list[Visualization]:
    """Optimised images of `channels` of `layer`, in batches of `batch_size` (default: all at once);
    `settings` are `check_target`'s (objective, steps, size, seed, position).

    Progress is reported in steps (steps × batches in all); `task.should_stop()` cancels
    between two steps (`convscope.tasks.Cancelled`)."""
    target = check_target(engine, layer, channels, **settings)
    return run_target(engine, target, batch_size=batch_size, lr=lr, task=task)


def run_target(
    engine: Engine,
    target: Target,
    *,
    channels: Sequence[int] | None = None,
    batch_size: int | None = None,
    lr: float = LEARNING_RATE,
    task: Task | None = None,
    on_result: Callable[[Visualization], None] | None = None,
) -> list[Visualization]:
    """`visualize` for an already checked target: its `channels` (default: all of them) in batches;
    `on_result` sees each unit as soon as its batch is done. Progress is in steps."""
    wanted = list(target.channels if channels is None else channels)
    width = max(1, len(wanted) if batch_size is None else batch_size)
    batches = [wanted[i : i + width] for i in range(0, len(wanted), width)]
    total = target.steps * len(batches)
    results: list[Visualization] = []
    for index, batch in enumerate(batches):
        for vis in optimise(engine, target, batch, lr=lr, task=task, done=index * target.steps, total=total):
            if on_result is not None:
                on_result(vis)
            results.append(vis)
    return results
