"""Feature vectors of named modules for a batch of model inputs.

The engine records 4-D feature maps; the studies also need the "penultimate
layer", a 2-D vector per image (EfficientNet's pooled 1280 features, ZF's fc7).
A feature is named by a string:

- `NAME`: the output of the module `NAME` (from `model.named_modules()`);
- `NAME:input`: the first input of that module (e.g. `classifier:input`, the
  vector the final linear classifier sees);
- `penultimate`: the input of the model's last `nn.Linear` (its classifier); a
  model without one falls back to the output of its last 4-D layer.

`extract_features` runs one batch through `Engine.infer` with a tap on each named
module (the engine owns the hooks and its lock, for this batch only). Every captured
tensor is copied at once, so a later in-place operation (ReLU with `inplace=True`)
cannot rewrite it, and flattened to N×D float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from convscope.errors import InvalidRequestError
from convscope.layer_names import resolve_name

if TYPE_CHECKING:
    from convscope.engine import Engine

PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class FeatureSpec:
    """Where a feature vector comes from: a module's output, or its first input."""

    module: str
    use_input: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}:input" if self.use_input else self.module


def _modules(engine: Engine) -> dict[str, nn.Module]:
    return {name: module for name, module in engine.model.module.named_modules() if name}


def penultimate_feature(engine: Engine) -> str:
    """The name of the penultimate feature: the input of the last `nn.Linear`, else the last 4-D layer."""
    linears = [name for name, module in _modules(engine).items() if isinstance(module, nn.Linear)]
    if linears:
        return f"{linears[-1]}:input"
    return engine.layers()[-1].name


def first_conv_layer(engine: Engine) -> str:
    """The first `nn.Conv2d` in module order (the paper's layer 1)."""
    for name, module in _modules(engine).items():
        if isinstance(module, nn.Conv2d):
            return name
    raise InvalidRequestError(f"model {engine.name!r} has no Conv2d layer")


def resolve_feature(engine: Engine, name: str | None, default: str = PENULTIMATE) -> FeatureSpec:
    """Check a feature name (NotFoundError for an unknown module) and say where it comes from."""
    name = (name or default).strip()
    if name == PENULTIMATE:
        name = penultimate_feature(engine)
    module, _, part = name.partition(":")
    if part not in ("", "input"):
        raise InvalidRequestError(f"feature {name!r}: use a module name, NAME:input, or {PENULTIMATE!r}")
    module = resolve_name(module, _modules(engine), model=engine.name, what="module")
    return FeatureSpec(module, use_input=part == "input")


def extract_features(
    engine: Engine, batch: torch.Tensor, features: Sequence[FeatureSpec]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (N×classes) and each feature as an N×D float32 CPU tensor, from one forward pass."""
    from convscope.engine.capture import Tap

    size = int(batch.shape[0])
    taps = {spec: Tap(spec.module, input=spec.use_input) for spec in dict.fromkeys(features)}
    logits, tapped = engine.infer(batch, taps.values())
    captured: dict[str, torch.Tensor] = {}
    for spec, tap in taps.items():
        value = tapped.get(tap)
        if value is not None and value.dim() >= 1 and int(value.shape[0]) == size:
            captured[spec.name] = value.reshape(size, -1).float().cpu()
    missing = [spec.name for spec in features if spec.name not in captured]
    if missing:
        raise InvalidRequestError(
            f"no per-image tensor was produced at {', '.join(missing)} during the forward pass; choose another layer"
        )
    return logits.detach().float().cpu(), captured
