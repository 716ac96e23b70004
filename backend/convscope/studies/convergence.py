"""Feature-level convergence per layer during training (the paper's Fig. 4, as numbers).

Fig. 4 shows that a layer's strongest activations stop changing once the layer has
settled. Weight drift (`evolution.weight_drift`) says how far the weights still move;
this module says whether the *features* still change: for every checkpoint, layer and
channel, the channel's peak activation on every image of a fixed set (the spatial max of the
conv output, before its ReLU, so the order is defined even where the rectified map is all
zero; the ReLU keeps the order of the positive peaks), and against the final checkpoint's

- **top-k overlap**: the share of the channel's k strongest images (default k = 9, the
  paper's top 9; ties go to the earlier image) that are also among its k strongest at the
  final checkpoint;
- **correlation**: the Pearson correlation, over the images, of the channel's peaks with
  its peaks at the final checkpoint (channels constant over the images at either
  checkpoint, e.g. dead ones, have none and are left out of the mean; their number is kept);

each averaged over the layer's channels. The final checkpoint against itself gives 1 for
both. A layer has **settled** at the first checkpoint from which its measure stays at or
above a threshold (default 2/3: six of the nine top images) at every later checkpoint.
Everything is deterministic: no sampling, a fixed image order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from convscope.errors import InvalidRequestError
from convscope.studies.checkpoints import Checkpoint, load_checkpoint
from convscope.studies.data import ImageSet
from convscope.studies.store import FORMAT_VERSION, markdown_table
from convscope.tasks import Task, checkpoint

MEASURES = ("overlap", "correlation")
DEFAULT_TOP = 9
DEFAULT_THRESHOLD = 2 / 3


def channel_peaks(engine: Any, images: ImageSet, layers: Sequence[str], batch_size: int = 128) -> dict[str, np.ndarray]:
    """Per layer, N×C: each channel's largest activation on each image."""
    from convscope.engine.capture import Tap

    taps = [Tap(name, reduce="max") for name in layers]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for batch in images.batches(engine.input_size, engine.model.mean, engine.model.std, batch_size):
        _, tapped = engine.infer(batch, taps)
        for tap in taps:
            parts[tap.module].append(tapped[tap].float().cpu().numpy().astype(np.float64))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def top_members(peaks: np.ndarray, k: int) -> np.ndarray:
    """N×C booleans: whether each image is among the channel's k strongest (ties: earlier image)."""
    order = np.argsort(-peaks, axis=0, kind="stable")[:k]
    members = np.zeros(peaks.shape, dtype=bool)
    np.put_along_axis(members, order, True, axis=0)
    return members


def top_overlap(peaks: np.ndarray, final: np.ndarray, k: int = DEFAULT_TOP) -> np.ndarray:
    """C: per channel, |top-k(peaks) ∩ top-k(final)| / k."""
    if peaks.shape != final.shape:
        raise InvalidRequestError(f"peaks of shape {peaks.shape} cannot be compared with {final.shape}")
    if not 1 <= k <= peaks.shape[0]:
        raise InvalidRequestError(f"top {k} needs between 1 and {peaks.shape[0]} (the number of images)")
    both = top_members(peaks, k) & top_members(final, k)
    overlap: np.ndarray = both.sum(axis=0) / k
    return overlap


def peak_correlation(peaks: np.ndarray, final: np.ndarray) -> np.ndarray:
    """C: per channel, the Pearson correlation of its peaks over the images (NaN when either is constant)."""
    a = peaks - peaks.mean(axis=0)
    b = final - final.mean(axis=0)
    norm = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (a * b).sum(axis=0) / norm
    defined = norm > 0
    result: np.ndarray = np.where(defined, np.clip(value, -1.0, 1.0), np.nan)
    return result


def settled_at(values: Sequence[float], epochs: Sequence[float], threshold: float) -> float | None:
    """The first epoch from which every value is ≥ threshold (None if the last one is not)."""
    settled: float | None = None
    for epoch, value in zip(reversed(epochs), reversed(values), strict=True):
        if not value >= threshold:  # NaN counts as not settled
            break
        settled = epoch
    return settled


def conv_layers(engine: Any) -> list[str]:
    """The model's Conv2d layers with a 4-D output, in forward order."""
    modules = dict(engine.model.module.named_modules())
    return [info.name for info in engine.layers() if isinstance(modules.get(info.name), nn.Conv2d)]


@dataclass
class ConvergenceResult:
    document: dict[str, Any]
    markdown: str


