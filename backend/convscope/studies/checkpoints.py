"""Trained checkpoints as loaded models: a run folder's `epoch-E.pt` files with its model.json."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from convscope.errors import NotFoundError
from convscope.models.spec import IMAGENET_MEAN, IMAGENET_STD, LoadedModel
from convscope.models.zfnet import CONFIG_FILE, load_zfnet_checkpoint

_EPOCH_FILE = re.compile(r"^epoch-(\d+(?:\.\d+)?)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    epoch: float
    path: Path

    @property
    def label(self) -> str:
        from convscope.studies.train import epoch_label

        return epoch_label(self.epoch)


def run_metadata(folder: str | Path) -> dict[str, Any]:
    """The run's model.json (architecture, classes, mean/std, training settings), or {}."""
    try:
        data = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """The run's `epoch-E.pt` files, in epoch order."""
    base = Path(folder)
    if not base.is_dir():
        raise NotFoundError(f"no checkpoint folder {base}")
    found = []
    for path in base.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found.append(Checkpoint(float(match.group(1)), path))
    if not found:
        raise NotFoundError(f"no epoch-E.pt checkpoints in {base} (write them with `convscope train`)")
    return sorted(found, key=lambda c: c.epoch)


def load_checkpoint(path: str | Path, name: str | None = None) -> LoadedModel:
    """A trained ZFNet checkpoint as a `LoadedModel` with its own classes and preprocessing."""
    file = Path(path)
    meta = run_metadata(file.parent)
    module = load_zfnet_checkpoint(file)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    classes = [str(c) for c in meta.get("classes", [])]
    fc8 = module.classifier.fc8
    num_classes = int(fc8.out_features) if isinstance(fc8, nn.Linear) else len(classes)
    if len(classes) != num_classes:
        classes = [f"class {i}" for i in range(num_classes)]
    return LoadedModel(
        name=name or f"{meta.get('arch', 'zfnet')}:{file.stem}",
        module=module,
        labels=classes,
        input_size=int(module.input_size),
        mean=tuple(meta.get("mean", IMAGENET_MEAN)),
        std=tuple(meta.get("std", IMAGENET_STD)),
        pretrained=True,
        description=f"trained checkpoint {file}",
    )
