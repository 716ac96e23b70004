"""The per-node rules of the cone backward (`engine/cone.py`): for each kind of recorded
autograd node, the box of its input that a box of its output gradient can reach (`plan`),
the planned work, and the node's backward computed over that box only (`run`), from the
tensors the node saved in the recorded forward pass. `make_step` reads one node; a node it
does not know raises `ConeUnsupported`, and the seed takes the dense pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from convscope.engine.rules import rectifier_mask

Box = tuple[tuple[int, int], ...]  # per dimension [start, stop)
Shape = tuple[int, ...]
T = TypeVar("T")


# Work is counted in multiply-adds of a dense convolution (~0.08 ns each on one laptop core).
# Element-wise steps are memory-bound: about 8 such units per element. A depthwise or
# narrow-group convolution runs far below peak: a multiply-add there costs 16 / (input
# channels per group) units, at least 1 (measured ~14× for depthwise on one core).
ELEMENT_COST = 8


# transposed convolutions into at most this many channels run as a matrix product and a fold
_FOLD_CHANNELS = 4


class ConeUnsupported(Exception):
    """The recorded graph holds a node (or a seed) the cone cannot follow exactly."""


# ---- boxes ------------------------------------------------------------------------------


def whole_box(shape: Shape) -> Box:
    return tuple((0, size) for size in shape)


def extent(box: Box) -> Shape:
    return tuple(stop - start for start, stop in box)


def volume(box: Box) -> int:
    return math.prod(extent(box))


def is_empty(box: Box) -> bool:
    return any(stop <= start for start, stop in box)


def box_slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


def inner_slices(outer: Box, inner: Box) -> tuple[slice, ...]:
    """Slices of `inner` within a tensor that holds `outer`."""
    return tuple(slice(i0 - o0, i1 - o0) for (o0, _), (i0, i1) in zip(outer, inner, strict=True))


def hull(a: Box | None, b: Box) -> Box:
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


class Step:
    """One node's backward over a box. `edges[i]` is the program index of the node's i-th
    input (None: that input needs no gradient), `inputs[i]` that input's full shape."""

    # the attributes holding what one recorded pass saved (masks, switches, activations):
    # planning never reads them, running does (`structure()` leaves them out)
    per_record: tuple[str, ...] = ()

    def __init__(self, shape: Shape, edges: Sequence[int | None], inputs: Sequence[Shape | None]) -> None:
        self.shape = shape
        self.edges = tuple(edges)
        self.inputs = tuple(inputs)

    def structure(self) -> Step:
        """A copy of this step without the recorded pass's tensors: it plans, it cannot run."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        for name in self.per_record:
            setattr(copy, name, None)
        return copy

    @property
    def passthrough(self) -> int | None:
        """The input an identity step hands its gradient to unchanged; None for real steps."""
        return None

    def first(self, value: T) -> tuple[T | None, ...]:
        """`value` for the first input, nothing for the others (weights, biases, options)."""
        return (value,) + (None,) * (len(self.edges) - 1)

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        raise NotImplementedError

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return ELEMENT_COST * volume(box)

    def macs(self, box: Box) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        raise NotImplementedError


class _Identity(Step):
    """Clone, alias, the recorded output's copy: the gradient passes unchanged (the program
    links its parents straight to its input, so it never runs)."""

    source = 0

    @property
    def passthrough(self) -> int | None:
        return self.source

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return tuple(box if i == self.source else None for i in range(len(self.edges)))

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        return [grad if i == self.source else None for i in range(len(self.edges))]


class _CopyInto(_Identity):
    """`dst.copy_(src)` (in-place activations): the overwritten `dst` gets nothing."""

    source = 1


class _Rectifier(Step):
    """The engine's ReLU-like node: deconvnet `relu(g)`, guided `relu(g)·mask`, gradient `g·mask`,
    the mask told by the output the node saved (`rules.rectifier_mask`, over the box only)."""

    per_record = ("saved",)

    def __init__(self, saved: torch.Tensor, lower: float, upper: float | None, *args: Any) -> None:
        super().__init__(*args)
        self.saved, self.lower, self.upper = saved, lower, upper

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return self.first(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        if rule == "deconvnet":
            return list(self.first(grad.clamp(min=0)))
        if rule not in ("guided", "gradient"):
            raise ConeUnsupported(f"unknown rule {rule!r}")
        signal = grad.clamp(min=0) if rule == "guided" else grad
        return list(self.first(rectifier_mask(signal, self.saved[box_slices(box)], self.lower, self.upper)))


class _CallRule:
    """Stands in for a rule function's `ctx.box`: this call's rule, as an attribute or asked for."""

    def __init__(self, rule: str) -> None:
        self.rule = rule

    def current(self) -> str:
        return self.rule


class _RuleFunction(Step):
    """An element-wise activation the engine routes through its own autograd function, tagged
    `ctx.convscope_op` (SiLU, GELU, ...): that function's own backward, called on the box with
    its saved tensors cut to the box and the call's rule, so the formula is the engine's."""

    per_record = ("saved", "attributes")

    def __init__(self, function: Any, attributes: dict[str, Any], saved: tuple[torch.Tensor, ...], *args: Any) -> None:
        super().__init__(*args)
        self.function, self.attributes, self.saved = function, attributes, saved

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return self.first(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        ctx = SimpleNamespace(**self.attributes)
        ctx.saved_tensors = tuple(t[box_slices(box)] for t in self.saved)
        if hasattr(ctx, "box"):
            ctx.box = _CallRule(rule)
        result = self.function.backward(ctx, grad)
        first = result[0] if isinstance(result, tuple) else result
        if not isinstance(first, torch.Tensor) or tuple(first.shape) != tuple(grad.shape):
            raise ConeUnsupported(f"{self.attributes.get('convscope_op')}: an unexpected backward result")
        return list(self.first(first))


class _RuleSwitch(Step):
    """Local response normalisation: identity for the deconvnet, its true gradient otherwise."""

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return (None, box) if rule == "deconvnet" else (box, None)

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return 0

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        return [None, grad] if rule == "deconvnet" else [grad, None]


class _Convolution(Step):
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

    def macs(self, box: Box) -> int:
        (n0, n1), (c0, c1), (y0, y1), (x0, x1) = box
        first, last, _, _, _ = self._channels(c0, c1)
        kh, kw = self.weight.shape[2:]
        return (n1 - n0) * (last - first) * (y1 - y0) * (x1 - x0) * self.in_per_group * kh * kw

    def work(self, box: Box, below: tuple[Box | None, ...]) -> int:
        return self.macs(box) * max(1, 16 // self.in_per_group)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        _, (c0, c1), (y0, _), (x0, _) = box
        first, last, groups, _, _ = self._channels(c0, c1)
        if (first, last) != (c0, c1):
            grad = F.pad(grad, (0, 0, 0, 0, c0 - first, last - c1))
        weight = self.weight[first:last]
        if groups == 1 and self.in_per_group <= _FOLD_CHANNELS:
            out = self._folded(grad, weight)
        else:
            if self.in_per_group == 1 and groups > 1:  # depthwise: ~15 % faster channels-last (measured)
                grad = grad.contiguous(memory_format=torch.channels_last)
            out = F.conv_transpose2d(grad, weight, None, self.stride, 0, 0, groups, self.dilation)
        (sh, sw), (ph, pw) = self.stride, self.padding
        _, _, (r0, r1), (q0, q1) = target
        top, left = r0 - (y0 * sh - ph), q0 - (x0 * sw - pw)
        out = out[:, :, top : top + r1 - r0, left : left + q1 - q0]
        return list(self.first(out))

    def _folded(self, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The same transposed convolution as one matrix product and a fold (col2im): several
        times faster on the CPU when it yields few channels (a first layer's RGB)."""
        n, channels, height, width = grad.shape
        kh, kw = weight.shape[2:]
        columns = torch.matmul(weight.reshape(channels, -1).t(), grad.reshape(n, channels, -1))
        (sh, sw), (dh, dw) = self.stride, self.dilation
        size = ((height - 1) * sh + dh * (kh - 1) + 1, (width - 1) * sw + dw * (kw - 1) + 1)
        return F.fold(columns, size, (kh, kw), dilation=self.dilation, stride=self.stride)


