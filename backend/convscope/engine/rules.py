"""Backward rules for element-wise activations, applied per forward pass, per thread.

docs/deconvnet.md: the deconvnet rectifies the signal going down (`relu(signal)`), guided
backprop also applies the forward mask, plain gradient applies only the mask.
`RuleMode` is a thread-local `TorchFunctionMode`: while it is active, every ReLU
call form made in this thread (`nn.ReLU`, in-place or reused, `F.relu`,
`torch.relu`, `Tensor.relu`, `relu_`, `nn.ReLU6`, `F.relu6`, `F.hardtanh(0, 6)`)
goes through `_Rectifier`, whose backward reads the rule from a `RuleBox` owned
by that forward pass. Local response normalisation is routed through
`_RuleSwitch`, so the deconvnet passes the signal through it unchanged while the
other modes use its true gradient. Nothing global is patched.

The other element-wise activations — SiLU/Swish, GELU (exact and tanh), LeakyReLU,
ELU, Hardswish, Mish, as modules or functions, in place or not — go through
`_Activation`, with the paper's rule generalised: the deconvnet rectifies the signal
and ignores the forward input (`relu(signal)`), guided backprop rectifies the signal
and multiplies it by the activation's derivative f'(x) where that is positive
(`relu(signal) · f'(x) · [f'(x) > 0]`), the gradient uses the true derivative
(`signal · f'(x)`, PyTorch's own backward formula). For ReLU these are exactly the
rules above. Any other element-wise non-linearity keeps its plain derivative in every
mode and is reported per layer as uncovered (`engine/graph.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


_active = threading.local()


@contextmanager
def using_rule(rule: Rule) -> Iterator[None]:
    """The rule every backward pass run in this thread inside the block uses (per call, so
    several threads can go back through one recorded graph at once, each with its own)."""
    previous = getattr(_active, "rule", None)
    _active.rule = rule
    try:
        yield
    finally:
        _active.rule = previous


def active_rule() -> Rule | None:
    """The rule set by `using_rule` in this thread, if any."""
    rule: Rule | None = getattr(_active, "rule", None)
    return rule


@dataclass
class RuleBox:
    """What one recorded forward pass's rule functions ask for the rule on the way back:
    the calling thread's `using_rule`, else `rule` (for backward passes that autograd runs
    in its own device threads, i.e. on CUDA, where the engine sets it under its lock)."""

    rule: Rule = "deconvnet"

    def current(self) -> Rule:
        rule = active_rule()
        return self.rule if rule is None else rule


class _Rectifier(torch.autograd.Function):
    """clamp(x, lower, upper) forward (in place when the call was: the network's own tensor is
    rewritten, as without the engine); the box's rule backward.

    It saves its output, which the network keeps anyway (the next layer saves it as its
    input), and which tells the forward mask exactly: `out > lower` ⇔ `x > lower`, `out <
    upper` ⇔ `x < upper`. The mask is applied by PyTorch's own fused rectifier backward
    (`threshold_backward`, `hardtanh_backward`), never stored (engine/cone.py reads the
    saved output and the bounds from the node too). Forward and context in one method: a
    separate `setup_context` costs a signature binding per call (~25 µs, 33 calls a pass on
    EfficientNet-Lite0); the rules are vmapped only on the way back (`is_grads_batched`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, lower: float, upper: float | None, box: RuleBox, inplace: bool
    ) -> torch.Tensor:
        if inplace:
            output = x.clamp_(min=lower, max=upper)
            ctx.mark_dirty(x)
        else:
            output = x.clamp(min=lower, max=upper)
        ctx.save_for_backward(output)
        ctx.lower, ctx.upper, ctx.box = lower, upper, box
        ctx.convscope_op = "relu" if upper is None else ("relu6" if upper == 6.0 else "hardtanh")
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        rule = ctx.box.current()
        if rule == "deconvnet":
            return grad.clamp(min=0), None, None, None, None
        (output,) = ctx.saved_tensors
        signal = grad.clamp(min=0) if rule == "guided" else grad
        return rectifier_mask(signal, output, ctx.lower, ctx.upper), None, None, None, None


def rectifier_mask(signal: torch.Tensor, output: torch.Tensor, lower: float, upper: float | None) -> torch.Tensor:
    """`signal` where the rectifier's forward input lay strictly inside (lower, upper), else 0,
    told by its output (PyTorch's own ReLU / hardtanh backward; shared with engine/cone.py)."""
    if upper is None:
        return torch.ops.aten.threshold_backward(signal, output, lower)
    return torch.ops.aten.hardtanh_backward(signal, output, lower, upper)


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
        if ctx.box.current() == "deconvnet":
            return None, grad, None
        return grad, None, None


def _silu_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.silu_backward(grad, x)


def _gelu_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x, approximate=params[0])


def _leaky_relu_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.leaky_relu_backward(grad, x, params[0], False)


def _elu_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.elu_backward(grad, params[0], 1.0, 1.0, False, x)


def _hardswish_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.hardswish_backward(grad, x)


