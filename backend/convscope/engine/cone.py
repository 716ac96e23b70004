"""Exact receptive-field ("cone") backward over a recorded forward pass.

A seed at layer L that is non-zero in a small window only reaches its receptive
field, yet a dense backward pass runs every transposed convolution over the
whole map. This module walks the recorded autograd graph itself (from the
seed's `grad_fn` down to the image's `AccumulateGrad`), plans per node the box
of indices — batch, channels, rows, columns — that can be non-zero, and runs
each node's backward only over that box, from the tensors the recorded pass
already holds (convolution weights, max-pool switches, batch-norm statistics,
the masks or outputs saved by the engine's rule functions). No new forward pass
runs, so no mask can flip. The per-node rules live in `cone_steps.py`; this
module builds the program for one layer output (cached while the output lives),
plans a seed's boxes and runs them.

Per node: a convolution's input box is `[t·s − p, (b−1)·s − p + d·(k−1) + 1)`
per spatial axis, clipped to the map, and covers one group's input channels (or
the touched groups'); a max pool routes to its switches inside the same kind of
window; batch norm, rectifiers and other element-wise steps keep the box;
residual additions and shared inputs take the union (hull) of their branches'
boxes; concatenations split it; element-wise activations the engine routes
through its own rule functions run those functions' backward over the box. Any
node it does not know — global pooling, squeeze-and-excitation, linear layers
below the seed, an activation without an engine rule — makes the whole seed
fall back to the dense pass.

`plan()` estimates the arithmetic of both routes; `backward_if_cheaper()` runs
the cone only when it needs at most `MAX_RATIO` of the dense work, and only on
the CPU (on CUDA the batched dense backward is launch-bound and stays). A
`Planner` (one per engine) makes that choice across recorded passes: the program
a layer had in the first pass it saw, without that pass's tensors, plans every
later seed of the layer (the boxes depend only on the graph's shape, the same for
every image of a model whose graph does not depend on the image's values), so a
new image's first click that goes dense reads nothing of its graph; only a click
that takes the cone builds its pass's program (and plans on it again). The rule
(deconvnet / guided / gradient) is an argument of every call, never read from
the recorded pass, so one recorded graph serves concurrent calls with
different rules.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from cachetools import LRUCache
from torch.utils.weak import WeakIdKeyDictionary

from convscope.engine.cone_steps import (
    Box,
    ConeUnsupported,
    Shape,
    Step,
    box_slices,
    extent,
    hull,
    inner_slices,
    is_empty,
    make_step,
    whole_box,
)
from convscope.engine.rules import RULES

__all__ = [
    "MAX_RATIO",
    "ConePlan",
    "ConeUnsupported",
    "Planner",
    "backward_if_cheaper",
    "cone_backward",
    "plan",
    "run",
]

# cone only when its planned work is at most this share of the dense work. Measured (docs/benchmarks.md,
# "cone"): every planned share up to 0.95 ran faster than dense (0.7: 1.3x; 0.93-0.95: 1.1x)
MAX_RATIO = 1.0
# The Python cost of one executed cone step (~15 µs), which autograd's C++ engine does not pay.
STEP_OVERHEAD = 200_000


@dataclass
class _Program:
    """The recorded graph below one layer output, as steps in backward order."""

    steps: list[Step]
    image: int  # index of the image's slot (after the last step)
    shape: Shape  # the layer output's shape
    image_shape: Shape
    dense_work: dict[str, tuple[int, int]]
    unsupported: str | None = None

    def structure(self) -> _Program:
        """The same program without its pass's tensors (`Step.structure`): for planning only."""
        steps = [step.structure() for step in self.steps]
        return _Program(steps, self.image, self.shape, self.image_shape, {}, self.unsupported)


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
    steps: list[Step] = []
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
            steps.append(make_step(node, _shape_of(node, 0), edges, inputs))
    except ConeUnsupported as error:
        return _Program([], 0, shape, image_shape, {}, str(error))
    except RuntimeError as error:  # e.g. saved tensors already freed by a backward pass
        return _Program([], 0, shape, image_shape, {}, f"the recorded graph cannot be read: {error}")
    return _linked(steps, shape, image_shape)