class _MaxPool(Step):
    """2-D max pooling: each value goes to its recorded switch (values sharing one add)."""

    per_record = ("indices",)

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
        switches = self.indices[box_slices(box)]
        rows, cols = switches.div(shape[3], rounding_mode="floor"), switches.remainder(shape[3])
        local = ((rows - r0) * (q1 - q0) + (cols - q0)).reshape(n1 - n0, c1 - c0, -1)
        out = grad.new_zeros(n1 - n0, c1 - c0, (r1 - r0) * (q1 - q0))
        out.scatter_add_(2, local, grad.reshape(n1 - n0, c1 - c0, -1))
        return list(self.first(out.reshape(extent(target))))


class _AvgPool(Step):
    """Average pooling (2-D or 3-D, e.g. inside local response normalisation): planned as a
    sliding window over the last axes, computed by the exact kernel over the full map."""

    per_record = ("saved",)

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
        return ELEMENT_COST * math.prod(self.shape) * math.prod(self.options["kernel_size"])

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        target = below[0]
        assert target is not None
        full = grad.new_zeros(self.shape)
        full[box_slices(box)] = grad
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
        return list(self.first(out[box_slices(target)]))


class _BatchNorm(Step):
    """Batch norm in eval mode: a per-channel scale."""

    per_record = ("scale",)

    def __init__(self, scale: torch.Tensor, *args: Any) -> None:
        super().__init__(*args)
        self.scale = scale

    def plan(self, box: Box, rule: str) -> tuple[Box | None, ...]:
        return self.first(box)

    def run(self, box: Box, grad: torch.Tensor, below: tuple[Box | None, ...], rule: str) -> list[torch.Tensor | None]:
        (c0, c1) = box[1]
        scale = self.scale[c0:c1].reshape(1, -1, *([1] * (grad.dim() - 2)))
        return list(self.first(grad * scale))


