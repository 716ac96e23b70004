"""Training the ZF family as the paper does (§3), on small real datasets.

SGD with momentum 0.9 and learning rate 1e-2, divided by 10 when the validation
loss plateaus (the paper anneals it by hand); dropout 0.5 on fc6/fc7; after every
step each conv filter whose RMS exceeds 0.1 is rescaled to 0.1; random crops
(translations of up to S·16/224 pixels, the paper's 224-of-256) and horizontal
flips where they keep the class.

An output folder holds:

- `model.json`: the architecture (`ZFNet.config`), classes, preprocessing, the run's settings;
- `epoch-E.pt`: plain state dicts (`--weights`-loadable) at the chosen epochs (fractions
  such as 0.25 are early checkpoints inside the first epochs, as for the paper's Fig. 4);
- `state.pt`: model, optimizer, scheduler after the last finished epoch (for resuming);
- `log.json`: loss and accuracy per epoch, the checkpoints, timings (a `training` study).

Every epoch seeds its own random numbers (data order, crops, dropout) from the run's
seed and the epoch number, so a resumed run takes the same path as an uninterrupted one.
A `convscope.tasks.Task` sees progress in batches; a stop request ends the run at the
next batch with `Cancelled`, leaving the folder as it was after the last finished
epoch (early checkpoints of the unfinished epoch are removed), so resuming continues
from there. Every file is written atomically (`convscope.fileio`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import InvalidRequestError
from convscope.fileio import atomic_write
from convscope.models.spec import IMAGENET_MEAN, IMAGENET_STD
from convscope.models.zfnet import (
    CONFIG_FILE,
    FIRST_LAYERS,
    SMALL_FC_WIDTH,
    SMALL_INPUT_SIZE,
    SMALL_WIDTHS,
    ZF_WIDTHS,
    ZFNet,
    removable_layers,
    renormalise_filters,
)
from convscope.studies.data import ImageSet, dataset_id, load_dataset, normalise_batch, split_indices
from convscope.studies.store import FORMAT_VERSION, write_json
from convscope.tasks import Cancelled, Task, as_task

ARCHS = ("zfnet", "zfnet-small")
INITS = ("kaiming", "paper", "torch")
STATE_FILE = "state.pt"
LOG_FILE = "log.json"
Echo = Callable[[str], None]


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved in model.json and log.json)."""

    arch: str = "zfnet-small"
    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_patience: int = 2  # epochs without a better validation loss before lr /= 10
    dropout: float = 0.5
    radius: float = 0.1  # filter RMS renormalisation radius (0: off)
    remove: tuple[str, ...] = ()
    widths: tuple[int, ...] | None = None
    fc_width: int | None = None
    input_size: int | None = None
    init: str = "kaiming"  # "kaiming" (He normal), "paper" (N(0, 0.01²), zero biases) or "torch" (PyTorch's)
    augment: bool = True
    val_fraction: float = 0.2
    limit: int | None = None  # use a stratified subset of this many images (quick runs)
    seed: int = 0
    checkpoint_epochs: str = "all"  # "all", "none", or a list such as "0.25,0.5,1,2,5,10"
    first_layer: str = "zf"  # "zf" (7×7/2) or "alexnet" (11×11/4, conv2 at stride 1; the paper's Fig. 6)

    # fields that may change when a run is resumed
    RESUMABLE_CHANGES = ("epochs", "checkpoint_epochs")

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InvalidRequestError(f"unknown architecture {self.arch!r}; use {' or '.join(ARCHS)}")
        if self.epochs < 1:
            raise InvalidRequestError("epochs must be at least 1")
        if self.batch_size < 1 or self.lr <= 0:
            raise InvalidRequestError("batch size and learning rate must be positive")
        if self.init not in INITS:
            raise InvalidRequestError(f"unknown init {self.init!r}; use {', '.join(INITS)}")
        if self.first_layer not in FIRST_LAYERS:
            raise InvalidRequestError(f"unknown first layer {self.first_layer!r}; use {' or '.join(FIRST_LAYERS)}")
        try:
            self.remove = removable_layers(self.remove)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
            if len(self.widths) != 5 or min(self.widths) < 1:
                raise InvalidRequestError("widths needs five positive channel counts (conv1..conv5)")
        parse_checkpoint_epochs(self.checkpoint_epochs, self.epochs)

    @property
    def resolved_widths(self) -> tuple[int, ...]:
        return self.widths or (SMALL_WIDTHS if self.arch == "zfnet-small" else ZF_WIDTHS)

    @property
    def resolved_fc_width(self) -> int:
        return self.fc_width or (SMALL_FC_WIDTH if self.arch == "zfnet-small" else 4096)

    @property
    def resolved_input_size(self) -> int:
        return self.input_size or (SMALL_INPUT_SIZE if self.arch == "zfnet-small" else 224)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["remove"] = list(self.remove)
        data["widths"] = list(self.widths) if self.widths else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["remove"] = tuple(values.get("remove") or ())
        if values.get("widths"):
            values["widths"] = tuple(values["widths"])
        return cls(**values)


