"""How many bytes a recorded forward pass holds: the tensors its autograd graph saved
for the backward pass (conv inputs and weights, pool switches, activation outputs),
its recorded layer outputs and its input, each storage counted once.

The graph is walked once per record from the recorded outputs down. A node's saved
tensors are its `_saved_*` attributes (built-in nodes; the names are listed once per
node type) or `saved_tensors` (the engine's own rule functions).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# per node type: the names of its `_saved_*` attributes, or None for the engine's own rule
# functions, which keep theirs in `saved_tensors`
_SAVED_NAMES: dict[type, tuple[str, ...] | None] = {}


def _saved_names(node: Any) -> tuple[str, ...] | None:
    kind = type(node)
    if kind not in _SAVED_NAMES:
        names = tuple(name for name in dir(node) if name.startswith("_saved_"))
        _SAVED_NAMES[kind] = None if not names and hasattr(node, "saved_tensors") else names
    return _SAVED_NAMES[kind]


def _saved(node: Any) -> Iterable[torch.Tensor]:
    names = _saved_names(node)
    try:
        if names is None:
            yield from node.saved_tensors
            return
        for name in names:
            value = getattr(node, name)
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (tuple, list)):
                yield from (item for item in value if isinstance(item, torch.Tensor))
    except RuntimeError:
        return  # freed, or not readable: holds nothing we can count


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def model_storages(module: torch.nn.Module) -> set[int]:
    """The storages of a model's parameters and buffers: the model's, never a record's."""
    return {_storage(tensor)[0] for tensor in (*module.parameters(), *module.buffers())}


def held_bytes(tensors: Iterable[torch.Tensor], model: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """Bytes of every storage the tensors and the graph below them keep alive, except the
    model's own (`model`: from `model_storages`)."""
    storages: dict[int, int] = {}
    roots = list(tensors)
    for tensor in roots:
        pointer, size = _storage(tensor)
        storages[pointer] = size
    seen: set[Any] = set()
    stack = [tensor.grad_fn for tensor in roots if tensor.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for saved in _saved(node):
            pointer, size = _storage(saved)
            storages[pointer] = size
        stack.extend(child for child, _ in node.next_functions if child is not None and child not in seen)
    return sum(size for pointer, size in storages.items() if pointer not in model and pointer != 0)
