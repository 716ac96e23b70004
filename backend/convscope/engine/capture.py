"""Recording the 4-D outputs of named modules during one forward pass.

`LayerCapture` owns all the hooks it registers and removes them on exit, even on
error. Each hooked module's output is kept as it was produced: with a graph, the
original is kept and a clone passed on; without one, a copy is kept. Either way
in-place operations further down (`out += identity`, in-place activations) never
rewrite a recorded output or its autograd history.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class LayerCapture:
    """Context manager: `outputs[name]` is the first 4-D output each named module produced."""

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        self.model = model
        wanted = None if names is None else set(names)
        self._modules = [
            (name, module) for name, module in model.named_modules() if name and (wanted is None or name in wanted)
        ]
        self.outputs: dict[str, torch.Tensor] = {}
        self.kinds: dict[str, str] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if not (isinstance(output, torch.Tensor) and output.dim() == 4) or name in self.outputs:
                return None
            self.kinds[name] = type(module).__name__
            if output.requires_grad:
                # keep the original (and its graph); the network goes on with a copy
                self.outputs[name] = output
                return output.clone()
            # no graph: keep a copy, so a later in-place op (ReLU(inplace=True)) cannot rewrite it
            self.outputs[name] = output.clone()
            return None

        return hook

    def __enter__(self) -> LayerCapture:
        try:
            for name, module in self._modules:
                self._handles.append(module.register_forward_hook(self._hook(name)))
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