def parse_checkpoint_epochs(spec: str, epochs: int) -> list[float]:
    """`all` -> 1..epochs; `none` -> []; `0.5,1,2,all` -> fractions plus every epoch (sorted, ≤ epochs)."""
    chosen: set[float] = set()
    for part in str(spec).replace(";", ",").split(","):
        text = part.strip().lower()
        if not text or text == "none":
            continue
        if text == "all":
            chosen.update(float(e) for e in range(1, epochs + 1))
            continue
        try:
            value = float(text)
        except ValueError:
            raise InvalidRequestError(f"bad checkpoint epoch {part!r}: use numbers, 'all' or 'none'") from None
        if value < 0 or not math.isfinite(value):
            raise InvalidRequestError(f"checkpoint epoch {value} must be 0 or more")
        if value <= epochs:
            chosen.add(value)
    return sorted(chosen)


def epoch_label(epoch: float) -> str:
    """1.0 -> "1", 0.25 -> "0.25" (for file names and tables)."""
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def build_model(config: TrainConfig, num_classes: int) -> ZFNet:
    """The network the config describes, initialised from the run's seed."""
    torch.manual_seed(config.seed)
    try:
        model = ZFNet(
            num_classes=num_classes,
            widths=config.resolved_widths,
            fc_width=config.resolved_fc_width,
            input_size=config.resolved_input_size,
            dropout=config.dropout,
            remove=config.remove,
            first_layer=config.first_layer,
        )
    except RuntimeError as exc:  # an input too small for the topology
        raise InvalidRequestError(
            f"input size {config.resolved_input_size} is too small for the ZF topology: {exc}"
        ) from None
    if config.init != "torch":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    if config.init == "paper":
                        module.weight.normal_(0.0, 0.01)
                    else:
                        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        module.bias.zero_()
    return model


class FastLocalResponseNorm(nn.Module):
    """`nn.LocalResponseNorm`'s arithmetic (zero-padded window of `size` channels, divided by
    `size`) with a running sum over channels: ~2× faster on the CPU than PyTorch's
    avg_pool3d route. Used only while training; the saved model keeps `nn.LocalResponseNorm`."""

    def __init__(self, original: nn.LocalResponseNorm) -> None:
        super().__init__()
        self.original = original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrn = self.original
        size = lrn.size
        padded = F.pad(x * x, (0, 0, 0, 0, size // 2 + 1, (size - 1) // 2))
        running = padded.cumsum(1)
        window = running[:, size:] - running[:, :-size]
        return x / (window * (lrn.alpha / size) + lrn.k).pow(lrn.beta)


def _swap_lrn(model: ZFNet, fast: bool) -> None:
    for name, module in list(model.features.named_children()):
        if fast and isinstance(module, nn.LocalResponseNorm):
            setattr(model.features, name, FastLocalResponseNorm(module))
        elif not fast and isinstance(module, FastLocalResponseNorm):
            setattr(model.features, name, module.original)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- data on the device -------------------------------------------------------------------------
@dataclass
class Tensors:
    """A split as uint8 images and labels on the training device."""

    images: torch.Tensor  # N×3×S×S uint8
    labels: torch.Tensor  # N int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def split_fingerprint(split: Tensors) -> str:
    """SHA-256 of a split's images (as the model sees them, uint8) and labels, in order: two runs
    with the same fingerprint trained on the same pixels with the same labels."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(split.images.cpu().contiguous().numpy().tobytes())
    digest.update(split.labels.cpu().numpy().astype("<i8").tobytes())
    return digest.hexdigest()


@dataclass
class Prepared:
    data: ImageSet
    train_index: np.ndarray
    val_index: np.ndarray
    train: Tensors
    val: Tensors


def prepare_data(config: TrainConfig, device: torch.device, data: ImageSet | None = None) -> Prepared:
    from convscope.studies.data import stratified_subset

    full = data if data is not None else load_dataset(config.data)
    keep = stratified_subset(full.labels, config.limit, seed=config.seed)
    full = full.subset(keep) if len(keep) < len(full) else full
    train_index, val_index = split_indices(full.labels, config.val_fraction, seed=config.seed)
    size = config.resolved_input_size

    def tensors(index: np.ndarray) -> Tensors:
        part = full.subset(index)
        return Tensors(part.uint8_tensor(size).to(device), torch.from_numpy(part.labels).to(device))

    return Prepared(full, train_index, val_index, tensors(train_index), tensors(val_index))


def augment(batch: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translations (replicated borders, up to S·16/224 pixels) and optional flips; float out."""
    size = batch.shape[-1]
    pad = max(1, round(size * 16 / 224))
    padded = F.pad(batch.float(), (pad, pad, pad, pad), mode="replicate")
    n = batch.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    out = torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets)])
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out[mirror.to(out.device)] = out[mirror.to(out.device)].flip(-1)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Tensors,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
) -> dict[str, float | None]:
    """Loss, top-1 and (with ≥ 5 classes) top-5 accuracy, in eval mode, no augmentation."""
    was_training = model.training
    model.eval()
    total_loss, top1, top5, count = 0.0, 0, 0, 0
    classes = 0
    for start in range(0, len(split), batch_size):
        x = normalise_batch(split.images[start : start + batch_size], mean, std)
        y = split.labels[start : start + batch_size]
        logits = model(x)
        classes = logits.shape[1]
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        ranked = logits.topk(min(5, classes), dim=1).indices
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked == y[:, None]).any(dim=1).sum())
        count += len(y)
    model.train(was_training)
    return {
        "loss": total_loss / max(count, 1),
        "top1": top1 / max(count, 1),
        "top5": top5 / max(count, 1) if classes >= 5 else None,
    }


