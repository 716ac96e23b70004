"""A torch.fx trace of a model for incremental occlusion: the graph, and which node is which layer's output.

`trace_model(module, example)` traces with a concrete-value tracer: every node is
also evaluated on `example`, so Python control flow that depends only on shapes
(a model checking its input size, `h, w = x.shape[-2:]`) is resolved while
tracing instead of failing. Control flow on tensor *values* cannot be traced
exactly and raises `TraceFailed`. Each module's first output is recorded, so an
engine layer name (a module path) maps to the graph node that holds its output.
Batch-norm subclasses made only of point-wise parts (timm's `BatchNormAct2d`) are
kept whole as leaves. Plain Python: no web or command-line code here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

# Modules that act on every spatial position independently (in eval mode).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.LocalResponseNorm,  # normalises across channels at one position
)

_METADATA_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
_METADATA_METHODS = {"size", "dim"}


class TraceFailed(Exception):
    """The model could not be traced exactly (the reason is the message)."""


def is_pointwise_module(module: nn.Module) -> bool:
    """Whether `module` in eval mode maps each spatial position on its own."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or not module.track_running_stats:
            return False
        return all(is_pointwise_module(child) for child in module.children())
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return not module.training
    return isinstance(module, POINTWISE_MODULES)


def is_metadata_node(node: fx.Node) -> bool:
    """`x.shape`, `x.ndim`, `x.size()`, `x.dim()`: values that do not depend on a tensor's contents."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _METADATA_ATTRS
    return node.op == "call_method" and node.target in _METADATA_METHODS


@dataclass
class TracedModel:
    graph: fx.Graph
    module_outputs: dict[str, fx.Node]  # module path -> the node of its first output


class _ConcreteTracer(fx.Tracer):
    def __init__(self, root: nn.Module, example: torch.Tensor, open_path: str | None = None) -> None:
        super().__init__()
        self._root = root
        self._example = example
        self._open_path = open_path  # a leaf batch-norm module to trace through (a layer inside it is wanted)
        self.values: dict[fx.Node, Any] = {}
        self.input_dependent: set[fx.Node] = set()
        self.module_outputs: dict[str, fx.Node] = {}
        self._concrete = 0  # > 0 while evaluating on real values: no proxies then

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._concrete:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and is_pointwise_module(m):
            return module_qualified_name != self._open_path
        return super().is_leaf_module(m, module_qualified_name)

    def _value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Proxy):
            return self.values[arg.node]
        if isinstance(arg, (tuple, list)):
            return type(arg)(self._value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self._value(arg.start), self._value(arg.stop), self._value(arg.step))
        return arg

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **more: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **more)
        node = proxy.node
        if kind == "output":
            return proxy
        self._concrete += 1
        try:
            value = self._evaluate(node, kind, target, args, kwargs)
        finally:
            self._concrete -= 1
        self.values[node] = value
        inputs = node.all_input_nodes
        if kind != "placeholder" and not is_metadata_node(node) and any(a in self.input_dependent for a in inputs):
            self.input_dependent.add(node)
        return proxy

    def _evaluate(self, node: fx.Node, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        values_args, values_kwargs = self._value(args), self._value(kwargs)
        if kind == "placeholder":
            value: Any = self._example
            self.input_dependent.add(node)
        elif kind == "get_attr":
            value = self._root
            for part in str(target).split("."):
                value = getattr(value, part)
        elif kind == "call_function":
            value = target(*values_args, **values_kwargs)
        elif kind == "call_method":
            value = getattr(values_args[0], target)(*values_args[1:], **values_kwargs)
        elif kind == "call_module":
            value = self._root.get_submodule(target)(*values_args, **values_kwargs)
        else:  # pragma: no cover - fx has no other kinds
            raise TraceFailed(f"unknown node kind {kind!r}")
        if isinstance(value, torch.Tensor) and kind != "get_attr":
            value = value.clone()  # a later in-place op must not rewrite what was recorded
        return value

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        proxies: list[fx.Proxy] = []
        fx.node.map_aggregate((args, kwargs), lambda a: proxies.append(a) if isinstance(a, fx.Proxy) else None)
        if self._concrete or not proxies:  # a concrete evaluation (see create_proxy): just run it
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        try:
            name = self.path_of_module(m)
        except NameError:
            return out
        if name and isinstance(out, fx.Proxy) and name not in self.module_outputs:
            value = self.values.get(out.node)
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                self.module_outputs[name] = out.node
        return out

    def to_bool(self, obj: fx.Proxy) -> bool:
        if obj.node in self.input_dependent:
            raise TraceFailed("the model branches on tensor values (data-dependent control flow)")
        return bool(self.values[obj.node])

    def iter(self, obj: fx.Proxy) -> Any:
        value = self.values[obj.node]
        if obj.node in self.input_dependent or not isinstance(value, (tuple, list, torch.Size)):
            raise TraceFailed("the model iterates over a traced tensor")
        return iter([obj[i] for i in range(len(value))])  # type: ignore[index]

    def keys(self, obj: fx.Proxy) -> Any:
        raise TraceFailed("the model unpacks a traced value with **")


def is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether a node rewrites its first argument (`ReLU(inplace=True)`, `x.relu_()`, `F.relu(x, inplace=True)`)."""
    if module is not None and getattr(module, "inplace", False) is True:
        return True
    if node.kwargs.get("inplace", False) is True:
        return True
    if node.op == "call_method" and isinstance(node.target, str):
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return name in ("iadd", "isub", "imul", "itruediv") or (name.endswith("_") and not name.endswith("__"))
    return False


