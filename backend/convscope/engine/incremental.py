"""Exact incremental occlusion (Krypton-class): recompute only what an occluder can change.

The unoccluded image runs once through the model's torch.fx graph and every
node's output is kept. An occluder changes only a box of each feature map: for a
convolution or pool with kernel k (dilated extent), stride s and padding p, the
rows `[⌈(t + p − k + 1)/s⌉, ⌊(b − 1 + p)/s⌋]` of its output, clipped (its
"projective field"). Every node holding such a box is a *patch node*: per
occluder position a window `[lo, lo + L)` of its map, one L per node for all
positions (shifted back inside the map at the borders, so a batch of patches is
one N×C×L×L tensor). A window operation gathers its input context (`(L−1)·s + k`
rows) from the stored unoccluded map — zero (or −∞ for max-pooling) beyond the
real border — lays the incoming patch in, and applies the layer without padding;
point-wise layers act on the patch; additions, products and concatenations take
the union of their inputs' windows. Where a window covers the whole map, or a
non-local operation comes (global pooling, a linear layer, a reshape, attention,
anything not known to be local), the patch is pasted into copies of the stored
map and that node and the rest run densely. Values outside a window are the
stored ones, values inside are recomputed from exact inputs, so the result is
exact (to float rounding).

`tau` (Krypton's projective-field threshold) is the opt-in approximation: a
window op's output window is capped at ⌈tau·H⌉ rows (and columns), centred on the
exact one; what lies outside is taken as unchanged.

Plain Python: no web or command-line code here.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from convscope.engine.tracing import TracedModel, is_inplace, is_metadata_node, is_pointwise_module

_POINTWISE_FUNCTIONS: set[Any] = {
    F.relu,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.sigmoid,
    F.tanh,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    F.dropout,
    F.local_response_norm,
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.abs,
    torch.exp,
    operator.neg,
    operator.pos,
    operator.abs,
}
_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "contiguous",
    "float",
    "clone",
    "abs",
    "exp",
    "neg",
}
_BINARY_FUNCTIONS: set[Any] = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


@dataclass
class Window:
    """Per occluder position, the box `[lo, lo + length)` of a map that may differ from the stored one."""

    lo_y: np.ndarray  # over all positions, int64
    lo_x: np.ndarray
    length_y: int
    length_x: int
    height: int
    width: int

    @property
    def whole(self) -> bool:
        return self.length_y >= self.height and self.length_x >= self.width


@dataclass
class _WindowOp:
    """A convolution or pool applied without padding to a gathered context."""

    kernel: tuple[int, int]  # dilated extent
    stride: tuple[int, int]
    pad_lo: tuple[int, int]
    pad_value: float
    apply: Callable[[torch.Tensor], torch.Tensor]
    macs_per_output: int  # multiply-adds (or comparisons) per output element


@dataclass
class _Plan:
    kind: str  # "static" | "patch" | "plain"
    how: str = ""  # patch nodes: "input" | "window" | "pointwise" | "merge" | "getitem"
    window: Window | None = None
    op: _WindowOp | None = None
    cost_dense: float = 0.0
    cost_incremental: float = 0.0
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # window ops: the stored input's padding (top, bottom, left, right)


@dataclass
class IncrementalPlan:
    """What runs how, for one model, image size, occluder size and set of positions."""

    nodes: list[fx.Node]
    plans: dict[fx.Node, _Plan]
    stored: dict[fx.Node, Any]  # every node's unoccluded value (batch of one)
    activity_node: fx.Node
    output_node: fx.Node
    approximate: bool
    padded: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)  # window ops' padded stored inputs

    @property
    def ratio(self) -> float:
        """Planned arithmetic of the incremental run over the dense one (per position)."""
        dense = sum(p.cost_dense for p in self.plans.values())
        incremental = sum(p.cost_incremental for p in self.plans.values())
        return incremental / dense if dense > 0 else 1.0

    @property
    def reference_logits(self) -> Any:
        """The graph's output for the unoccluded image (the model's logits, if it returns a tensor)."""
        value = self.stored[self.output_node]
        return value if isinstance(value, torch.Tensor) or not isinstance(value, (tuple, list)) else value[0]

    def counts(self) -> dict[str, int]:
        """How many graph nodes are static, patch or plain (dense) nodes."""
        counts: dict[str, int] = {}
        for plan in self.plans.values():
            counts[plan.kind] = counts.get(plan.kind, 0) + 1
        return counts


class NotIncremental(Exception):
    """The plan cannot be made for this model (the reason is the message); run dense instead."""


# ---- helpers --------------------------------------------------------------------------------------


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _map(value: Any, fn: Callable[[fx.Node], Any]) -> Any:
    return fx.node.map_arg(value, fn)


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_numel(v) for v in value)
    return 0


def _ceil_div(a: np.ndarray, b: int) -> np.ndarray:
    return -np.floor_divide(-a, b)


_FUNCTIONAL_POOLS: dict[Any, tuple[type[nn.Module], tuple[str, ...]]] = {
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.avg_pool2d: (
        nn.AvgPool2d,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    ),
}


def _functional_pool(node: fx.Node) -> nn.Module | None:
    """`F.max_pool2d(x, 3, 2, padding=1)` as the equivalent pooling module (its arguments are constants)."""
    if node.op != "call_function" or node.target not in _FUNCTIONAL_POOLS:
        return None
    kind, names = _FUNCTIONAL_POOLS[node.target]
    options = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    if any(_nodes_in_value(value) for value in options.values()):
        return None
    try:
        return kind(**options)
    except TypeError:
        return None


def _nodes_in_value(value: Any) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return bool(found)


def _window_op(node: fx.Node, module: nn.Module | None, stored: dict[fx.Node, Any]) -> _WindowOp | None:
    """The window operation a node is, if it is a convolution or pool the engine can run on patches."""
    if module is None:
        module = _functional_pool(node)
    if module is None:
        return None
    source = stored[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
    if not isinstance(source, torch.Tensor) or source.dim() != 4:
        return None
    if type(module) is nn.Conv2d or (
        isinstance(module, nn.Conv2d)
        and type(module).forward is nn.Conv2d.forward
        and type(module)._conv_forward is nn.Conv2d._conv_forward
    ):
        conv: nn.Conv2d = module
        if conv.padding_mode != "zeros":
            return None
        kh, kw = conv.kernel_size
        dh, dw = conv.dilation
        extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                pad: tuple[int, int] = (0, 0)
            else:  # "same": PyTorch puts the smaller half first
                pad = ((extent[0] - 1) // 2, (extent[1] - 1) // 2)
        else:
            pad = _pair(conv.padding)
        weight, bias, stride, dilation, groups = conv.weight, conv.bias, conv.stride, conv.dilation, conv.groups
        return _WindowOp(
            extent,
            _pair(stride),
            pad,
            0.0,
            lambda x: F.conv2d(x, weight, bias, stride, 0, dilation, groups),
            (conv.in_channels // groups) * kh * kw,
        )
    if type(module) is nn.MaxPool2d:
        pool: nn.MaxPool2d = module
        if pool.return_indices:
            return None
        k, s, d = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.dilation)
        extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        return _WindowOp(
            extent,
            s,
            _pair(pool.padding),
            -math.inf,
            lambda x: F.max_pool2d(x, k, s, 0, d),
            k[0] * k[1],
        )
    if type(module) is nn.AvgPool2d:
        avg: nn.AvgPool2d = module
        k, s, p = _pair(avg.kernel_size), _pair(avg.stride or avg.kernel_size), _pair(avg.padding)
        if avg.ceil_mode or avg.divisor_override is not None or (p != (0, 0) and not avg.count_include_pad):
            return None
        return _WindowOp(k, s, p, 0.0, lambda x: F.avg_pool2d(x, k, s, 0), k[0] * k[1])
    return None


def _node_module(root: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return root.get_submodule(str(node.target))


def _spatially_flat(value: Any) -> bool:
    """A static operand that broadcasts without any extent over the two spatial dimensions."""
    if isinstance(value, (int, float, bool)):
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 or (value.dim() >= 2 and tuple(value.shape[-2:]) == (1, 1))
    return False


def _is_pointwise(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return is_pointwise_module(module)
    if node.op == "call_function":
        if node.target is F.batch_norm:
            training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
            return training is False
        return node.target in _POINTWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _POINTWISE_METHODS
    return False


def _is_binary(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _BINARY_FUNCTIONS
    return node.op == "call_method" and node.target in _BINARY_METHODS


def _cat_dim(node: fx.Node) -> int | None:
    if node.op != "call_function" or node.target is not torch.cat:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


# ---- planning -------------------------------------------------------------------------------------


def _union(windows: list[Window]) -> Window | None:
    first = windows[0]
    if any((w.height, w.width) != (first.height, first.width) for w in windows):
        return None
    lo_y = np.min([w.lo_y for w in windows], axis=0)
    lo_x = np.min([w.lo_x for w in windows], axis=0)
    hi_y = np.max([w.lo_y + w.length_y for w in windows], axis=0)
    hi_x = np.max([w.lo_x + w.length_x for w in windows], axis=0)
    length_y, length_x = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
    return Window(
        np.clip(lo_y, 0, first.height - length_y),
        np.clip(lo_x, 0, first.width - length_x),
        length_y,
        length_x,
        first.height,
        first.width,
    )


def _axis_out(
    lo: np.ndarray, length: int, op_k: int, op_s: int, op_p: int, size_out: int, tau: float | None
) -> tuple[np.ndarray, int]:
    """One axis of a window op's output window, (lo_out, length_out), for input windows `[lo, lo + length)`:
    the output rows whose kernel (extent k, stride s, padding p) reaches a changed input row."""
    length_out = min(size_out, (length + op_k - 2) // op_s + 1)
    lo_out = _ceil_div(lo + op_p - op_k + 1, op_s)
    if tau is not None:
        cap = max(1, math.ceil(tau * size_out))
        if length_out > cap:
            lo_out = lo_out + (length_out - cap) // 2
            length_out = cap
    return np.clip(lo_out, 0, size_out - length_out), length_out


def plan_incremental(
    traced: TracedModel,
    root: nn.Module,
    image: torch.Tensor,
    positions: list[tuple[int, int]],
    size: int,
    layer: str,
    tau: float | None = None,
) -> IncrementalPlan:
    """Run the unoccluded image through the graph, keep every node's output and plan each node."""
    graph = traced.graph
    nodes = list(graph.nodes)
    activity_node = traced.module_outputs.get(layer)
    if activity_node is None:
        raise NotIncremental(f"layer {layer!r} is not a module output in the traced graph")
    output_node = next(node for node in nodes if node.op == "output")
    corners = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    stored: dict[fx.Node, Any] = {}
    plans: dict[fx.Node, _Plan] = {}
    dependent: set[fx.Node] = set()

    for node in nodes:
        module = _node_module(root, node)
        if node.op == "output":
            stored[node] = _map(node.args[0], lambda n: stored[n])
            plans[node] = _Plan("plain")
            continue
        value = _evaluate(node, root, module, lambda n: stored[n], image)
        stored[node] = value
        inputs = node.all_input_nodes
        if node.op == "placeholder" or any(n in dependent for n in inputs):
            dependent.add(node)
        if node not in dependent:
            plans[node] = _Plan("static")
            continue
        cost = float(_numel(value))
        patch_inputs = [n for n in inputs if plans[n].kind == "patch"]
        if node.op == "placeholder":
            height, width = int(value.shape[-2]), int(value.shape[-1])
            window = Window(corners[:, 0].copy(), corners[:, 1].copy(), size, size, height, width)
            plans[node] = _Plan("patch", "input", window, cost_dense=0.0, cost_incremental=0.0)
        elif is_metadata_node(node) or not patch_inputs:
            op = _window_op(node, module, stored)
            if op is not None:
                cost = float(_numel(value)) * op.macs_per_output
            elif isinstance(module, nn.Linear):
                cost = float(_numel(value)) * module.in_features
            plans[node] = _Plan("plain", cost_dense=cost, cost_incremental=cost)
        else:
            plans[node] = _plan_patch_node(node, module, value, stored, plans, tau)
        planned = plans[node].window
        if plans[node].kind == "patch" and planned is not None and planned.whole and tau is None:
            plans[node].kind = "plain"  # a window over the whole map is the map: dense from here on
    return IncrementalPlan(nodes, plans, stored, activity_node, output_node, approximate=tau is not None)