def _linked(steps: list[Step], shape: Shape, image_shape: Shape) -> _Program:
    """The program without its identity steps (clones, the recorded outputs' copies): each
    parent points straight at the identity chain's end. Steps stay in backward order, and the
    first kept step is the root's chain end (every other step lies below it)."""
    end = list(range(len(steps) + 1))
    for i in range(len(steps) - 1, -1, -1):
        source = steps[i].passthrough
        if source is not None:
            edge = steps[i].edges[source]
            assert edge is not None
            end[i] = end[edge]
    kept = [i for i, step in enumerate(steps) if step.passthrough is None]
    renumber = {old: new for new, old in enumerate(kept)}
    renumber[len(steps)] = len(kept)
    assert end[0] == len(steps) or renumber[end[0]] == 0
    for i in kept:
        steps[i].edges = tuple(None if edge is None else renumber[end[edge]] for edge in steps[i].edges)
    return _Program([steps[i] for i in kept], len(kept), shape, image_shape, {})


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
    cone_macs: int = 0  # the convolutions' multiply-adds alone
    dense_macs: int = 0

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
    """Boxes per step from the seed's box down; the planned work (with the per-step overhead)
    and the convolutions' multiply-adds."""
    boxes: list[Box | None] = [None] * (len(program.steps) + 1)
    below: list[tuple[Box | None, ...] | None] = [None] * len(program.steps)
    boxes[0] = seed_box
    work = macs = 0
    for i, step in enumerate(program.steps):
        box = boxes[i]
        if box is None:
            continue
        planned = step.plan(box, rule)
        planned = tuple(
            None if b is None or e is None or is_empty(b) else b for b, e in zip(planned, step.edges, strict=True)
        )
        below[i] = planned
        work += step.work(box, planned) + STEP_OVERHEAD
        macs += step.macs(box)
        for edge, child_box in zip(step.edges, planned, strict=True):
            if edge is not None and child_box is not None:
                boxes[edge] = hull(boxes[edge], child_box)
    return boxes, below, work, macs


def _dense_work(program: _Program, rule: str) -> tuple[int, int]:
    """(work, multiply-adds) of the dense pass: the whole output's box, without the cone's
    per-step overhead."""
    tally = program.dense_work.get(rule)
    if tally is None:
        boxes, _, work, macs = _propagate(program, whole_box(program.shape), rule)
        tally = work - STEP_OVERHEAD * sum(box is not None for box in boxes[:-1]), macs
        program.dense_work[rule] = tally
    return tally


def _seed_box(grad: torch.Tensor) -> Box | None:
    nonzero = grad.nonzero()
    if len(nonzero) == 0:
        return None
    low, high = nonzero.amin(0).tolist(), nonzero.amax(0).tolist()
    return tuple((int(a), int(b) + 1) for a, b in zip(low, high, strict=True))


def plan(output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str) -> ConePlan:
    """Plan one seed's cone: boxes per recorded node and the work against the dense pass."""
    return _plan_on(_program(output, image), tuple(grad.shape), _seed_box(grad), rule)


def _plan_on(program: _Program, shape: Shape, seed_box: Box | None, rule: str) -> ConePlan:
    if program.unsupported is not None:
        return ConePlan([], [], 0, 0, None, program.unsupported)
    if shape != program.shape:
        return ConePlan([], [], 0, 0, None, "the seed is not shaped like the layer output")
    dense, dense_macs = _dense_work(program, rule)
    if seed_box is None:
        return ConePlan([], [], 0, dense, None, dense_macs=dense_macs)
    boxes, below, work, macs = _propagate(program, seed_box, rule)
    return ConePlan(boxes, below, work, dense, seed_box, cone_macs=macs, dense_macs=dense_macs)


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
        fresh = part.new_zeros(extent(hull))
        if current is not None:
            fresh += current  # the first part covered the whole hull
        slots[i], owned[i], current = fresh, True, fresh
    current[inner_slices(hull, box)] += part


