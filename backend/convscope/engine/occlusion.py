"""Occlusion sensitivity (paper Fig. 7, docs/architecture.md "Occlusion").

A grey square — the model's mean colour, which is zero after normalisation — is
slid over the S×S model input; top-left positions are 0, stride, 2·stride, …
while the square fits. Every occluded copy is evaluated once, and the same pass
gives all three maps:

- `probability`: the softmax probability of the target class (by default the
  unoccluded top-1);
- `top_label`: the most probable class;
- `feature.activity`: the spatial sum of one feature map of a layer (by default
  the last convolution's channel with the largest sum on the unoccluded image).

Positions are evaluated `batch_size` at a time, so memory is bounded by the batch,
whatever the image size and stride. Two methods give the same maps (to float
rounding): *dense* runs each occluded copy through the whole model; *incremental*
(`convscope.engine.incremental`) recomputes only the patch of each layer the
occluder can change. `auto` picks incremental where it plans to save at least a
third of the arithmetic. Opt-in approximations, labelled in the result: a
projective-field cap (`approx`) and adaptive drill-down (`adaptive`).
Plain Python: no web or command-line code here.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convscope.engine.capture import Tap
from convscope.engine.engine import cuda_precision
from convscope.engine.incremental import IncrementalPlan, IncrementalRunner, NotIncremental, plan_incremental
from convscope.engine.tracing import TraceFailed, trace_model
from convscope.errors import InvalidRequestError
from convscope.jsonvalues import finite_or_none as _finite
from convscope.tasks import Cancelled, Task, as_task

if TYPE_CHECKING:
    from convscope.engine.engine import Engine
    from convscope.images import PreparedImage


class OcclusionCancelled(Cancelled):
    """Raised by `occlude` when the task's `should_stop()` answered true between two batches."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(done, total, "occlusion")
        self.args = (f"occlusion cancelled after {done} of {total} positions",)


@dataclass
class OcclusionResult:
    """The three maps (rows×cols, row-major: cell [r, c] is the square at (r·stride, c·stride))."""

    target: int
    target_label: str
    size: int
    stride: int
    rows: int
    cols: int
    probability: np.ndarray  # rows×cols float64, softmax probability of `target`
    top_label: np.ndarray  # rows×cols int64, argmax class
    layer: str
    channel: int
    activity: np.ndarray  # rows×cols float64, spatial sum of `layer`'s `channel`
    unoccluded_probability: float
    unoccluded_top_label: int
    unoccluded_activity: float
    label_names: dict[int, str]  # every class in `top_label`, plus the unoccluded top-1 and the target
    positions: list[tuple[int, int]]  # (y, x) top-left corners, row-major
    batch_size: int = 32
    forward_batches: int = 0
    seconds: float = 0.0
    method: str = "dense"  # what ran: "dense" | "incremental"
    method_requested: str = "dense"  # "auto" | "dense" | "incremental"
    planned_ratio: float | None = None  # incremental's planned arithmetic / dense's (None: not planned)
    approx: float | None = None  # the projective-field cap tau, when the incremental run was approximate
    adaptive: float | None = None  # the drill-down share, when adaptive (approximate)
    positions_computed: int = 0  # positions actually occluded (fewer than rows·cols when adaptive)
    note: str | None = None  # why the method that ran is not the one asked for, if it is not

    @property
    def approximate(self) -> bool:
        return self.approx is not None or self.adaptive is not None


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidRequestError(f"{name} must be an integer, not {value!r}") from None