def feature_convergence(
    checkpoints: Sequence[Checkpoint],
    images: ImageSet,
    layers: Sequence[str] | None = None,
    *,
    top: int = DEFAULT_TOP,
    threshold: float = DEFAULT_THRESHOLD,
    device: str = "auto",
    batch_size: int = 128,
    title: str | None = None,
    task: Task | None = None,
) -> ConvergenceResult:
    """Top-k overlap and peak correlation of every layer at every checkpoint with the last one's."""
    from convscope.engine import Engine
    from convscope.studies.evolution import resolve_layer_name, weight_drift

    if not checkpoints:
        raise InvalidRequestError("no checkpoints to compare")
    if not 1 <= top <= len(images):
        raise InvalidRequestError(f"top {top} needs between 1 and {len(images)} images")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidRequestError(f"the threshold must be between 0 and 1, not {threshold}")
    began = time.perf_counter()
    last = Engine(load_checkpoint(checkpoints[-1].path), device_name=device, cache_size=1)
    names = [resolve_layer_name(last, name) for name in layers] if layers else conv_layers(last)
    if not names:
        raise InvalidRequestError("no layers to compare")
    for name in names:
        last.layer(name)  # NotFoundError for an unknown or non-4-D layer
    final = channel_peaks(last, images, names, batch_size)
    del last

    overlap: dict[str, list[float]] = {name: [] for name in names}
    correlation: dict[str, list[float]] = {name: [] for name in names}
    undefined: dict[str, list[int]] = {name: [] for name in names}
    for step, run_checkpoint in enumerate(checkpoints):
        if step == len(checkpoints) - 1:
            peaks = final
        else:
            engine = Engine(load_checkpoint(run_checkpoint.path), device_name=device, cache_size=1)
            peaks = channel_peaks(engine, images, names, batch_size)
            del engine
        for name in names:
            overlap[name].append(float(top_overlap(peaks[name], final[name], top).mean()))
            r = peak_correlation(peaks[name], final[name])
            defined = r[np.isfinite(r)]
            correlation[name].append(float(defined.mean()) if len(defined) else float("nan"))
            undefined[name].append(int(len(r) - len(defined)))
        checkpoint(task, step + 1, len(checkpoints), "convergence")

    epochs = [c.epoch for c in checkpoints]
    values = {"overlap": overlap, "correlation": correlation}
    document: dict[str, Any] = {
        "study": "convergence",
        "version": FORMAT_VERSION,
        "finished": True,
        "title": title or "Feature convergence",
        "epochs": epochs,
        "checkpoints": [c.path.name for c in checkpoints],
        "layers": names,
        "channels": {name: int(final[name].shape[1]) for name in names},
        "top": top,
        "threshold": threshold,
        "overlap": [overlap[name] for name in names],
        "correlation": [[v if np.isfinite(v) else None for v in correlation[name]] for name in names],
        "undefined_correlations": [undefined[name] for name in names],
        "settled": {
            measure: {name: settled_at(values[measure][name], epochs, threshold) for name in names}
            for measure in MEASURES
        },
        "drift": weight_drift(checkpoints),
        "images": {"dataset": images.name, "count": len(images)},
        "seconds": time.perf_counter() - began,
    }
    return ConvergenceResult(document, convergence_markdown(document))


def convergence_markdown(document: dict[str, Any]) -> str:
    """Two layer × epoch tables (top-k overlap, correlation) and the epoch each layer settled."""
    from convscope.studies.train import epoch_label

    epochs = [epoch_label(e) for e in document["epochs"]]
    short = [name.rsplit(".", 1)[-1] for name in document["layers"]]
    k = document["top"]

    def table(rows: list[list[float | None]]) -> str:
        body = [[name, *("–" if v is None else f"{v:.2f}" for v in row)] for name, row in zip(short, rows, strict=True)]
        return markdown_table(["Layer", *epochs], body)

    settled = document["settled"]
    summary = [
        [
            name,
            *("–" if settled[m][full] is None else epoch_label(settled[m][full]) for m in MEASURES),
        ]
        for name, full in zip(short, document["layers"], strict=True)
    ]
    threshold = document["threshold"]
    return (
        f"# {document['title']}\n\n"
        f"Top-{k} overlap with the final checkpoint's top {k} (mean over channels; epochs as columns):\n\n"
        + table(document["overlap"])
        + "\nCorrelation of each channel's peaks over the images with the final checkpoint's (mean over channels):\n\n"
        + table(document["correlation"])
        + f"\nSettled (first epoch from which the measure stays ≥ {threshold:.2f}):\n\n"
        + markdown_table(["Layer", f"top-{k} overlap", "correlation"], summary)
        + f"\n{document['images']['count']} images of {document['images']['dataset']}.\n"
    )