def _mish_backward(grad: torch.Tensor, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
    return torch.ops.aten.mish_backward(grad, x)


# name -> (forward f(x, *params), signal·f'(x) as PyTorch computes it)
_ACTIVATIONS: dict[str, tuple[Any, Any]] = {
    "silu": (lambda x, p: F.silu(x), _silu_backward),
    "gelu": (lambda x, p: F.gelu(x, approximate=p[0]), _gelu_backward),
    "leaky_relu": (lambda x, p: F.leaky_relu(x, p[0]), _leaky_relu_backward),
    "elu": (lambda x, p: F.elu(x, p[0]), _elu_backward),
    "hardswish": (lambda x, p: F.hardswish(x), _hardswish_backward),
    "mish": (lambda x, p: F.mish(x), _mish_backward),
}


class _Activation(torch.autograd.Function):
    """f(x) forward for one of `_ACTIVATIONS`; the box's generalised rule backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, name: str, params: tuple[Any, ...], box: RuleBox) -> torch.Tensor:  # type: ignore[override]
        result: torch.Tensor = _ACTIVATIONS[name][0](x, params)
        return result

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, name, params, box = inputs
        ctx.save_for_backward(x)
        ctx.name, ctx.params, ctx.box = name, params, box
        ctx.convscope_op = name

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        rule = ctx.box.current()
        if rule == "deconvnet":
            return grad.clamp(min=0), None, None, None
        derivative = _ACTIVATIONS[ctx.name][1]
        if rule == "guided":
            # relu(signal) ≥ 0, so the product's sign is f'(x)'s: clamping keeps it where f'(x) > 0
            return derivative(grad.clamp(min=0), x, ctx.params).clamp(min=0), None, None, None
        return derivative(grad, x, ctx.params), None, None, None


def _activate(x: torch.Tensor, name: str, params: tuple[Any, ...], box: RuleBox, inplace: bool) -> torch.Tensor:
    if inplace and not (x.is_leaf and x.requires_grad):
        # the backward needs x as it was: keep a copy of it, then rewrite x as the caller expects
        out: torch.Tensor = _Activation.apply(x.clone(), name, params, box)
        return x.copy_(out)
    result: torch.Tensor = _Activation.apply(x, name, params, box)
    return result


def _rectify(x: torch.Tensor, lower: float, upper: float | None, box: RuleBox, inplace: bool) -> torch.Tensor:
    # in place as the call asked (a leaf that requires grad cannot be: a copy then)
    in_place = inplace and not (x.is_leaf and x.requires_grad)
    out: torch.Tensor = _Rectifier.apply(x, lower, upper, box, in_place)
    return out


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


_RELU_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_RELU6 = {F.relu6}
_HARDTANH = {F.hardtanh, F.hardtanh_}
# function -> (activation name, its parameters from (args, kwargs), whether it works in place)
_INPLACE_ARG: dict[Any, tuple[int, str]] = {
    F.silu: (1, "inplace"),
    F.hardswish: (1, "inplace"),
    F.mish: (1, "inplace"),
    F.leaky_relu: (2, "inplace"),
    F.elu: (2, "inplace"),
}
_ACTIVATION_CALLS: dict[Any, tuple[str, Any]] = {
    F.silu: ("silu", lambda a, k: ()),
    F.gelu: ("gelu", lambda a, k: (str(_arg(a, k, 1, "approximate", "none")),)),
    F.leaky_relu: ("leaky_relu", lambda a, k: (float(_arg(a, k, 1, "negative_slope", 0.01)),)),
    F.leaky_relu_: ("leaky_relu", lambda a, k: (float(_arg(a, k, 1, "negative_slope", 0.01)),)),
    F.elu: ("elu", lambda a, k: (float(_arg(a, k, 1, "alpha", 1.0)),)),
    F.elu_: ("elu", lambda a, k: (float(_arg(a, k, 1, "alpha", 1.0)),)),
    F.hardswish: ("hardswish", lambda a, k: ()),
    F.mish: ("mish", lambda a, k: ()),
}
_ALWAYS_IN_PLACE = {F.leaky_relu_, F.elu_}
_ROUTED = frozenset(
    {*_RELU_OUT_OF_PLACE, *_RELU_IN_PLACE, *_RELU6, *_HARDTANH, *_ACTIVATION_CALLS, F.local_response_norm}
)


class RuleMode(TorchFunctionMode):
    """Route element-wise activations and LRN through rule-aware autograd functions (this thread only)."""

    def __init__(self, box: RuleBox) -> None:
        super().__init__()
        self.box = box

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func not in _ROUTED:  # the common case, kept cheap: every op of the forward pass comes here
            return func(*args, **kwargs) if kwargs else func(*args)
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
        if func in _ACTIVATION_CALLS:
            name, params = _ACTIVATION_CALLS[func]
            if func in _ALWAYS_IN_PLACE:
                inplace = True
            elif func in _INPLACE_ARG:
                inplace = bool(_arg(args, kwargs, *_INPLACE_ARG[func], False))
            else:
                inplace = False
            return _activate(args[0], name, params(args, kwargs), self.box, inplace)
        if func is F.local_response_norm:
            x = args[0]
            exact = func(*args, **kwargs)
            identity = x + (exact - x).detach()
            return _RuleSwitch.apply(exact, identity, self.box)
        return func(*args, **kwargs)