def occlusion_grid(image_size: int, size: int, stride: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, columns and the (y, x) top-left corners, row-major, of every occluder position.

    Positions are 0, stride, 2·stride, … while the square fits in the image
    (docs/architecture.md "Occlusion"); a remainder at the right and bottom edges is never occluded.
    """
    image_size = _as_int(image_size, "image size")
    size = _as_int(size, "occluder size")
    stride = _as_int(stride, "stride")
    if size < 1:
        raise InvalidRequestError(f"occluder size must be at least 1 pixel, got {size}")
    if stride < 1:
        raise InvalidRequestError(f"stride must be at least 1 pixel, got {stride}")
    if size > image_size:
        raise InvalidRequestError(f"occluder size {size} is larger than the {image_size}×{image_size} model input")
    count = (image_size - size) // stride + 1
    starts = [i * stride for i in range(count)]
    return count, count, [(y, x) for y in starts for x in starts]


class _Occluders:
    """Boolean masks (K×1×H×W, true inside the occluder) for a run of grid positions,
    built on the device with a few tensor operations instead of one slice per position."""

    def __init__(
        self, positions: list[tuple[int, int]], size: int, height: int, width: int, device: torch.device
    ) -> None:
        corners = torch.tensor(positions, dtype=torch.int64, device=device).reshape(-1, 2)
        self._ys, self._xs = corners[:, 0:1], corners[:, 1:2]
        self._rows = torch.arange(height, device=device)[None, :]
        self._cols = torch.arange(width, device=device)[None, :]
        self._size = size

    def masks(self, start: int, end: int) -> torch.Tensor:
        ys, xs = self._ys[start:end], self._xs[start:end]
        in_rows = (self._rows >= ys) & (self._rows < ys + self._size)  # K×H
        in_cols = (self._cols >= xs) & (self._cols < xs + self._size)  # K×W
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _check_target(target: Any, num_classes: int) -> int:
    target = _as_int(target, "target class")
    if not 0 <= target < num_classes:
        raise InvalidRequestError(f"target class {target} is out of range (0..{num_classes - 1})")
    return target


METHODS = ("auto", "dense", "incremental")
AUTO_MAX_RATIO = 2 / 3  # `auto` runs incremental when its planned arithmetic is at most this share of dense
ADAPTIVE_FACTOR = 2  # adaptive drill-down: the coarse pass uses this many times the stride


def _check_options(method: Any, approx: Any, adaptive: Any) -> tuple[str, float | None, float | None]:
    if method not in METHODS:
        raise InvalidRequestError(f"unknown occlusion method {method!r}; use one of {', '.join(METHODS)}")
    tau = None
    if approx is not None:
        if isinstance(approx, bool) or not isinstance(approx, (int, float)) or not 0 < approx <= 1:
            raise InvalidRequestError(
                f"approx (the projective-field cap tau) must be a number in (0, 1], got {approx!r}"
            )
        if method == "dense":
            raise InvalidRequestError("approx needs the incremental method (or auto), not dense")
        tau = float(approx)
    fraction = None
    if adaptive is not None:
        if isinstance(adaptive, bool) or not isinstance(adaptive, (int, float)) or not 0 < adaptive <= 1:
            raise InvalidRequestError(
                f"adaptive (the share of coarse cells to drill into) must be a number in (0, 1], got {adaptive!r}"
            )
        fraction = float(adaptive)
    return str(method), tau, fraction


Evaluator = Callable[[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class _DenseEvaluator:
    """Every occluded copy through the whole model, `batch_size` at a time into one reused buffer."""

    def __init__(
        self,
        engine: Engine,
        base: torch.Tensor,
        positions: list[tuple[int, int]],
        size: int,
        layer: str,
        target: int,
        channel: int,
        batch_size: int,
    ) -> None:
        self.engine, self.target = engine, target
        # the feature activity, summed as the layer produces it (before any in-place op downstream)
        self.tap = Tap(layer, reduce=lambda output: output[:, channel].double().sum(dim=(1, 2)))
        self.base = base.to(engine.device)
        count = min(batch_size, len(positions))
        self.buffer = torch.empty((count, *base.shape[1:]), dtype=base.dtype, device=engine.device)
        self.occluders = _Occluders(positions, size, base.shape[-2], base.shape[-1], engine.device)

    def __call__(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.buffer[: end - start]
        batch.copy_(self.base.expand_as(batch)).masked_fill_(self.occluders.masks(start, end), 0.0)
        logits, tapped = self.engine.infer(batch, [self.tap])
        probs = torch.softmax(logits.float(), dim=1)
        return probs[:, self.target].double(), probs.argmax(dim=1), tapped[self.tap]


class _IncrementalEvaluator:
    """Only the patches an occluder can change, through a torch.fx plan of the model."""

    def __init__(self, engine: Engine, plan: IncrementalPlan, target: int, channel: int) -> None:
        self.engine, self.target = engine, target
        self.runner = IncrementalRunner(plan, engine.model.module, channel)

    def __call__(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with _computing(self.engine):
            logits, activity = self.runner.run(start, end)
        probs = torch.softmax(logits.float(), dim=1)
        return probs[:, self.target].double(), probs.argmax(dim=1), activity


@contextmanager
def _computing(engine: Engine) -> Iterator[None]:
    """What the engine holds around its own passes: its lock, no autograd, and on CUDA its precision."""
    precision = cuda_precision(engine.tf32) if engine.device.type == "cuda" else nullcontext()
    with engine.lock, precision, torch.no_grad():
        yield


def _close(a: Any, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    return bool((a.detach().float() - b.detach().float()).abs().max() <= 1e-4 * scale) if b.numel() else True


@dataclass
class _Choice:
    method: str  # what runs: "dense" | "incremental"
    plan: IncrementalPlan | None
    ratio: float | None
    note: str | None


def _choose(
    engine: Engine,
    base: torch.Tensor,
    positions: list[tuple[int, int]],
    size: int,
    layer: str,
    method: str,
    tau: float | None,
    reference: tuple[torch.Tensor, torch.Tensor],
) -> _Choice:
    """Trace and plan (unless dense was asked for) and decide which method runs.

    `reference` is the engine's own unoccluded logits and feature map: the traced graph
    must reproduce them, or the run falls back to dense (with a note)."""
    if method == "dense":
        return _Choice("dense", None, None, None)
    module = engine.model.module

    def fallback(reason: str) -> _Choice:
        return _Choice(
            "dense", None, None, f"incremental occlusion is not available for this model ({reason}); ran dense"
        )

    try:
        with _computing(engine):
            traced = trace_model(module, base.to(engine.device), layer)
            plan = plan_incremental(traced, module, base.to(engine.device), positions, size, layer, tau)
    except (TraceFailed, NotIncremental) as exc:
        return fallback(str(exc))
    except Exception as exc:  # an operation the planner could not run: dense still can
        return fallback(f"planning failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    logits, feature_map = reference
    graph_logits, graph_map = plan.reference_logits, plan.stored[plan.activity_node]
    if not (_close(graph_logits, logits) and _close(graph_map, feature_map[None])):
        return fallback("the traced graph does not reproduce the model's own output")
    ratio = plan.ratio
    if method == "auto" and tau is None and ratio > AUTO_MAX_RATIO:
        return _Choice("dense", None, ratio, None)
    return _Choice("incremental", plan, ratio, None)


def occlude(
    engine: Engine,
    image: PreparedImage,
    size: int = 32,
    stride: int = 16,
    target: int | None = None,
    layer: str | None = None,
    batch_size: int = 32,
    method: str = "auto",
    approx: float | None = None,
    adaptive: float | None = None,
    task: Task | None = None,
) -> OcclusionResult:
    """Occlusion maps of one image (docs/architecture.md "Occlusion"), evaluated `batch_size` positions at a time.

    `method`: "dense" reruns the whole model per position; "incremental" reruns only
    what the occluder can change (exact, `convscope.engine.incremental`); "auto"
    (default) runs incremental when its planned arithmetic is at most 2/3 of dense.
    A model torch.fx cannot trace runs dense, with a note in the result.
    `approx` (tau in (0, 1]) caps each layer's recomputed window at tau of its map:
    approximate. `adaptive` (a share in (0, 1]) first occludes at twice the stride,
    then at the stride only inside that share of coarse cells where the target's
    probability dropped most; the other cells take their coarse value: approximate.

    `task.report(done, total)` is called after every batch; `task.should_stop()` is
    asked before every batch and a true answer raises `OcclusionCancelled` (a
    `convscope.tasks.Cancelled`). Bad values raise `InvalidRequestError`; an unknown
    layer raises `NotFoundError` — both before any forward pass.
    """
    started = time.perf_counter()
    task = as_task(task)
    batch_size = _as_int(batch_size, "batch size")
    if batch_size < 1:
        raise InvalidRequestError(f"batch size must be at least 1, got {batch_size}")
    method, tau, fraction = _check_options(method, approx, adaptive)
    base = image.tensor
    if base.dim() != 4 or base.shape[0] != 1 or base.shape[1] != 3 or base.shape[2] != base.shape[3]:
        raise InvalidRequestError(f"expected a prepared 1×3×S×S image, got shape {tuple(base.shape)}")
    image_size = int(base.shape[-1])
    if image_size != engine.input_size:
        raise InvalidRequestError(
            f"the image was prepared at {image_size}×{image_size} but model {engine.name!r} "
            f"takes {engine.input_size}×{engine.input_size}"
        )
    rows, cols, positions = occlusion_grid(image_size, size, stride)
    num_classes = len(engine.labels)
    if target is not None:
        target = _check_target(target, num_classes)
    layer_name = engine.last_conv_layer() if layer is None else layer
    engine.layer(layer_name)  # NotFoundError for an unknown layer

    # The unoccluded image: reference values, default target and the feature map's channel.
    reference_tap = Tap(layer_name)
    logits, tapped = engine.infer(base, [reference_tap])
    feature_map = tapped.get(reference_tap)
    if feature_map is None or feature_map.dim() != 4:
        raise InvalidRequestError(f"layer {layer_name!r} gives no feature map for this image")
    reference = torch.softmax(logits.float(), dim=1)[0]
    if reference.numel() != num_classes:
        raise InvalidRequestError(f"model {engine.name!r} gives {reference.numel()} scores for {num_classes} labels")
    reference_outputs = (logits, feature_map[0])
    sums = feature_map[0].float().sum(dim=(1, 2))
    channel = int(torch.argmax(sums))
    unoccluded_top = int(torch.argmax(reference))
    if target is None:
        target = unoccluded_top
    unoccluded_probability = float(reference[target])
    unoccluded_activity = float(sums[channel])
    del logits, tapped, feature_map, reference, sums

    total = len(positions)
    probability = torch.empty(total, dtype=torch.float64)
    top_label = torch.empty(total, dtype=torch.int64)
    activity = torch.empty(total, dtype=torch.float64)
    if fraction is None:
        phases = [np.arange(total)]
    else:
        coarse = [
            i
            for i, (r, c) in enumerate(np.ndindex(rows, cols))
            if r % ADAPTIVE_FACTOR == 0 and c % ADAPTIVE_FACTOR == 0
        ]
        phases = [np.asarray(coarse, dtype=np.int64)]
    counter = _Progress(task, int(len(phases[0]) if fraction is None else _adaptive_estimate(rows, cols, fraction)))
    choice: _Choice | None = None
    batches = 0
    for phase, indices in enumerate(_phases(phases, rows, cols, fraction, probability, unoccluded_probability)):
        if phase:
            counter.set_total(counter.done + len(indices))
        subset = [positions[i] for i in indices]
        choice_here = _choose(engine, base, subset, size, layer_name, method, tau, reference_outputs)
        if choice is None:
            choice = choice_here
        if choice_here.method == "incremental" and choice_here.plan is not None:
            evaluator: Evaluator = _IncrementalEvaluator(engine, choice_here.plan, target, channel)
        else:
            evaluator = _DenseEvaluator(engine, base, subset, size, layer_name, target, channel, batch_size)
        batches += _run_batches(evaluator, indices, batch_size, counter, probability, top_label, activity)
        del evaluator, choice_here
    assert choice is not None
    del reference_outputs
    computed = counter.done
    if fraction is not None:
        _fill_from_coarse(rows, cols, computed_mask=counter.mask(total), maps=(probability, top_label, activity))
    counter.finish()

    top_map = top_label.reshape(rows, cols).numpy()
    occurring = {int(i) for i in np.unique(top_map)} | {unoccluded_top, target}
    labels = engine.labels
    return OcclusionResult(
        target=target,
        target_label=labels[target],
        size=int(size),
        stride=int(stride),
        rows=rows,
        cols=cols,
        probability=probability.reshape(rows, cols).numpy(),
        top_label=top_map,
        layer=layer_name,
        channel=channel,
        activity=activity.reshape(rows, cols).numpy(),
        unoccluded_probability=unoccluded_probability,
        unoccluded_top_label=unoccluded_top,
        unoccluded_activity=unoccluded_activity,
        label_names={index: labels[index] for index in sorted(occurring)},
        positions=positions,
        batch_size=batch_size,
        forward_batches=batches + 1,
        seconds=time.perf_counter() - started,
        method=choice.method,
        method_requested=method,
        planned_ratio=choice.ratio,
        approx=tau if choice.method == "incremental" else None,
        adaptive=fraction,
        positions_computed=computed,
        note=choice.note,
    )


class _Progress:
    """Positions done (over all phases), reported to the task, and which ones were computed."""

    def __init__(self, task: Task, total: int) -> None:
        self.task, self.total, self.done = task, total, 0
        self.indices: list[np.ndarray] = []

    def check(self) -> None:
        if self.task.should_stop():
            raise OcclusionCancelled(self.done, self.total)

    def add(self, indices: np.ndarray) -> None:
        self.indices.append(indices)
        self.done += len(indices)
        self.total = max(self.total, self.done)
        self.task.report(self.done, self.total)

    def set_total(self, total: int) -> None:
        self.total = max(total, self.done)

    def finish(self) -> None:
        if self.total != self.done:
            self.total = self.done
            self.task.report(self.done, self.total)

    def mask(self, total: int) -> np.ndarray:
        mask = np.zeros(total, dtype=bool)
        for indices in self.indices:
            mask[indices] = True
        return mask


def _run_batches(
    evaluator: Evaluator,
    indices: np.ndarray,
    batch_size: int,
    counter: _Progress,
    probability: torch.Tensor,
    top_label: torch.Tensor,
    activity: torch.Tensor,
) -> int:
    """Evaluate positions `indices` (the evaluator's own 0…n−1) in batches into the maps; the number of batches.

    One batch stays in flight: batch i's results are fetched only once batch i+1 has been
    queued, and progress is at most one batch ahead of what has been computed. (On CUDA a
    plain `.cpu()` copy is stream-ordered, so it still waits for batch i+1 as well; the
    overlap this buys there is partial. On the CPU everything simply runs in order.)"""
    pending: tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def collect(where: np.ndarray, p: torch.Tensor, label: torch.Tensor, act: torch.Tensor) -> None:
        at = torch.as_tensor(where)
        probability[at] = p.cpu()
        top_label[at] = label.cpu()
        activity[at] = act.cpu()
        counter.add(where)

    batches = 0
    for start in range(0, len(indices), batch_size):
        try:
            counter.check()
        except OcclusionCancelled:
            if pending is not None:
                collect(*pending)  # what was computed is reported before giving up
            raise OcclusionCancelled(counter.done, counter.total) from None
        end = min(start + batch_size, len(indices))
        current = (indices[start:end], *evaluator(start, end))
        batches += 1
        if pending is not None:
            collect(*pending)
        pending = current
    if pending is not None:
        collect(*pending)
    return batches


def _adaptive_estimate(rows: int, cols: int, fraction: float) -> int:
    """Positions an adaptive run computes: the coarse grid, then its share of the remaining ones."""
    coarse_rows, coarse_cols = -(-rows // ADAPTIVE_FACTOR), -(-cols // ADAPTIVE_FACTOR)
    cells = coarse_rows * coarse_cols
    chosen = max(1, math.ceil(fraction * cells))
    per_cell = ADAPTIVE_FACTOR * ADAPTIVE_FACTOR - 1
    return cells + min(chosen * per_cell, rows * cols - cells)


def _phases(
    phases: list[np.ndarray],
    rows: int,
    cols: int,
    fraction: float | None,
    probability: torch.Tensor,
    unoccluded: float,
) -> Any:
    """The index sets to evaluate: all positions, or (adaptive) the coarse grid, then the drill-down."""
    yield phases[0]
    if fraction is None:
        return
    factor = ADAPTIVE_FACTOR
    coarse_rows, coarse_cols = -(-rows // factor), -(-cols // factor)
    drop = unoccluded - probability.reshape(rows, cols)[::factor, ::factor].numpy()
    chosen = max(1, math.ceil(fraction * coarse_rows * coarse_cols))
    order = np.argsort(-drop.reshape(-1), kind="stable")[:chosen]
    refine = []
    for cell in order:
        cr, cc = divmod(int(cell), coarse_cols)
        for r in range(cr * factor, min(rows, (cr + 1) * factor)):
            for c in range(cc * factor, min(cols, (cc + 1) * factor)):
                if r % factor or c % factor:
                    refine.append(r * cols + c)
    if refine:
        yield np.asarray(sorted(refine), dtype=np.int64)


def _fill_from_coarse(rows: int, cols: int, computed_mask: np.ndarray, maps: tuple[torch.Tensor, ...]) -> None:
    """Adaptive runs: every position not computed takes the value of its cell's coarse position."""
    factor = ADAPTIVE_FACTOR
    r, c = np.divmod(np.arange(rows * cols), cols)
    source = (r - r % factor) * cols + (c - c % factor)
    missing = np.flatnonzero(~computed_mask)
    if missing.size == 0:
        return
    at, src = torch.as_tensor(missing), torch.as_tensor(source[missing])
    for values in maps:
        values[at] = values[src]


def _grid(values: np.ndarray) -> list[list[float | None]]:
    return [[_finite(float(v)) for v in row] for row in values]


def occlusion_response(result: OcclusionResult) -> dict[str, Any]:
    """The JSON of docs/api.md `POST .../occlusion`, shared by the API and `convscope occlude --json`.

    Contract keys, then additive ones: `top_label_names` (class index as a
    string -> label, for every class in `top_label` plus the unoccluded top-1 and
    the target), `unoccluded` (the reference values without an occluder), and how
    the maps were computed: `method` (what ran: dense | incremental),
    `method_requested` (auto | dense | incremental), `planned_ratio` (incremental's
    planned arithmetic over dense's, null when not planned), `approximate` (true
    when `approx` — the projective-field cap tau — or `adaptive` — the drill-down
    share — made the maps approximate), `positions_computed`, `seconds` and `note`
    (why another method ran than the one asked for, else null).
    Non-finite numbers (a diverging random-weight model) become null.
    """
    return {
        "target": result.target,
        "target_label": result.target_label,
        "size": result.size,
        "stride": result.stride,
        "rows": result.rows,
        "cols": result.cols,
        "probability": _grid(result.probability),
        "top_label": [[int(v) for v in row] for row in result.top_label],
        "feature": {"layer": result.layer, "channel": result.channel, "activity": _grid(result.activity)},
        "top_label_names": {str(index): label for index, label in result.label_names.items()},
        "unoccluded": {
            "probability": _finite(result.unoccluded_probability),
            "top_label": result.unoccluded_top_label,
            "activity": _finite(result.unoccluded_activity),
        },
        "method": result.method,
        "method_requested": result.method_requested,
        "planned_ratio": result.planned_ratio,
        "approximate": result.approximate,
        "approx": result.approx,
        "adaptive": result.adaptive,
        "positions_computed": result.positions_computed,
        "seconds": round(result.seconds, 4),
        "note": result.note,
    }


def occlusion_positions_total(image_size: int, size: int, stride: int) -> int:
    """How many occluded forward passes a request costs (for deciding whether to run it as a job)."""
    rows, cols, _ = occlusion_grid(image_size, size, stride)
    return rows * cols