def _functionalize_inplace(graph: fx.Graph, root: nn.Module) -> None:
    """After `y.relu_()`, later readers of `y` read the in-place op's result (its node), so the graph
    can be run with every in-place op on a copy and still compute what the model computes."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op not in ("call_module", "call_method", "call_function") or not node.args:
            continue
        module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
        source = node.args[0]
        if not isinstance(source, fx.Node) or not is_inplace(node, module):
            continue
        for user in list(source.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(source, node)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], TracedModel | str]] = weakref.WeakKeyDictionary()


def _leaf_holding(module: nn.Module, layer: str | None) -> str | None:
    """The batch-norm leaf (e.g. timm's `BatchNormAct2d`) that `layer` lies inside, if any."""
    if not layer or "." not in layer:
        return None
    parts = layer.split(".")
    for end in range(1, len(parts)):
        path = ".".join(parts[:end])
        try:
            candidate = module.get_submodule(path)
        except AttributeError:
            return None
        if isinstance(candidate, nn.modules.batchnorm._BatchNorm) and is_pointwise_module(candidate):
            return path
    return None


def trace_model(module: nn.Module, example: torch.Tensor, layer: str | None = None) -> TracedModel:
    """The model's graph for inputs shaped like `example` (cached per module and shape); `TraceFailed` if not
    traceable. With `layer`, a point-wise batch-norm module holding that layer is traced through, so the
    layer's output is a node of the graph."""
    per_module = _CACHE.setdefault(module, {})
    open_path = _leaf_holding(module, layer)
    key = (*example.shape[1:], open_path)
    cached = per_module.get(key)
    if isinstance(cached, str):
        raise TraceFailed(cached)
    if cached is not None:
        return cached
    tracer = _ConcreteTracer(module, example.detach().clone(), open_path)
    try:
        with torch.no_grad():
            graph = tracer.trace(module)
        placeholders = [node for node in graph.nodes if node.op == "placeholder"]
        if len(placeholders) != 1:
            raise TraceFailed(f"the model's forward takes {len(placeholders)} inputs, not one image batch")
    except TraceFailed as exc:
        per_module[key] = str(exc)
        raise
    except Exception as exc:  # anything torch.fx cannot follow means: no trace
        reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        per_module[key] = reason
        raise TraceFailed(reason) from None
    _functionalize_inplace(graph, module)
    traced = TracedModel(graph, dict(tracer.module_outputs))
    per_module[key] = traced
    return traced