def sgd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    radius: float = 0.1,
    criterion: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One SGD step, then the paper's renormalisation: every conv filter whose RMS now
    exceeds `radius` is scaled back to it (0: off). Returns (loss, logits, filters rescaled)."""
    logits = model(x)
    loss = (criterion or nn.CrossEntropyLoss())(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    rescaled = renormalise_filters(model, radius) if radius > 0 else 0
    return loss.detach(), logits.detach(), rescaled


# ---- the run ----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    model: ZFNet
    log: dict[str, Any]
    resumed_from: int = 0  # the epoch the run continued from (0: a fresh start)
    trained_epochs: list[int] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        final: dict[str, Any] = self.log["final"]
        return final


def _rng_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**62)


def _same_run(saved: dict[str, Any], config: TrainConfig) -> bool:
    mine = config.to_dict()
    ignore = set(TrainConfig.RESUMABLE_CHANGES)
    defaults = TrainConfig().to_dict()  # a field a run's log predates had its default then
    return all(saved.get(k, defaults[k]) == v for k, v in mine.items() if k not in ignore)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidRequestError(f"cannot resume from {path}: {exc}") from None
    return state


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    device: str = "auto",
    resume: bool = True,
    task: Task | None = None,
    echo: Echo | None = None,
    data: ImageSet | None = None,
) -> TrainResult:
    """Train (or continue training) into `out`; see the module docstring for what is written."""
    from convscope.engine.engine import resolve_device

    say = echo or (lambda _text: None)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    prepared = prepare_data(config, torch_device, data)
    classes = prepared.data.classes
    model = build_model(config, len(classes)).to(torch_device)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=config.lr_patience)
    saved_epochs = parse_checkpoint_epochs(config.checkpoint_epochs, config.epochs)

    log: dict[str, Any] = {
        "study": "training",
        "version": FORMAT_VERSION,
        "finished": False,
        "title": f"{config.arch} on {dataset_id(config.data)}"
        + (f" without {','.join(config.remove)}" if config.remove else "")
        + (f", {config.first_layer} first layer" if config.first_layer != "zf" else ""),
        "config": config.to_dict(),
        "architecture": model.config,
        "parameters": count_parameters(model),
        "dataset": {
            **prepared.data.describe(),
            "train": len(prepared.train),
            "val": len(prepared.val),
            "fingerprint": split_fingerprint(prepared.train),
        },
        "device": str(torch_device),
        "epochs": [],
        "checkpoints": [],
        "seconds": 0.0,
    }
    start_epoch = 0
    state_path = folder / STATE_FILE
    if resume and state_path.is_file():
        state = _load_state(state_path)
        previous = _read_log(folder)
        if previous is None or not _same_run(previous.get("config", {}), config):
            raise InvalidRequestError(
                f"{folder} holds a different training run; pass another --out or --no-resume to start over"
            )
        if int(state["epoch"]) > config.epochs:
            raise InvalidRequestError(
                f"{folder} holds a run already trained for {int(state['epoch'])} epochs (> {config.epochs}); "
                "pass another --out or --no-resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        log["epochs"] = [row for row in previous.get("epochs", []) if row["epoch"] <= start_epoch]
        log["checkpoints"] = [c for c in previous.get("checkpoints", []) if c["epoch"] <= start_epoch]
        log["seconds"] = float(previous.get("seconds", 0.0))
        say(f"resuming {folder} after epoch {start_epoch}")
    elif not resume:
        for stale in folder.glob("epoch-*.pt"):
            stale.unlink()
        state_path.unlink(missing_ok=True)

    write_json(
        folder / CONFIG_FILE,
        {
            "architecture": model.config,
            "arch": config.arch,
            "classes": classes,
            "mean": list(mean),
            "std": list(std),
            "dataset": dataset_id(config.data),
            "train": config.to_dict(),
        },
    )

    def save_checkpoint(epoch: float) -> None:
        name = f"epoch-{epoch_label(epoch)}.pt"
        with atomic_write(folder / name) as file:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, file)
        log["checkpoints"] = [c for c in log["checkpoints"] if c["epoch"] != epoch]
        log["checkpoints"].append({"epoch": epoch, "file": name})
        log["checkpoints"].sort(key=lambda c: c["epoch"])

    if start_epoch == 0 and 0.0 in saved_epochs:
        save_checkpoint(0.0)
    trained: list[int] = []
    n_train = len(prepared.train)
    steps = max(1, math.ceil(n_train / config.batch_size))
    criterion = nn.CrossEntropyLoss()
    _swap_lrn(model, fast=True)
    total_steps = steps * (config.epochs - start_epoch)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        began = time.perf_counter()
        seed = _rng_seed(config.seed, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n_train, generator=generator)
        early = {max(1, round((e - (epoch - 1)) * steps)): e for e in saved_epochs if epoch - 1 < e < epoch}
        model.train()
        loss_sum, correct, seen, rescaled = 0.0, 0, 0, 0
        steps_before = steps * (epoch - 1 - start_epoch)
        early_saved = list(log["checkpoints"])
        for step, index in enumerate(order.split(config.batch_size), start=1):
            if task is not None and task.should_stop():
                _drop_unfinished(folder, early_saved, log["checkpoints"])
                raise Cancelled(steps_before + step - 1, total_steps, "training")
            index = index.to(torch_device)
            images = prepared.train.images[index]
            if config.augment:
                images = augment(images, generator, prepared.data.flip)
            x = normalise_batch(images, mean, std)
            y = prepared.train.labels[index]
            loss, logits, count = sgd_step(model, optimizer, x, y, config.radius, criterion)
            rescaled += count
            loss_sum += float(loss) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if step in early:
                save_checkpoint(early[step])
            as_task(task).report(steps_before + step, total_steps)
        val = evaluate(model, prepared.val, mean, std)
        scheduler.step(float(val["loss"] or 0.0))
        seconds = time.perf_counter() - began
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_top1": correct / max(seen, 1),
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": optimizer.param_groups[0]["lr"],
            "rescaled_filters": rescaled,
            "seconds": seconds,
        }
        log["epochs"].append(row)
        log["seconds"] = float(log["seconds"]) + seconds
        if float(epoch) in saved_epochs:
            save_checkpoint(float(epoch))
        with atomic_write(state_path) as file:
            torch.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                file,
            )
        write_json(folder / LOG_FILE, log)
        trained.append(epoch)
        top5 = f" top-5 {row['val_top5']:.3f}" if row["val_top5"] is not None else ""
        say(
            f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f}; "
            f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f}{top5}; {seconds:.1f}s"
        )

    _swap_lrn(model, fast=False)
    log["final"] = {
        "epoch": config.epochs,
        "train": evaluate(model, prepared.train, mean, std),
        "val": evaluate(model, prepared.val, mean, std),
    }
    log["finished"] = True
    write_json(folder / LOG_FILE, log)
    model.eval()
    return TrainResult(folder, model, log, resumed_from=start_epoch, trained_epochs=trained)


def _drop_unfinished(folder: Path, before: list[dict[str, Any]], now: list[dict[str, Any]]) -> None:
    """Remove the early checkpoints an unfinished (cancelled) epoch wrote: the log never listed them."""
    kept = {c["file"] for c in before}
    for entry in now:
        if entry["file"] not in kept:
            (folder / entry["file"]).unlink(missing_ok=True)
    now[:] = before


def _read_log(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads((folder / LOG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_with(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy with some fields changed (validated again)."""
    return replace(config, **changes)


SPLITS = ("train", "val", "all")


def select_split(data: ImageSet, config: TrainConfig, which: str) -> ImageSet:
    """The images a run trained on (`train`), held out (`val`), or all of them (`all`),
    with the run's own subset and split (same seed, same fraction)."""
    from convscope.studies.data import stratified_subset

    if which not in SPLITS:
        raise InvalidRequestError(f"unknown split {which!r}; use {', '.join(SPLITS)}")
    keep = stratified_subset(data.labels, config.limit, seed=config.seed)
    data = data.subset(keep) if len(keep) < len(data) else data
    if which == "all":
        return data
    train_index, val_index = split_indices(data.labels, config.val_fraction, seed=config.seed)
    return data.subset(train_index if which == "train" else val_index)
