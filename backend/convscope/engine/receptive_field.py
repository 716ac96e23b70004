"""Receptive field size, stride and offset of each layer, read from the autograd graph.

Walking the graph from a layer's output down to the input, convolutions and
pools (whose autograd nodes keep their kernel, stride, padding and dilation)
grow the field: r' = r + (k-1)·d·j, j' = j·s, c' = c + ((k-1)/2·d - p)·j, where
j is the distance in input pixels between neighbouring units and c the centre
of unit 0. Element-wise steps pass the field on; where branches meet (residual
sums, concatenations) the widest branch counts. Global pooling and other
operations that mix all positions make the field the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ReceptiveField:
    size: float  # side of the square of input pixels one unit sees (before clipping)
    stride: float  # input pixels between neighbouring units
    offset: float  # input-pixel coordinate of the centre of unit (0, 0)
    global_: bool = False

    def box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field, unclipped, half-open."""
        if self.global_:
            return 0, 0, image_size, image_size
        half = self.size / 2.0
        cy, cx = self.offset + y * self.stride, self.offset + x * self.stride
        top, left = round(cy - half + 0.5), round(cx - half + 0.5)
        side = round(self.size)
        return top, left, top + side, left + side


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


def _pair(value: Any) -> int:
    if isinstance(value, (tuple, list)):
        return int(value[0])
    return int(value)


def _local_step(node: Any) -> tuple[int, int, int, int] | None:
    """(kernel, stride, padding, dilation) for conv and pool nodes; None for element-wise ones."""
    name = type(node).__name__
    if name.startswith("ConvolutionBackward"):
        if getattr(node, "_saved_transposed", False):
            return None
        kernel = int(node._saved_weight.shape[-2])
        return kernel, _pair(node._saved_stride), _pair(node._saved_padding), _pair(node._saved_dilation)
    if name.startswith(("MaxPool2DWithIndicesBackward", "AvgPool2DBackward")):
        dilation = _pair(getattr(node, "_saved_dilation", 1))
        stride = node._saved_stride or node._saved_kernel_size
        return _pair(node._saved_kernel_size), _pair(stride), _pair(node._saved_padding), dilation
    return None


def receptive_field(output: torch.Tensor, image: torch.Tensor, image_size: int) -> ReceptiveField:
    """The receptive field of `output`'s units in `image` (which must require grad)."""
    root = output.grad_fn
    target = image
    whole = ReceptiveField(float(image_size), float(image_size), image_size / 2.0 - 0.5, True)
    memo: dict[Any, ReceptiveField | None] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None or (node in memo and not expanded):
            continue
        if type(node).__name__ == "AccumulateGrad":
            memo[node] = ReceptiveField(1.0, 1.0, 0.0) if node.variable is target else None
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in memo)
            continue
        below = [memo[child] for child in children if memo.get(child) is not None]
        fields = [field for field in below if field is not None]
        if not fields:
            memo[node] = None
            continue
        widest = max(fields, key=lambda field: (field.global_, field.size))
        if widest.global_ or type(node).__name__.rstrip("0123456789") in _GLOBAL_NODES:
            memo[node] = whole
            continue
        step = _local_step(node)
        if step is None:
            memo[node] = widest
            continue
        kernel, stride, padding, dilation = step
        size = widest.size + (kernel - 1) * dilation * widest.stride
        offset = widest.offset + ((kernel - 1) / 2.0 * dilation - padding) * widest.stride
        memo[node] = ReceptiveField(size, widest.stride * stride, offset)
    result = memo.get(root)
    if root is None or result is None:
        return whole
    return result
