"""Forward hooks, owned in one place: recording 4-D layer outputs and tapping modules.

`LayerCapture` registers its hooks on enter and removes them on exit, even on
error, and only acts on calls made in the thread that entered it (so two threads'
passes through one model never see each other's captures). It does two things:

- `names`: record the first 4-D output each named module produces (for the
  recorded forward pass of a projection; with `linear`, nn.Linear's 2-D outputs too). With a graph, the original output is
  kept and a clone passed on where a later in-place operation could rewrite it
  (`clone`: those layers; None: every one), the others are kept as they are and
  their version counters checked afterwards (`rewritten()`); without a graph, a
  copy is kept. With `stop_after`, the pass ends (`StopForward`) as soon as that
  layer's output is recorded, as it is: nothing runs after it, so nothing rewrites it.
- `taps`: capture a module's output or first input (`Tap`), optionally reduced at
  once (spatial mean/sum/max, or any function), detached; a tap's first call counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Reduction = Literal["mean", "sum", "max"]
_SPATIAL = (2, 3)


@dataclass(frozen=True)
class Tap:
    """What to capture at one module during a no-grad pass (`Engine.infer`).

    `reduce`: None keeps the tensor (copied); "mean", "sum" or "max" reduce a 4-D
    tensor over its spatial dimensions (N×C×H×W -> N×C; a call whose tensor is not
    4-D is passed over); a function is applied to the detached tensor as produced
    (its result is kept; copy it if it is a view)."""

    module: str
    input: bool = False  # the module's first input instead of its output
    reduce: Reduction | Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return f"{self.module}:input" if self.input else self.module

    def apply(self, value: torch.Tensor) -> torch.Tensor | None:
        """What this tap keeps of `value`; None when a spatial reduction does not apply."""
        value = value.detach()
        if self.reduce is None:
            return value.clone()
        if callable(self.reduce):
            return self.reduce(value)
        if value.dim() != 4:
            return None
        if self.reduce == "mean":
            return value.mean(dim=_SPATIAL)
        if self.reduce == "sum":
            return value.sum(dim=_SPATIAL)
        return value.amax(dim=_SPATIAL)


class StopForward(Exception):
    """Raised out of the model's forward by a `LayerCapture` whose `stop_after` layer was recorded."""


class LayerCapture:
    """Context manager: `outputs[name]` is the first 4-D output each named module produced
    (all modules when `names` is None); `tapped[tap]` what each tap captured."""

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str] | None = None,
        *,
        taps: Iterable[Tap] = (),
        clone: Collection[str] | None = None,
        linear: bool = False,
        stop_after: str | None = None,
    ) -> None:
        self.model = model
        modules = dict(model.named_modules())
        self.taps = list(dict.fromkeys(taps))
        wanted: set[str] | None = None if names is None else set(names)
        if names is None and self.taps:
            wanted = set()  # taps only
        self._layers = [(n, m) for n, m in modules.items() if n and (wanted is None or n in wanted)]
        self._tapped_modules = [(tap, modules[tap.module]) for tap in self.taps]
        self._clone = clone
        self._linear = linear  # also record nn.Linear modules' 2-D outputs
        self._stop_after = stop_after
        self.outputs: dict[str, torch.Tensor] = {}
        self.tapped: dict[Tap, torch.Tensor] = {}
        # (tensor, its version when recorded): outputs kept uncloned, and the clones passed on
        self._kept: dict[str, tuple[torch.Tensor, int]] = {}
        self._passed_on: dict[str, tuple[torch.Tensor, int]] = {}
        self._handles: list[RemovableHandle] = []
        self._thread: int | None = None

    def _layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            if not isinstance(output, torch.Tensor) or name in self.outputs:
                return None
            flat = self._linear and output.dim() == 2 and isinstance(module, nn.Linear)
            if output.dim() != 4 and not flat:
                return None
            if name == self._stop_after:  # nothing downstream runs: kept as it is
                self.outputs[name] = output if output.requires_grad else output.clone()
                raise StopForward(name)
            if output.requires_grad:
                self.outputs[name] = output
                if self._clone is not None and name not in self._clone:
                    self._kept[name] = (output, output._version)
                    return None
                # keep the original (and its graph); the network goes on with a copy
                copy = output.clone()
                self._passed_on[name] = (copy, copy._version)
                return copy
            # no graph: keep a copy, so a later in-place op (ReLU(inplace=True)) cannot rewrite it
            self.outputs[name] = output.clone()
            return None

        return hook

    def _tap_hook(self, tap: Tap) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if threading.get_ident() != self._thread or tap in self.tapped:
                return
            value = (inputs[0] if inputs else None) if tap.input else output
            if isinstance(value, torch.Tensor) and (kept := tap.apply(value)) is not None:
                self.tapped[tap] = kept

        return hook

    def rewritten(self) -> set[str]:
        """Layers whose output, kept uncloned, an in-place operation changed after it was recorded."""
        return {name for name, (tensor, version) in self._kept.items() if tensor._version != version}

    def changed_downstream(self) -> set[str]:
        """Layers whose passed-on copy an in-place operation changed: they need the copy."""
        return {name for name, (tensor, version) in self._passed_on.items() if tensor._version != version}

    def __enter__(self) -> LayerCapture:
        self._thread = threading.get_ident()
        try:
            for name, module in self._layers:
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
            for tap, module in self._tapped_modules:
                self._handles.append(module.register_forward_hook(self._tap_hook(tap)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