@torch.no_grad()
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
    slots[0] = grad[box_slices(seed_box)]
    for i, step in enumerate(program.steps):
        incoming, box, planned = slots[i], boxes[i], below[i]
        if incoming is None or box is None or planned is None:
            continue
        slots[i] = None
        if all(child_box is None for child_box in planned):  # it reaches only padding: nothing below
            continue
        parts = step.run(box, incoming, planned, rule)
        for edge, part, child_box in zip(step.edges, parts, planned, strict=True):
            if edge is not None and part is not None and child_box is not None:
                _accumulate(slots, owned, boxes, edge, part, child_box)
    final, box = slots[program.image], boxes[program.image]
    if final is not None and box is not None:
        result[box_slices(box)] = final
    return result


def cone_backward(output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str) -> torch.Tensor:
    """The seed's projection over its cone, whatever it costs; raises ConeUnsupported where the
    graph holds a node the cone cannot follow (use the dense pass there)."""
    seed_plan = plan(output, image, grad, rule)
    if seed_plan.unsupported is not None:
        raise ConeUnsupported(seed_plan.unsupported)
    return run(seed_plan, output, image, grad, rule)


def _eligible(output: torch.Tensor, image: torch.Tensor, rule: str) -> bool:
    # a 2-D seed (logits, a linear layer) reaches the whole image, and CUDA stays dense
    return image.device.type == "cpu" and rule in RULES and output.dim() == 4


def _cheap_enough(seed_plan: ConePlan, max_ratio: float | None) -> bool:
    return seed_plan.supported and seed_plan.ratio <= (MAX_RATIO if max_ratio is None else max_ratio)


def _run_or_none(
    seed_plan: ConePlan, output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str
) -> torch.Tensor | None:
    try:
        return run(seed_plan, output, image, grad, rule)
    except (ConeUnsupported, AttributeError, TypeError):  # a rule function that wants more than its box
        return None


def backward_if_cheaper(
    output: torch.Tensor, image: torch.Tensor, grad: torch.Tensor, rule: str, max_ratio: float | None = None
) -> torch.Tensor | None:
    """The cone projection when it is supported and needs at most `max_ratio` (default
    `MAX_RATIO`) of the dense work on the CPU; None means: take the dense backward pass."""
    if not _eligible(output, image, rule):
        return None
    seed_plan = plan(output, image, grad, rule)
    return _run_or_none(seed_plan, output, image, grad, rule) if _cheap_enough(seed_plan, max_ratio) else None


PLANS_KEPT = 65536  # (layer, rule, seed box) choices a planner remembers


class Planner:
    """One engine's cone-or-dense choices across its recorded passes (see the module docstring).

    `backward_if_cheaper(layer, ...)` answers as the module's function does, planning on
    the layer's program from the first pass seen (tensors left out) and remembering each
    (layer, rule, seed box)'s choice; only a seed that takes the cone builds the program of
    its own pass, plans on it and runs that plan. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._structures: dict[tuple[Any, ...], _Program] = {}
        self._cheap: LRUCache[tuple[Any, ...], bool] = LRUCache(maxsize=PLANS_KEPT)

    def _structure(self, key: tuple[Any, ...], output: torch.Tensor, image: torch.Tensor) -> _Program:
        with self._lock:
            structure = self._structures.get(key)
        if structure is None:
            structure = _program(output, image).structure()
            with self._lock:
                structure = self._structures.setdefault(key, structure)
        return structure

    def backward_if_cheaper(
        self,
        layer: str,
        output: torch.Tensor,
        image: torch.Tensor,
        grad: torch.Tensor,
        rule: str,
        max_ratio: float | None = None,
    ) -> torch.Tensor | None:
        if not _eligible(output, image, rule):
            return None
        shape, seed_box = tuple(grad.shape), _seed_box(grad)
        key = (layer, shape, tuple(image.shape))
        limit = MAX_RATIO if max_ratio is None else max_ratio
        choice = (*key, rule, seed_box, limit)
        with self._lock:
            cheap = self._cheap.get(choice)
        if cheap is None:
            cheap = _cheap_enough(_plan_on(self._structure(key, output, image), shape, seed_box, rule), limit)
            with self._lock:
                self._cheap[choice] = cheap
        if not cheap:
            return None
        seed_plan = _plan_on(_program(output, image), shape, seed_box, rule)  # this pass's own program
        return _run_or_none(seed_plan, output, image, grad, rule) if _cheap_enough(seed_plan, limit) else None
