"""Exact receptive-field ("cone") backward over a recorded forward pass.

A seed at layer L that is non-zero in a small window only reaches its receptive
field, yet a dense backward pass runs every transposed convolution over the
whole map. This module walks the recorded autograd graph itself (from the
seed's `grad_fn` down to the image's `AccumulateGrad`), plans per node the box
of indices — batch, channels, rows, columns — that can be non-zero, and runs
each node's backward only over that box, from the tensors the recorded pass
already holds (convolution weights, max-pool switches, batch-norm statistics,
the rectifier masks saved by `rules._Rectifier`). No new forward pass runs, so
no mask can flip.

Per node: a convolution's input box is `[t·s − p, (b−1)·s − p + d·(k−1) + 1)`
per spatial axis, clipped to the map, and covers one group's input channels (or
the touched groups'); a max pool routes to its switches inside the same kind of
window; batch norm, rectifiers and other element-wise steps keep the box;
residual additions and shared inputs take the union (hull) of their branches'
boxes; concatenations split it. Any node this module does not know — global
pooling, squeeze-and-excitation, linear layers below the seed, an activation
rule it does not recognise — makes the whole seed fall back to the dense pass.

`plan()` estimates the arithmetic of both routes; `backward_if_cheaper()` runs
the cone only when it needs at most `MAX_RATIO` of the dense work, and only on
the CPU (on CUDA the batched dense backward is launch-bound and stays). The rule
(deconvnet / guided / gradient) is an argument of every call, never read from
the recorded pass, so one recorded graph serves concurrent calls with
different rules.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

Box = tuple[tuple[int, int], ...]  # per dimension [start, stop)
Shape = tuple[int, ...]
T = TypeVar("T")

MAX_RATIO = 0.5  # cone only when its planned work is at most this share of the dense work
# Python cost of one executed cone step, in multiply-adds: the cone pays it per node and
# per seed while autograd's C++ engine does not (about 20 µs at ~10 GMAC/s on one core).
STEP_OVERHEAD = 200_000


class ConeUnsupported(Exception):
    """The recorded graph holds a node (or a seed) the cone cannot follow exactly."""


# ---- boxes ------------------------------------------------------------------------------


def _full(shape: Shape) -> Box:
    return tuple((0, size) for size in shape)


def _extent(box: Box) -> Shape:
    return tuple(stop - start for start, stop in box)


def _volume(box: Box) -> int:
    return math.prod(_extent(box))


def _empty(box: Box) -> bool:
    return any(stop <= start for start, stop in box)


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


def _inner(outer: Box, inner: Box) -> tuple[slice, ...]:
    """Slices of `inner` within a tensor that holds `outer`."""
    return tuple(slice(i0 - o0, i1 - o0) for (o0, _), (i0, i1) in zip(outer, inner, strict=True))


def _hull(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return tuple((min(a0, b0), max(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))


def _window(start: int, stop: int, kernel: int, stride: int, padding: int, dilation: int, size: int) -> tuple[int, int]:
    """Input rows reached by output rows [start, stop) of a sliding window, clipped to the map."""
    low = start * stride - padding
    high = (stop - 1) * stride - padding + dilation * (kernel - 1) + 1
    return max(low, 0), min(high, size)


def _reduced_box(box: Box, shape: Shape, child: Shape) -> Box:
    """The box of a gradient broadcast from `child` to `shape`, summed back to `child`."""
    lead = len(shape) - len(child)
    return tuple((0, 1) if size == 1 and shape[lead + i] != 1 else box[lead + i] for i, size in enumerate(child))


def _reduce(grad: torch.Tensor, shape: Shape, child: Shape) -> torch.Tensor:
    """Sum a windowed gradient over the dimensions `child` was broadcast along."""
    lead = len(shape) - len(child)
    if lead:
        grad = grad.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, size in enumerate(child) if size == 1 and shape[lead + i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


def _factor(value: Any, box: Box) -> Any:
    """A saved operand broadcastable to the output, cut to the output's box."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    lead = len(box) - value.dim()
    index = tuple(slice(None) if size == 1 else slice(*box[lead + i]) for i, size in enumerate(value.shape))
    return value[index]