def _plan_patch_node(
    node: fx.Node,
    module: nn.Module | None,
    value: Any,
    stored: dict[fx.Node, Any],
    plans: dict[fx.Node, _Plan],
    tau: float | None,
) -> _Plan:
    """Plan a node with at least one patch input: a patch node if it is local, else plain (dense)."""
    numel = float(_numel(value))

    def plain(cost: float = numel) -> _Plan:
        return _Plan("plain", cost_dense=cost, cost_incremental=cost)

    def patch(how: str, window: Window, cost: float = numel) -> _Plan:
        return _Plan("patch", how, window, cost_dense=cost, cost_incremental=cost * _fraction(window))

    if not isinstance(value, torch.Tensor) or value.dim() < 3:
        return plain(numel * (module.in_features if isinstance(module, nn.Linear) else 1))
    height, width = int(value.shape[-2]), int(value.shape[-1])
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    first_window = plans[first].window if first is not None and plans[first].kind == "patch" else None

    op = _window_op(node, module, stored)
    if op is not None:
        if first is None or first_window is None or len(node.all_input_nodes) != 1:
            return plain(numel * op.macs_per_output)
        return _plan_window_op(
            op, first_window, stored[first], height, width, numel * op.macs_per_output, tau
        ) or plain(numel * op.macs_per_output)

    tensor_inputs = [n for n in node.all_input_nodes if isinstance(stored[n], torch.Tensor)]
    patch_windows = [w for w in (plans[n].window for n in tensor_inputs if plans[n].kind == "patch") if w is not None]
    others = [n for n in tensor_inputs if plans[n].kind != "patch"]
    flat_static = all(plans[n].kind == "static" and _spatially_flat(stored[n]) for n in others)
    if any((w.height, w.width) != (height, width) for w in patch_windows):
        return plain()
    # F.batch_norm's static arguments are per-channel vectors: point-wise over space all the same
    per_channel = node.op == "call_function" and node.target is F.batch_norm
    static = all(plans[n].kind == "static" for n in others)
    if _is_pointwise(node, module) and len(patch_windows) == 1 and first_window is not None:
        if flat_static or (per_channel and static):
            return patch("pointwise", first_window)
        return patch("pointwise", first_window)
    dim = _cat_dim(node)
    if dim is not None:
        dim = dim + value.dim() if dim < 0 else dim
        if not 1 <= dim <= value.dim() - 3 or others:
            return plain()
    if (_is_binary(node) and flat_static) or (dim is not None):
        window = _union(patch_windows)
        if window is None or (window.whole and tau is None):
            return plain()
        return patch("merge", window)
    if first is not None and first_window is not None and _keeps_space(node, stored[first].dim()):
        return patch("getitem", first_window, 0.0)
    return plain()


