"""Projection starts on 2-D (N×K) outputs: the model's logits and its fully connected layers.

A class score or a fully connected unit is projected like a feature map's unit: the
seed is one unit holding its value, and the engine's rules carry it down through the
recorded graph (linear layers: transposed weights, no bias; flatten and global
pooling: their linear adjoint; max-pool: its switches) — all of this is what
autograd's backward of those operations is. `select` and positions do not apply
(a 2-D layer has no spatial map): `select` is ignored, a position must be None or (0, 0).

The logits are the start named `LOGITS`; the softmax probabilities are not a start,
since the softmax couples every class (a probability's gradient mixes all logits).
Where the model's output is a linear layer's own output (EfficientNet-Lite0's
`classifier`, VGG's `classifier.6`, ResNet's `fc`), that layer and `logits` are one
start: only `logits` is listed, and the layer's name stays a projection start (an
alias, so links and CLI calls naming it keep working).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from convscope.engine.graph import PathFacts
from convscope.engine.receptive_field import whole_image
from convscope.errors import InvalidRequestError

if TYPE_CHECKING:
    from convscope.engine.engine import LayerInfo, Seed

LOGITS = "logits"  # the model's output, as a projection start


def is_same_output(kept: torch.Tensor, other: torch.Tensor) -> bool:
    """`other` is `kept` itself, or a clone of it (`LayerCapture` records a layer's own output
    and may pass a clone on to the rest of the network): one value, one autograd node."""
    if other is kept:
        return True
    if kept.grad_fn is None:
        return False
    node = other.grad_fn
    while node is not None and type(node).__name__ == "CloneBackward0":
        node = node.next_functions[0][0]
        if node is kept.grad_fn:
            return True
    return False


def logits_aliases(outputs: Mapping[str, torch.Tensor]) -> set[str]:
    """The 2-D layers whose output is the model's output (`LOGITS`) itself."""
    logits = outputs.get(LOGITS)
    if logits is None:
        return set()
    return {
        name
        for name, output in outputs.items()
        if name != LOGITS and output.dim() == 2 and is_same_output(output, logits)
    }


def unit_starts(
    outputs: Mapping[str, torch.Tensor],
    kinds: Mapping[str, str],
    facts: Mapping[str, PathFacts],
    image_size: int,
    order: Mapping[str, int],
) -> tuple[list[LayerInfo], list[LayerInfo]]:
    """A LayerInfo for each 2-D output (channels = units, height = width = 1), in forward
    order, the logits last: the listed starts, and the layers that are aliases of `logits`
    (starts too, not listed)."""
    names = sorted(
        (name for name, output in outputs.items() if output.dim() == 2), key=lambda name: order.get(name, len(order))
    )
    infos = [
        _unit_info(
            name, int(outputs[name].shape[1]), kinds.get(name, "Linear"), facts.get(name, PathFacts()), image_size
        )
        for name in names
    ]
    aliases = logits_aliases(outputs)
    return [info for info in infos if info.name not in aliases], [info for info in infos if info.name in aliases]


def _unit_info(name: str, units: int, kind: str, here: PathFacts, image_size: int) -> LayerInfo:
    from convscope.engine.engine import LayerInfo

    return LayerInfo(
        name,
        kind,
        units,
        1,
        1,
        whole_image(image_size),  # a 2-D unit sees the whole input
        has_switches=here.has_switches,
        rules_covered=tuple(sorted(here.covered)),
        rules_uncovered=tuple(sorted(here.uncovered)),
        units=units,
    )


def validate_unit_seeds(info: LayerInfo, seeds: Sequence[Seed]) -> None:
    for seed in seeds:
        if not 0 <= seed.channel < info.channels:
            raise InvalidRequestError(
                f"unit {seed.channel} is out of range for layer {info.name!r} (0..{info.channels - 1})"
            )
        if seed.position is not None and tuple(seed.position) != (0, 0):
            raise InvalidRequestError(
                f"layer {info.name!r} has no spatial map (its {info.channels} units are 1×1): "
                "give no position, or (0, 0)"
            )


def unit_seed_tensor(
    output: torch.Tensor, seeds: Sequence[Seed], sample: int = 0, grads: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[float], list[tuple[int, int]]]:
    """K seeds on an N×U output: each one unit of `sample` holding its value (position (0, 0)), seed k
    in row k of a K×N×U gradient (written into `grads` if given)."""
    values_row = output.detach()[sample]
    if grads is None:
        grads = torch.zeros((len(seeds), *output.shape), dtype=output.dtype, device=output.device)
    values: list[float] = []
    for k, seed in enumerate(seeds):
        value = values_row[seed.channel]
        grads[k, sample, seed.channel] = value
        values.append(float(value))
    return grads, values, [(0, 0)] * len(seeds)