def _pair(value: Any, count: int = 2) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        values = [int(v) for v in value]
        return tuple(values * count) if len(values) == 1 else tuple(values)
    return (int(value),) * count


# ---- steps: one per recorded node -------------------------------------------------------


class _Step:
    """One node's backward over a box. `edges[i]` is the program index of the node's i-th
    input (None: that input needs no gradient), `inputs[i]` that input's full shape."""

    def __init__(self, shape: Shape, edges: Sequence[int | None], inputs: Sequence[Shape | None]) -> None:
        self.shape = shape
        self.edges = tuple(edges)
        self.inputs = tuple(inputs)

    def first(self, value: T) -> tuple[T | None, ...]:
        """`value` for the first input, nothing for the others (weights, biases, options)."""
        return (value,) + (None,) * (len(self.edges) - 1)

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        raise NotImplementedError

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return _volume(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        raise NotImplementedError


class _Identity(_Step):
    """Clone, alias, the recorded output's copy: the gradient passes unchanged."""

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return tuple(box if i == self.source else None for i in range(len(self.edges)))

    source = 0

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        return [grad if i == self.source else None for i in range(len(self.edges))]


class _CopyInto(_Identity):
    """`dst.copy_(src)` (in-place activations): the overwritten `dst` gets nothing."""

    source = 1


class _Rectifier(_Step):
    """The engine's ReLU-like node: deconvnet `relu(g)`, guided `relu(g)·mask`, gradient `g·mask`."""

    def __init__(self, mask: torch.Tensor, *args: Any) -> None:
        super().__init__(*args)
        self.mask = mask

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return self.first(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        if rule == "deconvnet":
            out = grad.clamp(min=0)
        elif rule == "guided":
            out = grad.clamp(min=0) * self.mask[_slices(box)]
        elif rule == "gradient":
            out = grad * self.mask[_slices(box)]
        else:
            raise ConeUnsupported(f"unknown rule {rule!r}")
        return list(self.first(out))


class _RuleSwitch(_Step):
    """Local response normalisation: identity for the deconvnet, its true gradient otherwise."""

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return (None, box) if rule == "deconvnet" else (box, None)

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        return [None, grad] if rule == "deconvnet" else [grad, None]


class _Convolution(_Step):
    """2-D convolution: a transposed convolution of the box, cropped to the input's box."""

    def __init__(self, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any, groups: int, *args: Any) -> None:
        super().__init__(*args)
        self.weight = weight
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.out_per_group = weight.shape[0] // groups
        self.in_per_group = weight.shape[1]

    def _channels(self, c0: int, c1: int) -> tuple[int, int, int, int, int]:
        """(first, last) output channels the transposed convolution takes, its groups, and the
        input channels it yields: one group's subset exactly, else whole touched groups."""
        per = self.out_per_group
        if c0 // per == (c1 - 1) // per:
            group = c0 // per
            return c0, c1, 1, group * self.in_per_group, (group + 1) * self.in_per_group
        g0, g1 = c0 // per, -(-c1 // per)
        return g0 * per, g1 * per, g1 - g0, g0 * self.in_per_group, g1 * self.in_per_group

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        shape = self.inputs[0]
        assert shape is not None
        (n0, n1), (c0, c1), (y0, y1), (x0, x1) = box
        _, _, _, i0, i1 = self._channels(c0, c1)
        (kh, kw), (sh, sw) = self.weight.shape[2:], self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        rows = _window(y0, y1, kh, sh, ph, dh, shape[2])
        cols = _window(x0, x1, kw, sw, pw, dw, shape[3])
        return self.first(((n0, n1), (i0, i1), rows, cols))

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        (n0, n1), (c0, c1), (y0, y1), (x0, x1) = box
        first, last, _, _, _ = self._channels(c0, c1)
        kh, kw = self.weight.shape[2:]
        return (n1 - n0) * (last - first) * (y1 - y0) * (x1 - x0) * self.in_per_group * kh * kw

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        _, (c0, c1), (y0, _), (x0, _) = box
        first, last, groups, _, _ = self._channels(c0, c1)
        if (first, last) != (c0, c1):
            grad = F.pad(grad, (0, 0, 0, 0, c0 - first, last - c1))
        out = F.conv_transpose2d(grad, self.weight[first:last], None, self.stride, 0, 0, groups, self.dilation)
        (sh, sw), (ph, pw) = self.stride, self.padding
        _, _, (r0, r1), (q0, q1) = target
        top, left = r0 - (y0 * sh - ph), q0 - (x0 * sw - pw)
        out = out[:, :, top : top + r1 - r0, left : left + q1 - q0]
        return list(self.first(out))


class _MaxPool(_Step):
    """2-D max pooling: each value goes to its recorded switch (values sharing one add)."""

    def __init__(
        self, indices: torch.Tensor, kernel: Any, stride: Any, padding: Any, dilation: Any, *args: Any
    ) -> None:
        super().__init__(*args)
        self.indices = indices
        self.kernel = _pair(kernel)
        self.stride = _pair(stride) if stride else self.kernel
        self.padding, self.dilation = _pair(padding), _pair(dilation)

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        shape = self.inputs[0]
        assert shape is not None
        n, c, (y0, y1), (x0, x1) = box
        rows = _window(y0, y1, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], shape[2])
        cols = _window(x0, x1, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], shape[3])
        return self.first((n, c, rows, cols))

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target, shape = below[0], self.inputs[0]
        assert target is not None and shape is not None
        (n0, n1), (c0, c1), (r0, r1), (q0, q1) = target
        switches = self.indices[_slices(box)]
        rows, cols = switches.div(shape[3], rounding_mode="floor"), switches.remainder(shape[3])
        local = ((rows - r0) * (q1 - q0) + (cols - q0)).reshape(n1 - n0, c1 - c0, -1)
        out = grad.new_zeros(n1 - n0, c1 - c0, (r1 - r0) * (q1 - q0))
        out.scatter_add_(2, local, grad.reshape(n1 - n0, c1 - c0, -1))
        return list(self.first(out.reshape(_extent(target))))