def _plan_window_op(
    op: _WindowOp, incoming: Window, source: torch.Tensor, height: int, width: int, cost: float, tau: float | None
) -> _Plan | None:
    """A convolution or pool on a patch: its output window and the padding its context needs."""
    lo_y, length_y = _axis_out(incoming.lo_y, incoming.length_y, op.kernel[0], op.stride[0], op.pad_lo[0], height, tau)
    lo_x, length_x = _axis_out(incoming.lo_x, incoming.length_x, op.kernel[1], op.stride[1], op.pad_lo[1], width, tau)
    window = Window(lo_y, lo_x, length_y, length_x, height, width)
    if window.whole and tau is None:
        return None
    source_height, source_width = int(source.shape[-2]), int(source.shape[-1])
    start_y = lo_y * op.stride[0] - op.pad_lo[0]
    start_x = lo_x * op.stride[1] - op.pad_lo[1]
    size_y = (length_y - 1) * op.stride[0] + op.kernel[0]
    size_x = (length_x - 1) * op.stride[1] + op.kernel[1]
    pads = (
        max(0, -int(start_y.min())),
        max(0, int(start_y.max()) + size_y - source_height),
        max(0, -int(start_x.min())),
        max(0, int(start_x.max()) + size_x - source_width),
    )
    return _Plan("patch", "window", window, op, cost, cost * _fraction(window), pads)


