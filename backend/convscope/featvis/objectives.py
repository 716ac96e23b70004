"""What a feature visualisation maximises, and the checks on a request.

- `channel`: the mean activation of one channel of a layer (the default);
- `unit`: one spatial position of a channel (by default the centre of the map);
- `logit`: one class logit of the model's output (`channel` is the class; the layer is
  not used and is recorded as `logits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.featvis.limits import DEFAULT_STEPS, MAX_SIZE, MAX_STEPS, MIN_SIZE

Objective = Literal["channel", "unit", "logit"]
OBJECTIVES: tuple[Objective, ...] = ("channel", "unit", "logit")
LOGITS = "logits"


@dataclass(frozen=True)
class Target:
    """One checked request: a layer (or `logits`), its channels, how they are scored."""

    layer: str
    channels: tuple[int, ...]
    objective: Objective
    steps: int
    size: int
    seed: int
    position: tuple[int, int] | None = None  # `unit` only: (y, x) in the layer's map at this size

    @property
    def uses_layer(self) -> bool:
        return self.objective != "logit"


def check_target(
    engine: Engine,
    layer: str | None,
    channels: Sequence[int],
    objective: str = "channel",
    steps: int = DEFAULT_STEPS,
    size: int | None = None,
    seed: int = 0,
    position: tuple[int, int] | None = None,
) -> Target:
    """Validate a request against the engine's model; the errors name the bad value."""
    if objective not in OBJECTIVES:
        raise InvalidRequestError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidRequestError(f"steps must be between 1 and {MAX_STEPS} (got {steps})")
    size = engine.input_size if size is None else size
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidRequestError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {size})")
    if seed < 0 or seed >= 2**63:
        raise InvalidRequestError(f"seed must be a non-negative 64-bit integer (got {seed})")
    if not channels:
        raise InvalidRequestError("no channels to visualise")
    if len(set(channels)) != len(channels):
        raise InvalidRequestError("each channel may be asked for once per request")
    if objective == "logit":
        count, what = engine.model.num_classes, "the model's classes"
        layer = LOGITS
        if position is not None:
            raise InvalidRequestError("a position applies to the unit objective only")
    else:
        if not layer:
            raise InvalidRequestError(f"objective {objective!r} needs a layer")
        info = engine.layer(layer)  # 404 for an unknown layer
        count, what = info.channels, f"layer {layer!r}"
        if objective == "channel" and position is not None:
            raise InvalidRequestError("a position applies to the unit objective only")
    for channel in channels:
        if not 0 <= channel < count:
            raise InvalidRequestError(f"channel {channel} is out of range for {what} (0..{count - 1})")
    if size != engine.input_size:  # a model that cannot run at this size fails here, not mid-job
        layer_shape(engine, layer if objective != "logit" else None, size)
    if objective == "unit":
        height, width = layer_shape(engine, layer, size)
        if position is None:
            position = (height // 2, width // 2)
        y, x = position
        if not (0 <= y < height and 0 <= x < width):
            raise InvalidRequestError(
                f"position ({y}, {x}) is outside layer {layer!r} ({height}×{width} at size {size})"
            )
    return Target(layer, tuple(int(c) for c in channels), objective, steps, size, seed, position)  # type: ignore[arg-type]


def layer_shape(engine: Engine, layer: str | None, size: int) -> tuple[int, int]:
    """(H, W) of a layer's output for an S×S input (one forward pass unless S is the model's
    size); with no layer, only checks that the model runs at that size."""
    if size == engine.input_size and layer is not None:
        info = engine.layer(layer)
        return info.height, info.width
    probe = torch.zeros(1, 3, size, size)
    names = [layer] if layer is not None else []
    try:
        _, outputs = engine.forward_batch(probe, names)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidRequestError(f"model {engine.name!r} cannot run at size {size}: {first}") from None
    if layer is None:
        return 0, 0
    _, _, height, width = outputs[layer].shape
    return int(height), int(width)


def scores(output: torch.Tensor, channels: Sequence[int], target: Target) -> torch.Tensor:
    """The objective of each image k of the batch for its channel `channels[k]` (K values)."""
    index = torch.arange(len(channels), device=output.device)
    chosen = torch.as_tensor(list(channels), device=output.device)
    if target.objective == "logit":
        return output[index, chosen].float()
    maps = output[index, chosen]  # K×H×W
    if target.objective == "unit":
        assert target.position is not None
        y, x = target.position
        return maps[:, y, x].float()
    return maps.float().mean(dim=(-2, -1))
