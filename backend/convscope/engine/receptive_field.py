"""Receptive field size, stride and offset of each layer, read from the autograd graph.

Walking the graph from a layer's output down to the input, convolutions and
pools (whose autograd nodes keep their kernel, stride, padding and dilation)
grow the field, along each axis on its own (a 1×7 kernel grows only the
columns): r' = r + (k-1)·d·j, j' = j·s, c' = c + ((k-1)/2·d - p)·j, where j is
the distance in input pixels between neighbouring units and c the centre of
unit 0. Explicit padding (`F.pad`, "same" convolutions) shifts the centre. Element-wise steps pass the field on; where branches meet (residual
sums, concatenations) the widest branch counts. Global pooling and other
operations that mix all positions make the field the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convscope.engine.graph import fold_to_image


@dataclass(frozen=True)
class ReceptiveField:
    """`size`, `stride`, `offset` along the rows (y); the `_x` ones along the columns,
    None where they equal the rows' (square kernels, strides and paddings)."""

    size: float  # side of the input pixels one unit sees (before clipping), along y
    stride: float  # input pixels between neighbouring units, along y
    offset: float  # input-pixel coordinate of the centre of unit (0, 0), along y
    global_: bool = False
    size_x: float | None = None
    stride_x: float | None = None
    offset_x: float | None = None

    @property
    def square(self) -> bool:
        return self.size_x is None and self.stride_x is None and self.offset_x is None

    def axis(self, which: int) -> tuple[float, float, float]:
        """(size, stride, offset) along y (0) or x (1)."""
        if which == 0:
            return self.size, self.stride, self.offset
        return (
            self.size if self.size_x is None else self.size_x,
            self.stride if self.stride_x is None else self.stride_x,
            self.offset if self.offset_x is None else self.offset_x,
        )

    @classmethod
    def of(cls, y: tuple[float, float, float], x: tuple[float, float, float], global_: bool = False) -> ReceptiveField:
        """From per-axis (size, stride, offset), the `_x` fields set only where x differs."""
        size_x, stride_x, offset_x = (None if b == a else b for a, b in zip(y, x, strict=True))
        return cls(*y, global_, size_x, stride_x, offset_x)

    def box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field, unclipped, half-open."""
        if self.global_:
            return 0, 0, image_size, image_size
        edges = []
        for index, which in ((y, 0), (x, 1)):
            size, stride, offset = self.axis(which)
            start = round(offset + index * stride - size / 2.0 + 0.5)
            edges.append((start, start + round(size)))
        (top, bottom), (left, right) = edges
        return top, left, bottom, right


_GLOBAL_NODES = (
    "AdaptiveAvgPool2DBackward",
    "AdaptiveMaxPool2DBackward",
    "MeanBackward",
    "SumBackward",
    "AddmmBackward",
    "MmBackward",
    "UpsampleBilinear2DBackward",
    "UpsampleNearest2DBackward",
)

Pair = tuple[int, int]


def _pair(value: Any) -> Pair:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[-2]), int(value[-1])
    return int(value), int(value)


def _local_step(node: Any) -> tuple[Pair, Pair, Pair, Pair] | None:
    """Per axis (y, x): (kernel, stride, padding, dilation) for conv, pool and padding
    nodes; None for element-wise ones."""
    name = type(node).__name__
    if name.startswith("ConvolutionBackward"):
        if getattr(node, "_saved_transposed", False):
            return None
        weight = node._saved_weight
        if weight.dim() != 4:
            return None
        kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
        return kernel, _pair(node._saved_stride), _pair(node._saved_padding), _pair(node._saved_dilation)
    if name.startswith(("MaxPool2DWithIndicesBackward", "AvgPool2DBackward")):
        dilation = _pair(getattr(node, "_saved_dilation", 1))
        stride = node._saved_stride or node._saved_kernel_size
        return _pair(node._saved_kernel_size), _pair(stride), _pair(node._saved_padding), dilation
    if name.startswith("ConstantPadNdBackward"):
        pad = list(node._saved_pad)  # (left, right, top, bottom, ...) for the last dims first
        left = pad[0] if len(pad) > 0 else 0
        top = pad[2] if len(pad) > 2 else 0
        return (1, 1), (1, 1), (top, left), (1, 1)
    return None


def _grow(below: ReceptiveField, step: tuple[Pair, Pair, Pair, Pair]) -> ReceptiveField:
    kernel, stride, padding, dilation = step
    axes = []
    for which in (0, 1):
        size, jump, offset = below.axis(which)
        k, s, p, d = kernel[which], stride[which], padding[which], dilation[which]
        axes.append((size + (k - 1) * d * jump, jump * s, offset + ((k - 1) / 2.0 * d - p) * jump))
    return ReceptiveField.of(axes[0], axes[1])


def whole_image(image_size: int) -> ReceptiveField:
    """The field of a unit that sees the whole input (global pooling, a linear layer, logits)."""
    return ReceptiveField(float(image_size), float(image_size), image_size / 2.0 - 0.5, True)


def receptive_field(output: torch.Tensor, image: torch.Tensor, image_size: int) -> ReceptiveField:
    """The receptive field of `output`'s units in `image` (which must require grad)."""
    root = output.grad_fn
    whole = whole_image(image_size)

    def combine(node: Any, fields: list[ReceptiveField]) -> ReceptiveField:
        widest = max(fields, key=lambda field: (field.global_, field.axis(0)[0] * field.axis(1)[0]))
        if widest.global_ or type(node).__name__.rstrip("0123456789") in _GLOBAL_NODES:
            return whole
        step = _local_step(node)
        return widest if step is None else _grow(widest, step)

    result = fold_to_image([root], image, ReceptiveField(1.0, 1.0, 0.0), combine).get(root)
    if root is None or result is None:
        return whole
    return result
