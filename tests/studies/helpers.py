"""A folder of small but real finished studies (training, evolution, ablation, probe) for
the API and dashboard tests: generated once per test process, copied for each user."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from convscope.engine import Engine
from convscope.studies.ablation import ablate, parse_variants
from convscope.studies.checkpoints import list_checkpoints
from convscope.studies.data import ImageSet, load_dataset, stratified_subset
from convscope.studies.evolution import feature_evolution, parse_layers
from convscope.studies.probe import load_probe_model, probe
from convscope.studies.store import write_json, write_text
from convscope.studies.train import TrainConfig, train

EVOLUTION_ROWS = 4  # 2 channels of conv1 and conv2
EVOLUTION_COLS = 3  # checkpoints at epochs 0.5, 1, 2
ABLATION_VARIANTS = "full;-6,7;-3,4,6,7"


def digits_subset(count: int, seed: int) -> ImageSet:
    """A stratified subset of scikit-learn's digits (`count` images)."""
    data = load_dataset("digits")
    return data.subset(stratified_subset(data.labels, count, seed=seed))


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside, as before after. Every training in the studies' tests runs on one
    thread: a float sum's order depends on the thread count, so two runs compared for equality must
    share it, and module fixtures run before the per-test `one_torch_thread`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_digits(folder: Path, digits: ImageSet, **config: Any) -> Path:
    """A short real training run of `TrainConfig(data="digits", **config)` on `digits` into `folder`."""
    with one_thread():
        train(TrainConfig(data="digits", **config), folder, data=digits)
    return folder


@lru_cache(maxsize=1)
def _generated() -> Path:
    with one_thread():
        root = Path(tempfile.mkdtemp(prefix="convscope-studies-"))
        digits = load_dataset("digits")
        digits = digits.subset(stratified_subset(digits.labels, 200, seed=0))
        run = root / "digits-run"
        train(TrainConfig(data="digits", epochs=2, checkpoint_epochs="0.5,all"), run, data=digits)

        evolution = feature_evolution(
            list_checkpoints(run), digits.subset(range(80)), parse_layers("conv1,conv2"), per_layer=2, tile=48
        )
        evolution.document["image"] = "digits-evolution.png"
        evolution.montage.save(root / "digits-evolution.png")
        write_json(root / "digits-evolution.json", evolution.document)

        faces = load_dataset("faces")
        faces = faces.subset(stratified_subset(faces.labels, 60, seed=0))
        ablate(
            TrainConfig(data="faces", epochs=1),
            parse_variants(ABLATION_VARIANTS),
            root / "faces-ablation",
            data=faces,
        )

        engine = Engine(load_probe_model("zfnet-small", str(run / "epoch-2.pt")), device_name="cpu")
        result = probe(engine, digits.subset(stratified_subset(digits.labels, 60, seed=0)), folds=2)
        result.document["markdown"] = "digits-probe.md"
        write_text(root / "digits-probe.md", result.markdown)
        write_json(root / "digits-probe.json", result.document)

        (root / "unfinished.json").write_text('{"study": "probe", "finished": false}')
        (root / "notes.json").write_text('{"hello": "not a study"}')
        (root / "broken.json").write_text("{not json")
        return root


def make_studies(target: Path) -> Path:
    """A copy of the generated studies folder at `target`."""
    shutil.copytree(_generated(), target)
    return target
