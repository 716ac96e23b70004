"""The `train`, `evolution`, `ablate`, `probe`, `stride` and `convergence` commands, called from `convscope.cli`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convscope.arguments import pick
from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.tasks import ConsoleTask


def _echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise InvalidRequestError(f"{what} must be comma-separated integers, not {text!r}") from None


def train_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from convscope.studies.train import TrainConfig

    values: dict[str, Any] = {
        "arch": args.arch,
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "lr_patience": args.lr_patience,
        "dropout": args.dropout,
        "radius": args.radius,
        "remove": tuple(part for part in (getattr(args, "remove", None) or "").split(",") if part.strip()),
        "widths": _int_list(args.widths, "--widths"),
        "fc_width": args.fc_width,
        "input_size": args.size,
        "init": args.init,
        "augment": not args.no_augment,
        "val_fraction": args.val_fraction,
        "limit": args.limit,
        "seed": args.seed,
        "checkpoint_epochs": getattr(args, "checkpoints", "all"),
        "first_layer": getattr(args, "first_layer", None) or "zf",
    }
    values.update(overrides)
    return TrainConfig(**values)


def train_main(args: argparse.Namespace) -> int:
    from convscope.studies.train import train

    _threads(args)
    config = train_config(args)
    with ConsoleTask("train", unit="batch") as task:
        result = train(config, args.out, device=args.device, resume=not args.no_resume, task=task, echo=_echo)
    final = result.final
    top5 = f", top-5 {final['val']['top5']:.3f}" if final["val"]["top5"] is not None else ""
    print(
        f"{config.arch} on {config.data}: {config.epochs} epochs ({len(result.trained_epochs)} trained now), "
        f"val top-1 {final['val']['top1']:.3f}{top5}, train top-1 {final['train']['top1']:.3f}; "
        f"{result.log['seconds']:.0f} s of training -> {result.out}"
    )
    return 0


def _output_pair(out: str, image_suffix: str = ".png") -> tuple[Path, Path]:
    """FILE.png or FILE.json (or FILE) -> (FILE.json, FILE.png)."""
    path = Path(out)
    base = path.with_suffix("") if path.suffix.lower() in (".json", ".png", ".md") else path
    return base.with_suffix(".json"), base.with_suffix(image_suffix)


def _run_checkpoints(args: argparse.Namespace) -> list[Any]:
    """The run folder's checkpoints, only those of `--epochs` when given."""
    from convscope.studies.checkpoints import list_checkpoints
    from convscope.studies.train import epoch_label

    checkpoints = list_checkpoints(args.checkpoints)
    if args.epochs:
        try:
            wanted = {epoch_label(float(e)) for e in args.epochs.split(",") if e.strip()}
        except ValueError:
            raise InvalidRequestError(f"--epochs must be comma-separated numbers, not {args.epochs!r}") from None
        checkpoints = [c for c in checkpoints if c.label in wanted]
        if not checkpoints:
            raise InvalidRequestError(f"none of epochs {args.epochs} has a checkpoint in {args.checkpoints}")
    return checkpoints


