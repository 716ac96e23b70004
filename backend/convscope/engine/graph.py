"""What lies below each layer on the recorded autograd graph: max-pool switches and
the element-wise activations, split into those the engine has a rule for and those
it does not.

A layer `has_switches` when a max-pool (whose backward routes to its argmax
locations) lies on a path from the input to the layer's output: only then does a
deconvnet projection depend on the image beyond the seed's position. `covered`
names the activations on those paths that go through the engine's rule functions
(`engine/rules.py`); `uncovered` names element-wise non-linearities that reach the
backward pass with their plain derivative in every mode (e.g. a sigmoid gate).
`fold_to_image` is the children-first walk down to the input that these facts and the
receptive fields (`engine/receptive_field.py`) are computed with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_SWITCH_NODES = ("MaxPool2DWithIndicesBackward", "MaxPool3DWithIndicesBackward", "AdaptiveMaxPool2DBackward")

# Element-wise non-linearities autograd can record. Linear element-wise steps (add, scale,
# batch norm in eval) are the same in every mode and are not listed.
_ELEMENTWISE = {
    "Relu", "Threshold", "Hardtanh", "LeakyRelu", "Elu", "Celu", "Selu", "Prelu", "Rrelu", "Silu", "Gelu",
    "Mish", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "Softplus", "Softsign", "LogSigmoid", "Softshrink",
    "Hardshrink", "Tanhshrink", "Abs", "Clamp", "ClampMin", "ClampMax", "Sign", "Erf", "Sin", "Cos",
}  # fmt: skip


@dataclass(frozen=True)
class PathFacts:
    """What lies on the paths from the input to one tensor."""

    has_switches: bool = False
    covered: frozenset[str] = frozenset()
    uncovered: frozenset[str] = frozenset()

    def merge(self, other: PathFacts) -> PathFacts:
        return PathFacts(
            self.has_switches or other.has_switches, self.covered | other.covered, self.uncovered | other.uncovered
        )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _own_facts(node: Any) -> PathFacts:
    """The facts a single node contributes."""
    rule_op = getattr(node, "convscope_op", None)
    if isinstance(rule_op, str):
        return PathFacts(covered=frozenset({rule_op}))
    name = type(node).__name__
    if name.startswith(_SWITCH_NODES):
        return PathFacts(has_switches=True)
    base = re.sub(r"Backward\d*$", "", name)
    if base in _ELEMENTWISE:
        return PathFacts(uncovered=frozenset({_snake(base)}))
    return PathFacts()


def _children(node: Any) -> list[Any]:
    # A rule switch (LRN) holds the exact computation on its first input and an identity
    # path on its second: the engine covers the op, so only the identity path is followed.
    if getattr(node, "convscope_op", None) == "local_response_norm":
        edges = node.next_functions[1:2]
    else:
        edges = node.next_functions
    return [child for child, _ in edges if child is not None]


def all_children(node: Any) -> list[Any]:
    """Every input node of an autograd node."""
    return [child for child, _ in node.next_functions if child is not None]


def fold_to_image(
    roots: Iterable[Any],
    image: torch.Tensor,
    at_image: T,
    combine: Callable[[Any, list[T]], T],
    children: Callable[[Any], list[Any]] = all_children,
) -> dict[Any, T | None]:
    """A value per autograd node below `roots` (grad_fns), computed children first: `at_image`
    at the image's AccumulateGrad, `combine(node, values)` from the values of the children
    that reach the image, None for a node from which no path reaches it."""
    memo: dict[Any, T | None] = {}
    for root in roots:
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node is None or (node in memo and not expanded):
                continue
            if type(node).__name__ == "AccumulateGrad":
                memo[node] = at_image if node.variable is image else None
                continue
            below = children(node)
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in below if child not in memo)
                continue
            values = [value for child in below if (value := memo.get(child)) is not None]
            memo[node] = combine(node, values) if values else None
    return memo


def _merged(node: Any, below: list[PathFacts]) -> PathFacts:
    facts = _own_facts(node)
    for item in below:
        facts = facts.merge(item)
    return facts


def path_facts(outputs: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, PathFacts]:
    """For each named output, the facts of every path from `image` (a leaf that required grad)."""
    roots = [tensor.grad_fn for tensor in outputs.values()]
    memo = fold_to_image(roots, image, PathFacts(), _merged, _children)
    return {name: memo.get(tensor.grad_fn) or PathFacts() for name, tensor in outputs.items()}
