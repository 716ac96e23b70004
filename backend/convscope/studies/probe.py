"""Per-layer linear probe (the paper's Table 7).

Features of each chosen layer are spatially pooled to a fixed p×p grid (adaptive
average or max pooling; vectors from fully connected layers are used as they are),
then a linear SVM and a softmax (multinomial logistic regression) classifier from
scikit-learn, each after per-feature standardisation, are scored with stratified
k-fold cross-validation: accuracy per layer as mean ± std over the folds.

It works for any registered model (the pretrained default `efficientnet_lite0`
included) and for trained ZF checkpoints (`convscope train`), whose own input size,
classes and preprocessing are read from the model.json beside them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.layer_names import resolve_name
from convscope.models.spec import LoadedModel
from convscope.studies.data import ImageSet, stratified_folds
from convscope.studies.store import FORMAT_VERSION, markdown_table, mean_std, pct
from convscope.tasks import Cancelled, Task, checkpoint

CLASSIFIERS = ("svm", "softmax")
# Inverse regularisation per classifier. The SVM's is 0.1: on standardised features of
# high-dimensional layers (EfficientNet's 5,120-long pooled head, 1,437 digits) liblinear
# did not converge in 1,000 iterations with C=1 (130 s per fold), with 0.1 it did in ~180
# (20 s), at the same accuracy (measured).
DEFAULT_C = {"svm": 0.1, "softmax": 1.0}
POOL_MODES = ("avg", "max")
MAX_DEFAULT_LAYERS = 10
_SKIP_KINDS = ("Conv", "Linear", "Identity", "Dropout", "Flatten")


def load_probe_model(
    model: str,
    weights: str | None = None,
    input_size: int | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """A registry model (`load_model`), or a trained ZF checkpoint with its own settings."""
    from convscope.models import load_model

    if model in ("zfnet", "zfnet-small") and weights is not None:
        from convscope.studies.checkpoints import load_checkpoint, run_metadata

        if run_metadata(Path(weights).parent) or model == "zfnet-small":
            loaded = load_checkpoint(weights)
            if input_size is not None and input_size != loaded.input_size:
                raise InvalidRequestError(
                    f"{weights} was trained at {loaded.input_size}×{loaded.input_size}; leave --size out"
                )
            return loaded
    return load_model(model, weights=weights, input_size=input_size, preprocessing=preprocessing)


def _named_modules(module: nn.Module) -> dict[str, nn.Module]:
    return {name: child for name, child in module.named_modules() if name}


def resolve_module_name(module: nn.Module, name: str) -> str:
    """Exact module name, or the single module named `….name` (`relu1` -> `features.relu1`)."""
    return resolve_name(name, _named_modules(module), what="module")


def default_layers(engine: Engine) -> list[str]:
    """ZF nets: relu1..relu5 and relu6, relu7 (the paper's layers 1-7, those present).
    Other models: the top-level stages (containers opened one level), without bare
    convolutions, identities and global pools; at most 10, evenly spaced."""
    modules = _named_modules(engine.model.module)
    zf = [f"features.relu{i}" for i in range(1, 6)] + [f"classifier.relu{i}" for i in (6, 7)]
    if "features.conv1" in modules and "classifier.fc8" in modules:
        return [name for name in zf if name in modules]
    infos = {info.name: info for info in engine.layers()}
    picked: list[str] = []
    for name, child in engine.model.module.named_children():
        candidates = [name]
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            candidates = [f"{name}.{sub}" for sub, _ in child.named_children()]
        for candidate in candidates:
            info = infos.get(candidate)
            if info is None or any(kind in info.kind for kind in _SKIP_KINDS):
                continue
            if info.height == 1 and info.width == 1:
                continue
            picked.append(candidate)
    if not picked:
        picked = [info.name for info in engine.layers()]
    if len(picked) > MAX_DEFAULT_LAYERS:
        spots = np.linspace(0, len(picked) - 1, MAX_DEFAULT_LAYERS).round().astype(int)
        picked = [picked[i] for i in sorted(set(spots.tolist()))]
    return picked


@torch.no_grad()
def extract_features(
    engine: Engine,
    images: ImageSet,
    layers: Sequence[str],
    *,
    pool: int = 2,
    pool_mode: str = "avg",
    batch_size: int = 32,
    task: Task | None = None,
) -> dict[str, np.ndarray]:
    """N×D float32 features per layer: 4-D outputs pooled to pool×pool, 2-D ones as they are.

    Through `Engine.infer`: each tap pools (and so copies) the output at once, so an
    in-place ReLU further down cannot change what was recorded."""
    if pool < 1:
        raise InvalidRequestError("pool must be at least 1")
    if pool_mode not in POOL_MODES:
        raise InvalidRequestError(f"unknown pool mode {pool_mode!r}; use avg or max")
    from convscope.engine.capture import Tap

    def pooled(value: torch.Tensor) -> torch.Tensor:
        value = value.float()
        if value.dim() == 4:
            value = (F.adaptive_avg_pool2d if pool_mode == "avg" else F.adaptive_max_pool2d)(value, pool)
        return value.flatten(1).cpu().clone()

    taps = {name: Tap(name, reduce=pooled) for name in layers}
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    done = 0
    mean, std = engine.model.mean, engine.model.std
    for batch in images.batches(engine.input_size, mean, std, batch_size):  # prepared outside the lock
        _, tapped = engine.infer(batch, taps.values())  # the engine's lock: this batch only
        for name, tap in taps.items():
            if tap not in tapped:
                raise InvalidRequestError(f"layer {name!r} produced no tensor output")
            chunks[name].append(tapped[tap])
        done += len(batch)
        checkpoint(task, done, len(images), "probe features")
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def _classifier(kind: str, seed: int, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=seed))
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    kind: str,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    seed: int,
    c: float,
) -> list[float]:
    """Accuracy on each fold. BLAS runs on one thread: these problems are small, and on a
    shared CPU more threads made the softmax fits ~40× slower (measured)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    scores = []
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in folds:
            classifier = _classifier(kind, seed, c)
            classifier.fit(features[train], labels[train])
            scores.append(float((classifier.predict(features[test]) == labels[test]).mean()))
    return scores


@dataclass
class ProbeResult:
    document: dict[str, Any]
    markdown: str


def probe(
    engine: Engine,
    images: ImageSet,
    layers: Sequence[str] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    pool: int = 2,
    pool_mode: str = "avg",
    classifiers: Sequence[str] = CLASSIFIERS,
    c: float | None = None,
    batch_size: int = 32,
    title: str | None = None,
    model_name: str | None = None,
    weights: str | None = None,
    task: Task | None = None,
    echo: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Table 7 for one model and image set: k-fold accuracy per layer and classifier."""
    say = echo or (lambda _text: None)
    for kind in classifiers:
        if kind not in CLASSIFIERS:
            raise InvalidRequestError(f"unknown classifier {kind!r}; use svm or softmax")
    if not classifiers:
        raise InvalidRequestError("no classifiers chosen")
    chosen = [resolve_module_name(engine.model.module, name) for name in layers] if layers else default_layers(engine)
    split = stratified_folds(images.labels, folds, seed)
    began = time.perf_counter()
    features = extract_features(
        engine, images, chosen, pool=pool, pool_mode=pool_mode, batch_size=batch_size, task=task
    )
    feature_seconds = time.perf_counter() - began
    rows = []
    fit_began = time.perf_counter()
    for name in chosen:
        if task is not None and task.should_stop():  # the fits can take long: stop between layers
            raise Cancelled(len(images), len(images), "probe")
        row: dict[str, Any] = {"layer": name, "short": name.rsplit(".", 1)[-1], "dims": int(features[name].shape[1])}
        for kind in classifiers:
            scores = cross_validate(
                features[name], images.labels, kind, split, seed, DEFAULT_C[kind] if c is None else c
            )
            row[kind] = {**mean_std(scores), "folds": scores}
        rows.append(row)
        say(f"{name}: " + ", ".join(f"{kind} {pct(row[kind])}%" for kind in classifiers))
    counts = np.bincount(images.labels, minlength=images.num_classes)
    document: dict[str, Any] = {
        "study": "probe",
        "version": FORMAT_VERSION,
        "finished": True,
        "title": title or f"Linear probe (Table 7): {model_name or engine.name} on {images.name}",
        "model": model_name or engine.name,
        "weights": weights,
        "pretrained": engine.model.pretrained,
        "dataset": images.name,
        "images": len(images),
        "classes": images.classes,
        "chance": float(counts.max() / counts.sum()),
        "input_size": engine.input_size,
        "pool": pool,
        "pool_mode": pool_mode,
        "folds": folds,
        "seed": seed,
        "c": {kind: DEFAULT_C[kind] if c is None else c for kind in classifiers},
        "classifiers": list(classifiers),
        "layers": rows,
        "seconds": {"features": feature_seconds, "fit": time.perf_counter() - fit_began},
        "device": str(engine.device),
    }
    markdown = probe_markdown(document)
    return ProbeResult(document, markdown)


def probe_markdown(document: dict[str, Any]) -> str:
    names = {"svm": "Linear SVM", "softmax": "Softmax"}
    header = ["Layer", "Features", *[f"{names[k]} acc %" for k in document["classifiers"]]]
    rows = [
        [row["layer"], str(row["dims"]), *[pct(row[k]) for k in document["classifiers"]]] for row in document["layers"]
    ]
    seconds = document["seconds"]
    note = (
        f"{document['title']}: {document['images']} images, {document['input_size']}×{document['input_size']} input, "
        f"features {document['pool_mode']}-pooled to {document['pool']}×{document['pool']}, "
        f"{document['folds']}-fold stratified CV (seed {document['seed']}), mean ± std over folds; "
        + "".join(f"{kind} C={value:g}; " for kind, value in document["c"].items())
        + f"chance {100 * document['chance']:.1f}%; features {seconds['features']:.0f} s, fits {seconds['fit']:.0f} s.\n\n"
    )
    return note + markdown_table(header, rows)