class _Pointwise(Step):
    """Element-wise arithmetic with broadcasting: each input's gradient is a product of the
    box of the incoming gradient with saved operands cut to the same box."""

    per_record = ("operands",)

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


class _Reshape(Step):
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
        return list(self.first(grad.reshape(extent(target))))


class _Pad(Step):
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


class _Select(Step):
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


class _Cat(Step):
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
# activations the engine's rule functions tag with `ctx.convscope_op` that act element by element
_ELEMENTWISE_OPS = ("relu", "relu6", "hardtanh", "silu", "gelu", "leaky_relu", "elu", "hardswish", "mish")
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


def make_step(node: Any, shape: Shape, edges: list[int | None], inputs: list[Shape | None]) -> Step:
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
        if len(saved) != 1 or tuple(saved[0].shape) != shape or saved[0].dtype == torch.bool:
            raise ConeUnsupported("a rectifier node that saved something other than its output")
        lower, upper = getattr(node, "lower", None), getattr(node, "upper", None)
        if not isinstance(lower, (int, float)) or not (upper is None or isinstance(upper, (int, float))):
            raise ConeUnsupported("a rectifier node without its bounds")
        return _Rectifier(saved[0].detach(), float(lower), None if upper is None else float(upper), *args)
    if getattr(node, "convscope_op", None) in _ELEMENTWISE_OPS and hasattr(node, "_forward_cls"):
        saved = tuple(t.detach() for t in node.saved_tensors)
        if relevant != [shape] or edges[0] is None or any(tuple(t.shape) != shape for t in saved):
            raise ConeUnsupported(f"{name}: not element-wise on its first input")
        return _RuleFunction(node._forward_cls, dict(vars(node)), saved, *args)
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
        if indices is None:
            raise ConeUnsupported("max pooling without its switches")
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
        saved = _saved(node, "_saved_self")
        if saved is None:
            raise ConeUnsupported("average pooling without its input")
        return _AvgPool(saved, options, *args)
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