class _AvgPool(_Step):
    """Average pooling (2-D or 3-D, e.g. inside local response normalisation): planned as a
    sliding window over the last axes, computed by the exact kernel over the full map."""

    def __init__(self, saved: torch.Tensor, options: dict[str, Any], *args: Any) -> None:
        super().__init__(*args)
        self.saved = saved
        self.options = options
        self.axes = len(options["kernel_size"])

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        shape = self.inputs[0]
        assert shape is not None
        o = self.options
        lead = len(box) - self.axes
        result = list(box[:lead])
        for axis in range(self.axes):
            start, stop = box[lead + axis]
            result.append(
                _window(
                    start, stop, o["kernel_size"][axis], o["stride"][axis], o["padding"][axis], 1, shape[lead + axis]
                )
            )
        return self.first(tuple(result))

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return math.prod(self.shape) * math.prod(self.options["kernel_size"])

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        full = grad.new_zeros(self.shape)
        full[_slices(box)] = grad
        o = self.options
        backward = torch.ops.aten.avg_pool3d_backward if self.axes == 3 else torch.ops.aten.avg_pool2d_backward
        out = backward(
            full,
            self.saved,
            o["kernel_size"],
            o["stride"],
            o["padding"],
            o["ceil_mode"],
            o["count_include_pad"],
            o["divisor_override"],
        )
        return list(self.first(out[_slices(target)]))