def _keeps_space(node: fx.Node, ndim: int) -> bool:
    """`x[:, 0]`, `x.unsqueeze(1)`: a view that keeps the batch first and the two spatial dimensions last."""
    if node.op == "call_function" and node.target is operator.getitem:
        return len(node.args) > 1 and _getitem_keeps_space(node.args[1], ndim)
    unsqueeze = (node.op == "call_method" and node.target == "unsqueeze") or (
        node.op == "call_function" and node.target is torch.unsqueeze
    )
    if not unsqueeze:
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not isinstance(dim, int):
        return False
    dim = dim + ndim + 1 if dim < 0 else dim
    return 1 <= dim <= ndim - 2


def _fraction(window: Window) -> float:
    return (window.length_y * window.length_x) / (window.height * window.width)


def _getitem_keeps_space(index: Any, ndim: int) -> bool:
    """`x[:, 0]`, `x[:, 1:3]`: an index that keeps the batch and leaves the two spatial dimensions whole."""
    if not isinstance(index, tuple) or not index or index[0] != slice(None) or len(index) > ndim:
        return False
    if not all(isinstance(item, (int, slice)) and not isinstance(item, bool) for item in index):
        return False
    if any(item != slice(None) for item in index[ndim - 2 :]):
        return False
    return ndim - sum(isinstance(item, int) for item in index) >= 3


