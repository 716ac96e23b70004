"""Backward rules for ReLU-like activations, applied per forward pass, per thread.

DESIGN §3: the deconvnet rectifies the signal going down (`relu(signal)`), guided
backprop also applies the forward mask, plain gradient applies only the mask.
`RuleMode` is a thread-local `TorchFunctionMode`: while it is active, every ReLU
call form made in this thread (`nn.ReLU`, in-place or reused, `F.relu`,
`torch.relu`, `Tensor.relu`, `relu_`, `nn.ReLU6`, `F.relu6`, `F.hardtanh(0, 6)`)
goes through `_Rectifier`, whose backward reads the rule from a `RuleBox` owned
by that forward pass. Local response normalisation is routed through
`_RuleSwitch`, so the deconvnet passes the signal through it unchanged while the
other modes use its true gradient. Nothing global is patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

Rule = Literal["deconvnet", "guided", "gradient"]
RULES: tuple[Rule, ...] = ("deconvnet", "guided", "gradient")
# What a caller may ask for: a rule, or `auto` (deconvnet where max-pool switches lie below
# the layer, guided otherwise; `Engine.resolve_mode`).
Mode = Literal["auto", "deconvnet", "guided", "gradient"]
MODES: tuple[Mode, ...] = ("auto", "deconvnet", "guided", "gradient")


@dataclass
class RuleBox:
    """The rule one recorded forward pass uses on its way back; set before each backward."""

    rule: Rule = "deconvnet"


class _Rectifier(torch.autograd.Function):
    """clamp(x, lower, upper) forward; the box's rule backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, lower: float, upper: float | None, box: RuleBox) -> torch.Tensor:  # type: ignore[override]
        return x.clamp(min=lower, max=upper)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, lower, upper, box = inputs
        mask = x > lower
        if upper is not None:
            mask = mask & (x < upper)
        ctx.save_for_backward(mask)
        ctx.box = box
        ctx.convscope_op = "relu" if upper is None else ("relu6" if upper == 6.0 else "hardtanh")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        rule = ctx.box.rule
        if rule == "deconvnet":
            return grad.clamp(min=0), None, None, None
        if rule == "guided":
            return grad.clamp(min=0) * mask, None, None, None
        return grad * mask, None, None, None


class _RuleSwitch(torch.autograd.Function):
    """Forward: the first input (both hold the same values). Backward: the first input's
    path for `gradient`/`guided`, the second's (an identity path) for `deconvnet`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(exact: torch.Tensor, identity: torch.Tensor, box: RuleBox) -> torch.Tensor:  # type: ignore[override]
        return exact.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.box = inputs[2]
        ctx.convscope_op = "local_response_norm"

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        if ctx.box.rule == "deconvnet":
            return None, grad, None
        return grad, None, None


def _rectify(x: torch.Tensor, lower: float, upper: float | None, box: RuleBox, inplace: bool) -> torch.Tensor:
    out: torch.Tensor = _Rectifier.apply(x, lower, upper, box)
    if inplace and not (x.is_leaf and x.requires_grad):
        # Keep in-place semantics for callers that ignore the return value; autograd
        # routes the gradient of the copy to `out`, so the rule still applies.
        return x.copy_(out)
    return out


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


_RELU_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_RELU6 = {F.relu6}
_HARDTANH = {F.hardtanh, F.hardtanh_}


class RuleMode(TorchFunctionMode):
    """Route ReLU-like calls and LRN through rule-aware autograd functions (this thread only)."""

    def __init__(self, box: RuleBox) -> None:
        super().__init__()
        self.box = box

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_OUT_OF_PLACE:
            inplace = bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
            return _rectify(args[0], 0.0, None, self.box, inplace)
        if func in _RELU_IN_PLACE:
            return _rectify(args[0], 0.0, None, self.box, True)
        if func in _RELU6:
            return _rectify(args[0], 0.0, 6.0, self.box, bool(_arg(args, kwargs, 1, "inplace", False)))
        if func in _HARDTANH:
            low = float(_arg(args, kwargs, 1, "min_val", -1.0))
            high = float(_arg(args, kwargs, 2, "max_val", 1.0))
            if low == 0.0:
                inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
                return _rectify(args[0], 0.0, high, self.box, inplace)
        if func is F.local_response_norm:
            x = args[0]
            exact = func(*args, **kwargs)
            identity = x + (exact - x).detach()
            return _RuleSwitch.apply(exact, identity, self.box)
        return func(*args, **kwargs)