class _BatchNorm(_Step):
    """Batch norm in eval mode: a per-channel scale."""

    def __init__(self, scale: torch.Tensor, *args: Any) -> None:
        super().__init__(*args)
        self.scale = scale

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return self.first(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        (c0, c1) = box[1]
        scale = self.scale[c0:c1].reshape(1, -1, *([1] * (grad.dim() - 2)))
        return list(self.first(grad * scale))


class _Pointwise(_Step):
    """Element-wise arithmetic with broadcasting: each input's gradient is a product of the
    box of the incoming gradient with saved operands cut to the same box."""

    def __init__(self, kind: str, operands: dict[str, Any], *args: Any) -> None:
        super().__init__(*args)
        self.kind = kind
        self.operands = operands

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return tuple(None if shape is None else _reduced_box(box, self.shape, shape) for shape in self.inputs)

    def _gradient(self, index: int, box: Box, grad: torch.Tensor) -> torch.Tensor | None:
        kind, o = self.kind, self.operands
        if kind in ("Add0", "Sub0"):
            alpha = o["alpha"] if index == 1 else 1
            sign = -1 if kind == "Sub0" and index == 1 else 1
            return grad if alpha * sign == 1 else grad * (alpha * sign)
        if kind in ("Add1", "Sub1"):
            return grad
        if kind == "Neg":
            return -grad
        if kind == "Mul0":
            return grad * _factor(o["other" if index == 0 else "self"], box)
        if kind == "Mul1":
            return grad * o["other"]
        if kind == "Div0":
            other = _factor(o["other"], box)
            if index == 0:
                return grad / other
            return -grad * ((_factor(o["self"], box) / other) / other)
        if kind == "Div1":
            return grad / o["other"]
        if kind == "Pow0":
            exponent = o["exponent"]
            if exponent == 0:
                return torch.zeros_like(grad)
            return grad * (exponent * _factor(o["self"], box).pow(exponent - 1))
        raise ConeUnsupported(kind)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        results: list[torch.Tensor | None] = []
        for index, shape in enumerate(self.inputs):
            if shape is None or self.edges[index] is None:
                results.append(None)
                continue
            part = self._gradient(index, box, grad)
            assert part is not None
            results.append(_reduce(part, self.shape, shape))
        return results


class _Reshape(_Step):
    """A view, squeeze or unsqueeze that only adds or removes size-1 dimensions."""

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        shape = self.inputs[0]
        assert shape is not None
        kept = iter(b for b, size in zip(box, self.shape, strict=True) if size != 1)
        return self.first(tuple((0, 1) if size == 1 else next(kept) for size in shape))

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        return list(self.first(grad.reshape(_extent(target))))


class _Pad(_Step):
    """Constant padding: the gradient of the unpadded part."""

    def __init__(self, pad: Sequence[int], *args: Any) -> None:
        super().__init__(*args)
        dims = len(self.shape)
        self.before = [0] * dims
        for i in range(len(pad) // 2):
            self.before[dims - 1 - i] = int(pad[2 * i])

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        shape = self.inputs[0]
        assert shape is not None
        target = tuple(
            (max(a - p, 0), min(b - p, size)) for (a, b), p, size in zip(box, self.before, shape, strict=True)
        )
        return self.first(target)

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        index = tuple(
            slice(t0 + p - a, t1 + p - a) for (a, _), (t0, t1), p in zip(box, target, self.before, strict=True)
        )
        return list(self.first(grad[index]))


class _Select(_Step):
    """`x.select(dim, index)` (e.g. `x[:, 0]`): the gradient lands in one slice."""

    def __init__(self, dim: int, index: int, *args: Any) -> None:
        super().__init__(*args)
        shape = self.inputs[0]
        assert shape is not None
        self.dim = dim % len(shape)
        self.index = index % shape[self.dim]

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        target = (*box[: self.dim], (self.index, self.index + 1), *box[self.dim :])
        return self.first(target)

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        return list(self.first(grad.unsqueeze(self.dim)))


class _Cat(_Step):
    """Concatenation: each input takes its part of the box."""

    def __init__(self, dim: int, *args: Any) -> None:
        super().__init__(*args)
        self.dim = dim % len(self.shape)
        self.offsets = []
        offset = 0
        for shape in self.inputs:
            if shape is None:
                raise ConeUnsupported("concatenation of an input of unknown shape")
            self.offsets.append(offset)
            offset += shape[self.dim]

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        d, (a, b) = self.dim, box[self.dim]
        result: list[Box | None] = []
        for edge, offset, shape in zip(self.edges, self.offsets, self.inputs, strict=True):
            assert shape is not None
            low, high = max(a, offset), min(b, offset + shape[d])
            if edge is None or low >= high:
                result.append(None)
            else:
                result.append((*box[:d], (low - offset, high - offset), *box[d + 1 :]))
        return tuple(result)

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        d, start = self.dim, box[self.dim][0]
        results: list[torch.Tensor | None] = []
        for target, offset in zip(below, self.offsets, strict=True):
            if target is None:
                results.append(None)
            else:
                low, high = target[d]
                results.append(grad.narrow(d, low + offset - start, high - low))
        return results


# ---- building a program from the recorded graph -----------------------------------------


_POINTWISE = {
    "AddBackward0": "Add0",
    "AddBackward1": "Add1",
    "SubBackward0": "Sub0",
    "SubBackward1": "Sub1",
    "NegBackward0": "Neg",
    "MulBackward0": "Mul0",
    "MulBackward1": "Mul1",
    "DivBackward0": "Div0",
    "DivBackward1": "Div1",
    "PowBackward0": "Pow0",
}
# the saved operands each input's gradient needs
_NEEDS = {
    ("Mul0", 0): ("other",),
    ("Mul0", 1): ("self",),
    ("Div0", 0): ("other",),
    ("Div0", 1): ("self", "other"),
    ("Pow0", 0): ("self", "exponent"),
}
_IDENTITY = ("CloneBackward0", "AliasBackward0")
_RESHAPES = (
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "UnsqueezeBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
)


def _saved(node: Any, name: str) -> Any:
    """A saved operand of an autograd node, detached (the program must hold no graph)."""
    try:
        value = getattr(node, name)
    except RuntimeError:  # freed or never saved
        return None
    return value.detach() if isinstance(value, torch.Tensor) else value


def _only_singletons_differ(a: Shape, b: Shape) -> bool:
    return [s for s in a if s != 1] == [s for s in b if s != 1]


def _make_step(node: Any, shape: Shape, edges: list[int | None], inputs: list[Shape | None]) -> _Step:
    name = type(node).__name__
    args = (shape, edges, inputs)
    relevant = [shape_ for edge, shape_ in zip(edges, inputs, strict=True) if edge is not None]
    if name in _IDENTITY:
        return _Identity(*args)
    if name == "CopyBackwards":
        if inputs[1] != shape:
            raise ConeUnsupported("copy_ with broadcasting")
        return _CopyInto(shape, [None, edges[1]], inputs)
    if name == "_RectifierBackward":
        saved = node.saved_tensors
        if len(saved) != 1 or saved[0].dtype != torch.bool or tuple(saved[0].shape) != shape:
            raise ConeUnsupported("a rectifier node that saved something other than its mask")
        return _Rectifier(saved[0].detach(), *args)
    if name == "_RuleSwitchBackward":
        if len(edges) != 2 or inputs[0] != shape or inputs[1] != shape:
            raise ConeUnsupported("an unexpected rule switch")
        return _RuleSwitch(*args)
    if name == "ConvolutionBackward0":
        weight = _saved(node, "_saved_weight")
        if node._saved_transposed or weight is None or weight.dim() != 4 or len(shape) != 4:
            raise ConeUnsupported("a transposed or non-2-D convolution")
        if any(edge is not None for edge in edges[1:]):
            raise ConeUnsupported("a convolution whose weights depend on the image")
        groups = int(node._saved_groups)
        return _Convolution(weight, node._saved_stride, node._saved_padding, node._saved_dilation, groups, *args)
    if name == "MaxPool2DWithIndicesBackward0":
        if len(shape) != 4:
            raise ConeUnsupported("max pooling of a non-4-D tensor")
        indices = _saved(node, "_saved_result1")
        return _MaxPool(
            indices, node._saved_kernel_size, node._saved_stride, node._saved_padding, node._saved_dilation, *args
        )
    if name in ("AvgPool2DBackward0", "AvgPool3DBackward0"):
        axes = 3 if name == "AvgPool3DBackward0" else 2
        options = {
            "kernel_size": _pair(node._saved_kernel_size, axes),
            "stride": _pair(node._saved_stride or node._saved_kernel_size, axes),
            "padding": _pair(node._saved_padding, axes),
            "ceil_mode": bool(node._saved_ceil_mode),
            "count_include_pad": bool(node._saved_count_include_pad),
            "divisor_override": node._saved_divisor_override,
        }
        return _AvgPool(_saved(node, "_saved_self"), options, *args)
    if name == "NativeBatchNormBackward0":
        if node._saved_training or len(shape) < 2:
            raise ConeUnsupported("batch norm in training mode")
        variance = _saved(node, "_saved_running_var")
        weight = _saved(node, "_saved_weight")
        if variance is None:
            raise ConeUnsupported("batch norm without running statistics")
        scale = (variance + float(node._saved_eps)).rsqrt()
        return _BatchNorm(scale if weight is None else weight * scale, *args)
    if name in _POINTWISE:
        kind = _POINTWISE[name]
        operands = {
            "self": _saved(node, "_saved_self") if hasattr(node, "_saved_self") else None,
            "other": _saved(node, "_saved_other") if hasattr(node, "_saved_other") else None,
            "alpha": _saved(node, "_saved_alpha") if hasattr(node, "_saved_alpha") else 1,
            "exponent": _saved(node, "_saved_exponent") if hasattr(node, "_saved_exponent") else None,
        }
        for position, edge in enumerate(edges):
            if edge is not None and any(operands[key] is None for key in _NEEDS.get((kind, position), ())):
                raise ConeUnsupported(f"{name} without its saved operands")
        if kind in ("Mul1", "Div1") and isinstance(operands["other"], torch.Tensor):
            raise ConeUnsupported(f"{name} with a tensor operand")
        if kind == "Pow0" and isinstance(operands["exponent"], torch.Tensor):
            raise ConeUnsupported(f"{name} with a tensor exponent")
        return _Pointwise(kind, operands, *args)
    if name in _RESHAPES:
        if len(relevant) != 1 or inputs[0] is None or not _only_singletons_differ(inputs[0], shape):
            raise ConeUnsupported(f"{name} that moves elements")
        return _Reshape(*args)
    if name == "ConstantPadNdBackward0":
        return _Pad(list(node._saved_pad), *args)
    if name == "SelectBackward0":
        return _Select(int(node._saved_dim), int(node._saved_index), *args)
    if name == "CatBackward0":
        return _Cat(int(node._saved_dim), *args)
    raise ConeUnsupported(f"no cone rule for {name}")


@dataclass
class _Program:
    """The recorded graph below one layer output, as steps in backward order."""

    steps: list[_Step]
    image: int  # index of the image's slot (after the last step)
    shape: Shape  # the layer output's shape
    image_shape: Shape
    dense_work: dict[str, int]
    unsupported: str | None = None


_PROGRAMS: WeakIdKeyDictionary = WeakIdKeyDictionary()
_PROGRAMS_LOCK = threading.Lock()


def _shape_of(node: Any, input_nr: int) -> Shape:
    return tuple(int(s) for s in node._input_metadata[input_nr].shape)


def _build(output: torch.Tensor, image: torch.Tensor) -> _Program:
    root = output.grad_fn
    shape, image_shape = tuple(output.shape), tuple(image.shape)
    if root is None or output.output_nr != 0:
        return _Program([], 0, shape, image_shape, {}, "the layer output has no single-output graph")
    # post-order DFS over the nodes that lead to the image's AccumulateGrad
    leads: dict[Any, bool] = {}
    order: list[Any] = []
    target: Any = None
    stack: list[tuple[Any, Any]] = [(root, iter(root.next_functions))]
    visiting = {root}
    while stack:
        node, children = stack[-1]
        for child, _ in children:
            if child is not None and child not in leads and child not in visiting:
                visiting.add(child)
                stack.append((child, iter(child.next_functions)))
                break
        else:
            stack.pop()
            if type(node).__name__ == "AccumulateGrad":
                leads[node] = node.variable is image
                target = node if leads[node] else target
            else:
                leads[node] = any(child is not None and leads[child] for child, _ in node.next_functions)
                if leads[node]:
                    order.append(node)
    if target is None:
        return _Program([], 0, shape, image_shape, {}, "the layer does not depend on the image")
    order.reverse()  # parents before children
    index = {node: i for i, node in enumerate(order)}
    index[target] = len(order)
    steps: list[_Step] = []
    try:
        for node in order:
            edges: list[int | None] = []
            inputs: list[Shape | None] = []
            for child, input_nr in node.next_functions:
                if child is None or not leads.get(child, False):
                    edges.append(None)
                    inputs.append(None if child is None else _shape_of(child, input_nr))
                    continue
                if input_nr != 0:
                    raise ConeUnsupported(f"{type(child).__name__} feeds its output {input_nr}")
                edges.append(index[child])
                inputs.append(_shape_of(child, input_nr))
            if len(node._input_metadata) != 1 and type(node).__name__ != "MaxPool2DWithIndicesBackward0":
                raise ConeUnsupported(f"{type(node).__name__} has several outputs")
            steps.append(_make_step(node, _shape_of(node, 0), edges, inputs))
    except ConeUnsupported as error:
        return _Program([], 0, shape, image_shape, {}, str(error))
    return _Program(steps, len(order), shape, image_shape, {})


def _program(output: torch.Tensor, image: torch.Tensor) -> _Program:
    program = _PROGRAMS.get(output)
    if program is None or program.image_shape != tuple(image.shape):
        program = _build(output, image)
        with _PROGRAMS_LOCK:
            _PROGRAMS[output] = program
    return program


# ---- planning and running -----------------------------------------------------------------


@dataclass
class ConePlan:
    """Per step the box its gradient occupies, and the boxes it hands to its inputs."""

    boxes: list[Box | None]
    below: list[tuple[Box | None, ...] | None]
    cone_work: int
    dense_work: int
    seed_box: Box | None
    unsupported: str | None = None

    @property
    def ratio(self) -> float:
        """Planned cone work over dense work (1.0 when the cone cannot run)."""
        if self.unsupported is not None or self.dense_work <= 0:
            return 1.0
        return self.cone_work / self.dense_work

    @property
    def supported(self) -> bool:
        return self.unsupported is None

    @property
    def image_box(self) -> Box | None:
        """The box of the image the seed reaches (its exact cone at the input)."""
        return self.boxes[-1] if self.boxes else None


def _propagate(program: _Program, seed_box: Box, rule: str) -> tuple[list[Box | None], list[Any], int, int]:
    boxes: list[Box | None] = [None] * (len(program.steps) + 1)
    below: list[tuple[Box | None, ...] | None] = [None] * len(program.steps)
    boxes[0] = seed_box
    work = executed = 0
    for i, step in enumerate(program.steps):
        box = boxes[i]
        if box is None:
            continue
        planned = step.plan(box, rule)
        planned = tuple(
            None if b is None or e is None or _empty(b) else b for b, e in zip(planned, step.edges, strict=True)
        )
        below[i] = planned
        work += step.work(box, planned)
        executed += 1
        for edge, child_box in zip(step.edges, planned, strict=True):
            if edge is not None and child_box is not None:
                boxes[edge] = _hull(boxes[edge], child_box)
    return boxes, below, work, executed


def _dense_work(program: _Program, rule: str) -> int:
    work = program.dense_work.get(rule)
    if work is None:
        _, _, work, _ = _propagate(program, _full(program.shape), rule)
        program.dense_work[rule] = work
    return work


def _seed_box(grad: torch.Tensor) -> Box | None:
    nonzero = grad.nonzero()
    if len(nonzero) == 0:
        return None
    low, high = nonzero.amin(0).tolist(), nonzero.amax(0).tolist()
    return tuple((int(a), int(b) + 1) for a, b in zip(low, high, strict=True))


def plan(output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str) -> ConePlan:
    """Plan one seed's cone: boxes per recorded node and the work against the dense pass."""
    program = _program(output, image)
    if program.unsupported is not None:
        return ConePlan([], [], 0, 0, None, program.unsupported)
    if tuple(grad.shape) != program.shape:
        return ConePlan([], [], 0, 0, None, "the seed is not shaped like the layer output")
    dense = _dense_work(program, rule)
    seed_box = _seed_box(grad)
    if seed_box is None:
        return ConePlan([], [], 0, dense, None)
    boxes, below, work, executed = _propagate(program, seed_box, rule)
    return ConePlan(boxes, below, work + executed * STEP_OVERHEAD, dense, seed_box)


def _accumulate(
    slots: list[torch.Tensor | None], owned: list[bool], boxes: list[Box | None], i: int, part: torch.Tensor, box: Box
) -> None:
    hull = boxes[i]
    assert hull is not None
    current = slots[i]
    if current is None and box == hull:
        slots[i], owned[i] = part, False
        return
    if current is None or not owned[i]:
        fresh = part.new_zeros(_extent(hull))
        if current is not None:
            fresh += current  # the first part covered the whole hull
        slots[i], owned[i], current = fresh, True, fresh
    current[_inner(hull, box)] += part


def run(
    program_plan: ConePlan, output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str
) -> torch.Tensor:
    """Execute a plan: the seed's gradient with respect to the image, shaped like the image."""
    program = _program(output, image)
    result = torch.zeros(program.image_shape, dtype=grad.dtype, device=grad.device)
    seed_box = program_plan.seed_box
    if seed_box is None:
        return result
    boxes, below = program_plan.boxes, program_plan.below
    slots: list[torch.Tensor | None] = [None] * (len(program.steps) + 1)
    owned = [False] * len(slots)
    slots[0] = grad[_slices(seed_box)]
    for i, step in enumerate(program.steps):
        incoming, box, planned = slots[i], boxes[i], below[i]
        if incoming is None or box is None or planned is None:
            continue
        slots[i] = None
        parts = step.run(box, incoming, planned, rule)
        for edge, part, child_box in zip(step.edges, parts, planned, strict=True):
            if edge is not None and part is not None and child_box is not None:
                _accumulate(slots, owned, boxes, edge, part, child_box)
    final, box = slots[program.image], boxes[program.image]
    if final is not None and box is not None:
        result[_slices(box)] = final
    return result


def cone_backward(output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str) -> torch.Tensor:
    """The seed's projection over its cone, whatever it costs; raises ConeUnsupported where the
    graph holds a node the cone cannot follow (use the dense pass there)."""
    seed_plan = plan(output, image, grad, rule)
    if seed_plan.unsupported is not None:
        raise ConeUnsupported(seed_plan.unsupported)
    return run(seed_plan, output, image, grad, rule)


def backward_if_cheaper(
    output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str, max_ratio: float | None = None
) -> torch.Tensor | None:
    """The cone projection when it is supported and needs at most `max_ratio` (default
    `MAX_RATIO`) of the dense work on the CPU; None means: take the dense backward pass."""
    if image.device.type != "cpu":
        return None
    seed_plan = plan(output, image, grad, rule)
    if not seed_plan.supported or seed_plan.ratio > (MAX_RATIO if max_ratio is None else max_ratio):
        return None
    return run(seed_plan, output, image, grad, rule)