def _evaluate(
    node: fx.Node, root: nn.Module, module: nn.Module | None, get: Callable[[fx.Node], Any], image: Any
) -> Any:
    """Run one node on resolved arguments (copying an argument an in-place op would rewrite)."""
    if node.op == "placeholder":
        return image
    if node.op == "get_attr":
        value: Any = root
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value
    args = _map(node.args, get)
    kwargs = _map(node.kwargs, get)
    if is_inplace(node, module) and args and isinstance(args[0], torch.Tensor):
        args = (args[0].clone(), *args[1:])
    if node.op == "call_module":
        assert module is not None
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    raise NotIncremental(f"cannot run node kind {node.op!r}")


# ---- running a batch ------------------------------------------------------------------------------


@dataclass
class _Patch:
    value: torch.Tensor  # N×…×Ly×Lx: the node's map over its window, per position
    lo_y: np.ndarray  # N window corners, for this batch
    lo_x: np.ndarray


class IncrementalRunner:
    """Runs a plan for batches of occluder positions: logits and the activity of one channel."""

    def __init__(self, plan: IncrementalPlan, root: nn.Module, channel: int, fill: float = 0.0) -> None:
        self.plan = plan
        self.root = root
        self.channel = channel
        self.fill = fill
        self._last_use: dict[fx.Node, int] = {}
        for index, node in enumerate(plan.nodes):
            for source in node.all_input_nodes:
                self._last_use[source] = index
        activity = plan.stored[plan.activity_node]
        self._activity_total = float(activity[0, channel].double().sum())

    def run(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N×classes) and the feature activity (N, float64) for positions `start:end`."""
        plan = self.plan
        values: dict[fx.Node, Any] = {}
        dense_cache: dict[fx.Node, Any] = {}
        activity: torch.Tensor | None = None
        logits: Any = None
        count = end - start
        batch = slice(start, end)

        def dense(node: fx.Node) -> Any:
            kind = plan.plans[node].kind
            if kind == "static":
                return plan.stored[node]
            if kind == "plain":
                return values[node]
            if node not in dense_cache:
                dense_cache[node] = self._paste(node, values[node], count)
            return dense_cache[node]

        for index, node in enumerate(plan.nodes):
            node_plan = plan.plans[node]
            if node_plan.kind == "static":
                continue
            module = _node_module(self.root, node)
            if node.op == "output":
                logits = _map(node.args[0], dense)
                break
            if node.op == "placeholder" and node_plan.kind == "plain":  # the occluder covers the whole input
                stored = plan.stored[node]
                values[node] = torch.full(
                    (count, *stored.shape[1:]), self.fill, dtype=stored.dtype, device=stored.device
                )
            elif node_plan.kind == "plain":
                get = functools.partial(self._meta, values=values, count=count, shaped=_asks_shape(node))
                values[node] = _evaluate(node, self.root, module, get if is_metadata_node(node) else dense, None)
            else:
                values[node] = self._patch(node, node_plan, module, values, batch, count)
            if node is plan.activity_node:
                activity = self._activity(node, values[node])
            for source in node.all_input_nodes:
                if self._last_use.get(source) == index:
                    values.pop(source, None)
                    dense_cache.pop(source, None)
        assert activity is not None
        if not isinstance(logits, torch.Tensor):
            logits = logits[0]
        return logits, activity

    # the pieces ------------------------------------------------------------------------------

    def _meta(self, node: fx.Node, values: dict[fx.Node, Any], count: int, shaped: bool) -> Any:
        """What a metadata op (`x.shape`, `x.device`) sees: the value; for a patch, the stored map, or for
        its shape, a meta tensor shaped as a dense batch would be."""
        kind = self.plan.plans[node].kind
        if kind == "static":
            return self.plan.stored[node]
        if kind == "plain":
            return values[node]
        if not shaped:
            return self.plan.stored[node]
        stored = self.plan.stored[node]
        return torch.empty((count, *stored.shape[1:]), dtype=stored.dtype, device="meta")

    def _activity(self, node: fx.Node, value: Any) -> torch.Tensor:
        """Per position: the stored sum − the stored window's sum + the patch's sum."""
        channel = self.channel
        if self.plan.plans[node].kind != "patch":
            return value[:, channel].double().sum(dim=(1, 2))
        patch: _Patch = value
        window = self.plan.plans[node].window
        assert window is not None
        stored = self.plan.stored[node][0, channel]
        windows = stored.unfold(0, window.length_y, 1).unfold(1, window.length_x, 1)
        old = windows[_index(patch.lo_y, stored.device), _index(patch.lo_x, stored.device)].double().sum(dim=(1, 2))
        new = patch.value[:, channel].double().sum(dim=(1, 2))
        return self._activity_total - old + new

    def _paste(self, node: fx.Node, patch: _Patch, count: int) -> torch.Tensor:
        """N copies of the stored map, each with its position's patch laid in."""
        stored = self.plan.stored[node]
        full = stored.expand(count, *stored.shape[1:]).clone()
        ly, lx = patch.value.shape[-2:]
        device = full.device
        rows = _index(patch.lo_y, device)[:, None] + torch.arange(ly, device=device)[None, :]
        cols = _index(patch.lo_x, device)[:, None] + torch.arange(lx, device=device)[None, :]
        index = torch.arange(count, device=device)[:, None, None]
        flat = full.view(count, -1, *full.shape[-2:]).permute(0, 2, 3, 1)
        flat[index, rows[:, :, None], cols[:, None, :]] = patch.value.reshape(count, -1, ly, lx).permute(0, 2, 3, 1)
        return full

    def _source(self, node: fx.Node, pads: tuple[int, int, int, int], pad_value: float) -> torch.Tensor:
        """The stored map as 1×M×H×W, padded by `pads` with `pad_value` (cached for window ops)."""
        stored = self.plan.stored[node]
        flat = stored.reshape(1, -1, *stored.shape[-2:])
        if pads == (0, 0, 0, 0):
            return flat
        key = (node, pads, pad_value)
        cached = self.plan.padded.get(key)
        if cached is None:
            top, bottom, left, right = pads
            cached = F.pad(flat, (left, right, top, bottom), value=pad_value)
            self.plan.padded[key] = cached
        return cached

    def _context(
        self,
        source: fx.Node,
        patch: _Patch,
        start_y: np.ndarray,
        start_x: np.ndarray,
        size_y: int,
        size_x: int,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        pad_value: float = 0.0,
    ) -> torch.Tensor:
        """Per position, rows `start_y … start_y + size_y − 1` and the columns likewise of the source map
        with the source's patch laid in (N×M×size_y×size_x); beyond the real border, `pad_value`."""
        padded = self._source(source, pads, pad_value)[0]
        device = padded.device
        top, _, left, _ = pads
        windows = padded.unfold(1, size_y, 1).unfold(2, size_x, 1).permute(1, 2, 0, 3, 4)  # …×…×M×size_y×size_x
        gathered = windows[_index(start_y + top, device), _index(start_x + left, device)]  # N×M×size_y×size_x
        count = len(start_y)
        ly, lx = patch.value.shape[-2:]
        offset_y, offset_x = patch.lo_y - start_y, patch.lo_x - start_x
        rows = _index(offset_y, device)[:, None] + torch.arange(ly, device=device)[None, :]
        cols = _index(offset_x, device)[:, None] + torch.arange(lx, device=device)[None, :]
        index = torch.arange(count, device=device)[:, None, None]
        values = patch.value.reshape(count, -1, ly, lx).permute(0, 2, 3, 1)
        inside = offset_y.min() >= 0 and offset_y.max() + ly <= size_y
        inside = inside and offset_x.min() >= 0 and offset_x.max() + lx <= size_x
        if inside:
            context = gathered.contiguous()
            context.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]] = values
            return context
        # some of the patch falls outside the context: those rows and columns go to a spare one
        spare = torch.empty((count, gathered.shape[1], size_y + 1, size_x + 1), dtype=gathered.dtype, device=device)
        spare[:, :, :size_y, :size_x] = gathered
        rows = torch.where((rows >= 0) & (rows < size_y), rows, size_y)
        cols = torch.where((cols >= 0) & (cols < size_x), cols, size_x)
        spare.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]] = values
        return spare[:, :, :size_y, :size_x]

    def _patch(
        self,
        node: fx.Node,
        node_plan: _Plan,
        module: nn.Module | None,
        values: dict[fx.Node, Any],
        batch: slice,
        count: int,
    ) -> _Patch:
        window = node_plan.window
        assert window is not None
        stored = self.plan.stored[node]
        lo_y, lo_x = window.lo_y[batch], window.lo_x[batch]
        how = node_plan.how
        if how == "input":
            shape = (count, *stored.shape[1:-2], window.length_y, window.length_x)
            return _Patch(torch.full(shape, self.fill, dtype=stored.dtype, device=stored.device), lo_y, lo_x)
        if how == "window":
            op = node_plan.op
            source = node.args[0]
            assert op is not None and isinstance(source, fx.Node)
            context = self._context(
                source,
                values[source],
                lo_y * op.stride[0] - op.pad_lo[0],
                lo_x * op.stride[1] - op.pad_lo[1],
                (window.length_y - 1) * op.stride[0] + op.kernel[0],
                (window.length_x - 1) * op.stride[1] + op.kernel[1],
                node_plan.pads,
                op.pad_value,
            )
            return _Patch(op.apply(context), lo_y, lo_x)
        if how in ("pointwise", "getitem"):

            def resolve(n: fx.Node) -> Any:
                return values[n].value if self.plan.plans[n].kind == "patch" else self.plan.stored[n]

            return _Patch(_evaluate(node, self.root, module, resolve, None), lo_y, lo_x)
        if how == "merge":

            def over_union(n: fx.Node) -> Any:
                plan = self.plan.plans[n]
                if plan.kind != "patch":
                    return self.plan.stored[n]
                patch: _Patch = values[n]
                shape = patch.value.shape
                if tuple(shape[-2:]) == (window.length_y, window.length_x) and (
                    np.array_equal(patch.lo_y, lo_y) and np.array_equal(patch.lo_x, lo_x)
                ):
                    return patch.value
                context = self._context(n, patch, lo_y, lo_x, window.length_y, window.length_x)
                return context.reshape(count, *shape[1:-2], window.length_y, window.length_x)

            return _Patch(_evaluate(node, self.root, module, over_union, None), lo_y, lo_x)
        raise NotIncremental(f"unknown patch rule {how!r}")


def _asks_shape(node: fx.Node) -> bool:
    """`x.shape` or `x.size()`: metadata that depends on the batch size."""
    return bool(node.target == "size" or (len(node.args) > 1 and node.args[1] == "shape"))


def _index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64).to(device)
