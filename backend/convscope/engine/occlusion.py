"""Occlusion sensitivity (paper Fig. 7, DESIGN §4).

A grey square — the model's mean colour, which is zero after normalisation — is
slid over the S×S model input; top-left positions are 0, stride, 2·stride, …
while the square fits. Every occluded copy goes through the model once, and the
same forward pass gives all three maps:

- `probability`: the softmax probability of the target class (by default the
  unoccluded top-1);
- `top_label`: the most probable class;
- `feature.activity`: the spatial sum of one feature map of a layer (by default
  the last convolution's channel with the largest sum on the unoccluded image).

Occluded copies are built and evaluated `batch_size` at a time into one reused
buffer, so memory is bounded by the batch, whatever the image size and stride.
Plain Python: no web or command-line code here.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convscope.errors import InvalidRequestError
from convscope.jsonvalues import finite_or_none as _finite

if TYPE_CHECKING:
    from convscope.engine.engine import Engine
    from convscope.images import PreparedImage

ProgressCallback = Callable[[int, int], None]
StopCallback = Callable[[], bool]


class OcclusionCancelled(Exception):
    """Raised by `occlude` when `should_stop()` answered true between two batches."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"occlusion cancelled after {done} of {total} positions")
        self.done = done
        self.total = total


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
    (DESIGN §4); a remainder at the right and bottom edges is never occluded.
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


def occlude(
    engine: Engine,
    image: PreparedImage,
    size: int = 32,
    stride: int = 16,
    target: int | None = None,
    layer: str | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> OcclusionResult:
    """Occlusion maps of one image (DESIGN §4), evaluated `batch_size` positions at a time.

    `progress(done, total)` is called after every batch (positions done, positions
    in all); `should_stop()` is asked before every batch and a true answer raises
    `OcclusionCancelled`. Bad values raise `InvalidRequestError`; an unknown
    layer raises `NotFoundError` — both before any forward pass.
    """
    started = time.perf_counter()
    batch_size = _as_int(batch_size, "batch size")
    if batch_size < 1:
        raise InvalidRequestError(f"batch size must be at least 1, got {batch_size}")
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
    logits, outputs = engine.forward_batch(base, [layer_name])
    reference = torch.softmax(logits.float(), dim=1)[0]
    if reference.numel() != num_classes:
        raise InvalidRequestError(f"model {engine.name!r} gives {reference.numel()} scores for {num_classes} labels")
    sums = outputs[layer_name][0].float().sum(dim=(1, 2))
    channel = int(torch.argmax(sums))
    unoccluded_top = int(torch.argmax(reference))
    if target is None:
        target = unoccluded_top
    unoccluded_probability = float(reference[target])
    unoccluded_activity = float(sums[channel])
    del logits, outputs, reference, sums

    total = len(positions)
    probability = torch.empty(total, dtype=torch.float64)
    top_label = torch.empty(total, dtype=torch.int64)
    activity = torch.empty(total, dtype=torch.float64)
    device_base = base.to(engine.device)
    buffer = torch.empty((min(batch_size, total), *base.shape[1:]), dtype=base.dtype, device=engine.device)
    occluders = _Occluders(positions, size, base.shape[-2], base.shape[-1], engine.device)
    # One batch stays in flight: batch i's results are fetched only once batch i+1 has been
    # queued, and progress is at most one batch ahead of what has been computed. (On CUDA a
    # plain `.cpu()` copy is stream-ordered, so it still waits for batch i+1 as well; the
    # overlap this buys there is partial. On the CPU everything simply runs in order.)
    pending: tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def collect(start: int, end: int, p: torch.Tensor, label: torch.Tensor, act: torch.Tensor) -> None:
        probability[start:end] = p.cpu()
        top_label[start:end] = label.cpu()
        activity[start:end] = act.cpu()
        if progress is not None:
            progress(end, total)

    batches = 0
    for start in range(0, total, batch_size):
        if should_stop is not None and should_stop():
            if pending is not None:
                collect(*pending)  # what was computed is reported before giving up
            raise OcclusionCancelled(start, total)
        end = min(start + batch_size, total)
        batch = buffer[: end - start]
        batch.copy_(device_base.expand_as(batch)).masked_fill_(occluders.masks(start, end), 0.0)
        logits, outputs = engine.forward_batch(batch, [layer_name])
        probs = torch.softmax(logits.float(), dim=1)
        current = (
            start,
            end,
            probs[:, target].double(),
            probs.argmax(dim=1),
            outputs[layer_name][:, channel].double().sum(dim=(1, 2)),
        )
        del logits, outputs, probs
        batches += 1
        if pending is not None:
            collect(*pending)
        pending = current
    if pending is not None:
        collect(*pending)

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
    )


def _grid(values: np.ndarray) -> list[list[float | None]]:
    return [[_finite(float(v)) for v in row] for row in values]


def occlusion_response(result: OcclusionResult) -> dict[str, Any]:
    """The JSON of DESIGN §6 `POST .../occlusion`, shared by the API and `convscope occlude --json`.

    Contract keys, then two additive ones: `top_label_names` (class index as a
    string -> label, for every class in `top_label` plus the unoccluded top-1 and
    the target) and `unoccluded` (the reference values without an occluder).
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
    }


def occlusion_positions_total(image_size: int, size: int, stride: int) -> int:
    """How many occluded forward passes a request costs (for deciding whether to run it as a job)."""
    rows, cols, _ = occlusion_grid(image_size, size, stride)
    return rows * cols