def _run_images(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[Any, bool]:
    """The `--images` set, cut to the run's `--split` when it is the run's own data, then `--limit`;
    and whether it was the run's data."""
    from convscope.studies.data import dataset_id, load_dataset, stratified_subset
    from convscope.studies.train import TrainConfig, select_split

    images = load_dataset(args.images)
    same_data = meta.get("dataset") == dataset_id(args.images)
    run = TrainConfig.from_dict(meta["train"]) if same_data and isinstance(meta.get("train"), dict) else TrainConfig()
    images = select_split(images, run, args.split if same_data else "all")
    if args.limit:
        images = images.subset(stratified_subset(images.labels, args.limit, seed=args.seed))
    return images, same_data


def evolution_main(args: argparse.Namespace) -> int:
    from convscope.studies.checkpoints import run_metadata
    from convscope.studies.data import dataset_id
    from convscope.studies.evolution import feature_evolution, parse_layers
    from convscope.studies.store import write_json

    _threads(args)
    checkpoints = _run_checkpoints(args)
    meta = run_metadata(args.checkpoints)
    images, same_data = _run_images(args, meta)
    json_path, png_path = _output_pair(args.out)
    title = f"Feature evolution (Fig. 4): {meta.get('arch', 'zfnet')} on {dataset_id(args.images)}"
    with ConsoleTask("evolution", unit="ckpt", total=len(checkpoints)) as task:
        flags = pick(args, "per_layer", "seed", "crop", "color", "tile", "device")
        result = feature_evolution(checkpoints, images, parse_layers(args.layers), title=title, task=task, **flags)
    document = result.document
    document["image"] = png_path.name
    document["images"]["split"] = args.split if same_data else "all"
    try:
        png_path.parent.mkdir(parents=True, exist_ok=True)
        result.montage.save(png_path)
        write_json(json_path, document)
    except OSError as exc:
        raise ConvscopeError(f"cannot write {json_path}: {exc.strerror or exc}") from None
    shape = document["shape"]
    print(
        f"{shape['rows']} feature maps × {shape['cols']} checkpoints over {len(images)} images "
        f"in {document['seconds']:.1f}s -> {png_path}, {json_path}"
    )
    return 0


def ablate_main(args: argparse.Namespace) -> int:
    from convscope.studies.ablation import ablate, parse_variants

    _threads(args)
    variants = parse_variants(args.variants)
    config = train_config(args)
    with ConsoleTask("train", unit="batch") as task:
        result = ablate(config, variants, args.out, seeds=args.seeds, device=args.device, task=task, echo=_echo)
    print(result.markdown, end="")
    print(f"-> {Path(args.out) / 'ablation.json'}, {Path(args.out) / 'ablation.md'}")
    return 0


def probe_main(args: argparse.Namespace) -> int:
    from convscope.engine import Engine
    from convscope.models.preprocessing import model_options
    from convscope.studies.data import load_dataset, stratified_subset
    from convscope.studies.probe import CLASSIFIERS, load_probe_model, probe

    _threads(args)
    classifiers = [c.strip() for c in args.classifiers.split(",") if c.strip()]
    for kind in classifiers:
        if kind not in CLASSIFIERS:
            raise InvalidRequestError(f"unknown classifier {kind!r}; use svm, softmax or both")
    images = load_dataset(args.data)
    if args.limit:
        images = images.subset(stratified_subset(images.labels, args.limit, seed=args.seed))
    options = model_options(args)
    model = load_probe_model(args.model, args.weights, options["input_size"], options["preprocessing"])
    engine = Engine(model, device_name=args.device)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    json_path, md_path = _output_pair(args.out, ".md")
    with ConsoleTask("features", unit="img", total=len(images)) as task:
        flags = pick(args, "folds", "seed", "pool", "pool_mode", "batch_size", "weights")
        result = probe(
            engine,
            images,
            layers,
            classifiers=classifiers,
            c=args.C,
            model_name=args.model,
            task=task,
            echo=_echo,
            **flags,
        )
    result.document["markdown"] = md_path.name
    _write_study(json_path, md_path, result.markdown, result.document)
    return 0


def _write_study(json_path: Path, md_path: Path, markdown: str, document: dict[str, Any], *more: Path) -> None:
    """Write a study's Markdown table and its JSON; print the table and where they (and `more`) went."""
    from convscope.studies.store import write_json, write_text

    try:
        write_text(md_path, markdown)
        write_json(json_path, document)
    except OSError as exc:
        raise ConvscopeError(f"cannot write {json_path}: {exc.strerror or exc}") from None
    print(markdown, end="")
    print("-> " + ", ".join(str(path) for path in (json_path, md_path, *more)))


def convergence_main(args: argparse.Namespace) -> int:
    from convscope.studies.checkpoints import run_metadata
    from convscope.studies.convergence import feature_convergence
    from convscope.studies.data import dataset_id

    _threads(args)
    checkpoints = _run_checkpoints(args)
    meta = run_metadata(args.checkpoints)
    images, same_data = _run_images(args, meta)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    json_path, md_path = _output_pair(args.out, ".md")
    title = f"Feature convergence (Fig. 4): {meta.get('arch', 'zfnet')} on {dataset_id(args.images)}"
    with ConsoleTask("convergence", unit="ckpt", total=len(checkpoints)) as task:
        flags = pick(args, "top", "threshold", "batch_size", "device")
        result = feature_convergence(checkpoints, images, layers, title=title, task=task, **flags)
    document = result.document
    document["markdown"] = md_path.name
    document["images"]["split"] = args.split if same_data else "all"
    _write_study(json_path, md_path, result.markdown, document)
    return 0


def stride_main(args: argparse.Namespace) -> int:
    from convscope.studies.stride import parse_first_layers, stride_study

    _threads(args)
    names = parse_first_layers(args.first_layers)
    config = train_config(args)
    out = Path(args.out)
    with ConsoleTask("train", unit="batch") as task:
        result = stride_study(config, out, names, device=args.device, resume=not args.no_resume, task=task, echo=_echo)
    try:
        for name, mosaic in result.mosaics.items():
            mosaic.save(out / f"stride-{name}.png")
        result.combined.save(out / "stride.png")
    except OSError as exc:
        raise ConvscopeError(f"cannot write into {out}: {exc.strerror or exc}") from None
    _write_study(out / "stride.json", out / "stride.md", result.markdown, result.document, out / "stride.png")
    return 0
