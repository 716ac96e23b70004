"""The `convscope` command line (docs/architecture.md).

Problems that are the user's (unknown model or layer, channel out of range,
unreadable image, missing weights) exit with status 2 and one line naming the
problem, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from convscope.errors import ConvscopeError

EXIT_USAGE = 2


class CliError(ConvscopeError):
    """A bad command-line value found after parsing."""


def _load_engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from convscope.engine import Engine
    from convscope.models import load_model
    from convscope.models.preprocessing import model_options

    model = load_model(args.model, weights=args.weights, **model_options(args))
    return Engine(model, device_name=getattr(args, "device", "auto"))


def _load_image(args: argparse.Namespace, engine):  # type: ignore[no-untyped-def]
    from convscope.images import load_image_file

    return engine.prepare(load_image_file(args.image))


def _json(model: Any, exclude_none: bool = False) -> Any:
    """The JSON value of an API schema object (or a list of them): the API's own serialisation."""
    from pydantic import RootModel

    return RootModel[Any](model).model_dump(mode="json", exclude_none=exclude_none)


def cmd_predict(args: argparse.Namespace) -> int:
    from convscope.api.schemas import PredictionResponse

    engine = _load_engine(args)
    predictions = engine.predict(_load_image(args, engine), top=args.top)
    rows = _json([PredictionResponse.from_prediction(p) for p in predictions])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['probability']:7.2%}  {row['index']:4d}  {row['label']}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from convscope.api.schemas import LayerResponse

    engine = _load_engine(args)
    layers = [
        LayerResponse.from_info(info) for info in engine.projection_starts()
    ]  # 4-D layers, then linear ones and logits
    if args.json:
        print(json.dumps(_json(layers, exclude_none=True), indent=2))  # as GET .../layers
        return 0
    for layer in layers:
        shape = f"{layer.channels:5d}×{layer.height}×{layer.width}"
        rf, uncovered = layer.receptive_field, layer.rules.uncovered
        switches = "switches" if layer.has_switches else "no switches"
        missing = f"  NO RULE for {', '.join(uncovered)} (plain derivative in every mode)" if uncovered else ""
        print(f"{layer.name:40s} {layer.kind:22s} {shape}  rf {rf.size}/{rf.stride}  {switches}{missing}")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    import numpy as np

    from convscope.engine.render import projection_image

    engine = _load_engine(args)
    image = _load_image(args, engine)
    result = engine.project(image, args.layer, args.channel, mode=args.mode, select=args.select)
    out = Path(args.out)
    try:
        projection_image(result.projection).save(out)
        if args.raw:
            with open(args.raw, "wb") as raw:
                np.savez(
                    raw,
                    input=image.tensor.numpy().astype(np.float32),
                    projection=result.projection.numpy().astype(np.float32),
                    seed_value=np.float32(result.seed_value),
                    seed_position=np.array(result.seed_position, dtype=np.int64),
                )
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write output: {exc}") from None
    y, x = result.seed_position
    where = "whole map" if y < 0 else f"(y={y}, x={x})"
    print(
        f"{args.layer} channel {args.channel} {result.mode}/{args.select}: seed {result.seed_value:.4g} at {where} -> {out}"
    )
    if args.verbose:
        memory = engine.memory()
        print(
            f"recorded forward passes: {memory.records}, holding {memory.bytes / 2**20:.1f} MiB"
            f" (bound {memory.limit_bytes / 2**20:.0f} MiB)",
            file=sys.stderr,
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from convscope.api.server import build_settings, run_server

    return run_server(build_settings(args.host, args.port, args.model, args.device, args.insecure))


def cmd_occlude(args: argparse.Namespace) -> int:
    from convscope.api.schemas import OcclusionResponse
    from convscope.arguments import pick
    from convscope.engine.occlusion import occlude, occlusion_grid, occlusion_response
    from convscope.tasks import ConsoleTask

    engine = _load_engine(args)
    image = _load_image(args, engine)
    rows, cols, _ = occlusion_grid(engine.input_size, args.occluder_size, args.stride)  # bad sizes fail fast
    with ConsoleTask("occlude", unit="pos", total=rows * cols) as task:
        flags = pick(args, "stride", "target", "layer", "batch_size", "method", "approx", "adaptive")
        result = occlude(engine, image, size=args.occluder_size, task=task, **flags)
    text = json.dumps(_json(OcclusionResponse.model_validate(occlusion_response(result))))
    if args.json_out == "-":
        print(text)
        summary = sys.stderr
    else:
        try:
            Path(args.json_out).write_text(text + "\n")
        except OSError as exc:
            raise CliError(f"cannot write {args.json_out}: {exc.strerror or exc}") from None
        summary = sys.stdout
    flat = int(result.probability.argmin())
    y, x = result.positions[flat]
    ratio = "" if result.planned_ratio is None else f", planned {result.planned_ratio:.2f} of dense"
    how = f"{result.method}{' (approximate)' if result.approximate else ''}{ratio}"
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    print(
        f"{result.rows}×{result.cols} positions ({result.size}px/{result.stride}px) in {result.seconds:.1f}s, {how}; "
        f"target {result.target} {result.target_label!r}: p={result.unoccluded_probability:.4f} unoccluded, "
        f"lowest {result.probability.flat[flat]:.4f} with the square at (y={y}, x={x}); "
        f"feature {result.layer} channel {result.channel}" + ("" if args.json_out == "-" else f" -> {args.json_out}"),
        file=summary,
    )
    return 0


def _lazy(package: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command `convscope.<package>.commands.<name>`, imported when it runs (the parser stays light)."""

    def run(args: argparse.Namespace) -> int:
        command: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"convscope.{package}.commands"), name
        )
        return command(args)

    return run


def _int_at_least(low: int, words: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (`words` says so when it is not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be {words}")
        return value

    return parse


_positive_int = _int_at_least(1, "at least 1")
_non_negative_int = _int_at_least(0, "0 or more")


def _add_model(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from convscope.models import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=None if required else DEFAULT_MODEL,
        required=required,
        help="registry name (efficientnet_lite0, alexnet, vgg16, resnet50, googlenet, zfnet) or package.module:callable",
    )
    parser.add_argument("--weights", default=None, help="state-dict file (torch.load weights_only=True)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pre = parser.add_argument_group("preprocessing (default: the model's own, timm pretrained_cfg keys)")
    pre.add_argument("--input-size", type=_positive_int, default=None, metavar="S", help="model input side S")
    pre.add_argument("--mean", default=None, metavar="R,G,B", help="per-channel mean of x/255")
    pre.add_argument("--std", default=None, metavar="R,G,B", help="per-channel std of x/255")
    pre.add_argument(
        "--crop-pct", type=float, default=None, help="resize the shorter side to S/crop_pct, then crop S×S (0.1..1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description="A microscope for convolutional networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the REST API and dashboard")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--model", action="append", default=None, help="a model to load (repeatable)")
    serve.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without CONVSCOPE_TOKEN (trusted networks)"
    )
    serve.set_defaults(func=cmd_serve)

    predict = sub.add_parser("predict", help="top classes for an image")
    _add_model(predict)
    predict.add_argument("--image", required=True)
    predict.add_argument("--top", type=_positive_int, default=5)
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    project = sub.add_parser("project", help="deconvnet projection of one feature map to pixel space")
    _add_model(project)
    project.add_argument("--image", required=True)
    project.add_argument("--layer", required=True)
    project.add_argument(
        "--channel", type=int, required=True, help="channel; for logits and linear layers the unit (class) index"
    )
    project.add_argument(
        "--mode",
        default="deconvnet",
        choices=["deconvnet", "guided", "gradient", "auto"],
        help="auto: deconvnet where max-pool switches lie below the layer, guided otherwise",
    )
    project.add_argument("--verbose", action="store_true", help="also print what the recorded pass holds")
    project.add_argument("--select", default="max", choices=["max", "map"])
    project.add_argument("--size", type=_positive_int, default=None, help="model input side S (default: the model's)")
    project.add_argument("--out", required=True, help="PNG to write")
    project.add_argument("--raw", default=None, help="NPZ with input, projection, seed_value, seed_position")
    project.set_defaults(func=cmd_project)

    occlude = sub.add_parser("occlude", help="occlusion sensitivity maps (paper Fig. 7)")
    _add_model(occlude)
    occlude.add_argument("--image", required=True)
    # dest occluder_size: `--size` here is the occluder, the model input stays at its default S.
    occlude.add_argument(
        "--size", type=int, default=32, dest="occluder_size", help="occluder side in pixels of the S×S input"
    )
    occlude.add_argument("--stride", type=int, default=16, help="occluder step in pixels")
    occlude.add_argument("--target", type=int, default=None, help="class index (default: unoccluded top-1)")
    occlude.add_argument("--layer", default=None, help="feature-map layer (default: last conv layer)")
    occlude.add_argument("--batch-size", type=_positive_int, default=32, help="occluded copies per forward pass")
    occlude.add_argument(
        "--method",
        default="auto",
        choices=["auto", "dense", "incremental"],
        help="incremental: rerun only what the occluder changes (exact); auto: incremental where it pays",
    )
    occlude.add_argument(
        "--approx",
        type=float,
        default=None,
        metavar="TAU",
        help="approximate: cap each layer's patch at TAU of its map",
    )
    occlude.add_argument(
        "--adaptive",
        type=float,
        default=None,
        metavar="SHARE",
        help="approximate: stride×2 first, then the stride only in this share of cells with the largest drop",
    )
    occlude.add_argument(
        "--json", required=True, dest="json_out", help="file to write the JSON result to ('-' for stdout)"
    )
    occlude.set_defaults(func=cmd_occlude)

    layers = sub.add_parser("layers", help="every layer with a 4-D output, with shape and receptive field")
    _add_model(layers)
    layers.add_argument("--json", action="store_true", help="print JSON")
    layers.set_defaults(func=cmd_layers)

    scan = sub.add_parser(
        "scan",
        help="top-k images per feature map across an image folder (paper Fig. 2); torchrun-ready",
        description="For every channel of the chosen layers, keep the k strongest activations across the images "
        "(one per image, at its strongest position). Resumable; under `torchrun --nproc-per-node N -m convscope "
        "scan ...` the processes share the work and rank 0 writes the store.",
    )
    _add_model(scan)
    scan.add_argument("--images", required=True, help="folder of images (recursive; jpg, jpeg, png, webp, bmp)")
    scan.add_argument("--out", required=True, help="store directory (manifest.json, scan.sqlite, cache/)")
    scan.add_argument(
        "--layers", default=None, help="all, or comma-separated layer names (default: one layer per resolution)"
    )
    scan.add_argument("--top", type=_positive_int, default=9, help="entries kept per channel")
    scan.add_argument(
        "--batch-size", type=_positive_int, default=None, help="images per forward pass (default: 32 CPU, 128 GPU)"
    )
    scan.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="reader processes per scanning process (default: its share of the cores, less one)",
    )
    scan.add_argument(
        "--decoder",
        choices=["pil", "nvjpeg"],
        default="pil",
        help="JPEG decoder: pil (CPU, the default) or nvjpeg (on the GPU; recorded, a resume must use the same)",
    )
    scan.add_argument("--size", type=_positive_int, default=None, help="model input side S (default: the model's)")
    scan.add_argument("--resume", action="store_true", help="continue an interrupted scan in --out")
    scan.add_argument(
        "--checkpoint-every", type=_positive_int, default=1024, help="images between checkpoints (resume points)"
    )
    scan.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is no terminal")
    scan.set_defaults(func=_lazy("scan", "scan_main"))

    montage = sub.add_parser("montage", help="Fig. 2-style montage of a scan: top-k projections beside their patches")
    montage.add_argument("--scan", required=True, help="a store directory written by `convscope scan`")
    montage.add_argument("--layer", required=True)
    montage.add_argument("--channels", default=None, help="e.g. 0,1,5-8 (default: the first 16)")
    montage.add_argument("--tile", type=_positive_int, default=64, help="side of each tile in pixels")
    montage.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    montage.add_argument("--out", required=True, help="PNG to write")
    montage.set_defaults(func=_lazy("scan", "montage_main"))

    _add_analysis_parsers(sub)
    _add_study_parsers(sub)
    _add_featvis_parsers(sub)
    return parser


def _add_featvis_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`visualize` and `atlas` (feature visualisation by optimisation, issue 17)."""
    from convscope.featvis.commands import add_atlas_arguments, add_visualize_arguments

    vis = sub.add_parser("visualize", help="an image that maximises one unit (feature visualisation by optimisation)")
    _add_model(vis)
    add_visualize_arguments(vis)
    vis.set_defaults(func=_lazy("featvis", "visualize_main"))

    atlas = sub.add_parser("atlas", help="a static site (opens from file://): per unit its optimised image and top 9")
    _add_model(atlas)
    add_atlas_arguments(atlas)
    atlas.set_defaults(func=_lazy("featvis", "atlas_main"))


def _add_analysis_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`invariance`, `correspond` and `filters` (paper Figs. 5, 6 and 8 / Table 1; issue 8)."""
    from convscope.analysis.commands import add_image_arguments

    inv = sub.add_parser("invariance", help="feature distances and class probability under transformations (Fig. 5)")
    _add_model(inv, required=False)
    add_image_arguments(inv, "image files or sample ids (repeatable)")
    inv.add_argument("--transform", default="translation", choices=["translation", "scale", "rotation"])
    inv.add_argument("--start", type=float, default=None, help="first value (default -60 px, 1.0×, 0°)")
    inv.add_argument("--stop", type=float, default=None, help="last value (default 60 px, 1.8×, 350°)")
    inv.add_argument("--steps", type=_positive_int, default=None, help="number of values (default 13, 9, 36)")
    inv.add_argument("--low-layer", default=None, help="low feature: a module name or NAME:input (default: first conv)")
    inv.add_argument("--high-layer", default=None, help="high feature (default: penultimate, the classifier's input)")
    inv.add_argument("--edge", default="fill", choices=["fill", "wrap"], help="wrap: circular shift (translation)")
    inv.add_argument("--target", type=int, default=None, help="class index (default: the untransformed top-1)")
    inv.add_argument("--batch-size", type=_positive_int, default=16)
    inv.add_argument("--json", required=True, dest="json_out", help="file to write the JSON result to ('-': stdout)")
    inv.add_argument("--plot", default=None, help="PNG with the three curves (matplotlib)")
    inv.set_defaults(func=_lazy("analysis", "invariance_main"))

    cor = sub.add_parser("correspond", help="correspondence Δ of occluded parts against random boxes (Table 1)")
    _add_model(cor, required=False)
    add_image_arguments(cor, "image files or sample ids, in the order of the parts file's lists")
    cor.add_argument(
        "--parts",
        required=True,
        help="parts JSON ({'images': [...], 'parts': {name: boxes}}), demo (the sample photos with faces) "
        "or faces (16 aligned LFW faces, images lfw:0 … lfw:15)",
    )
    cor.add_argument("--layers", nargs="+", default=None, help="features (default: last conv layer, penultimate)")
    cor.add_argument("--draws", type=_positive_int, default=5, help="random-box draws")
    cor.add_argument("--seed", type=int, default=0)
    cor.add_argument("--batch-size", type=_positive_int, default=16)
    cor.add_argument("--json", required=True, dest="json_out", help="file to write the JSON result to ('-': stdout)")
    cor.set_defaults(func=_lazy("analysis", "correspond_main"))

    fil = sub.add_parser("filters", help="layer-1 filters, their frequency coverage, dead channels (Fig. 6)")
    _add_model(fil, required=False)
    fil.add_argument("--layer", default=None, help="conv layer for the mosaic and spectrum (default: the first)")
    add_image_arguments(fil, "images for the dead-channel count (default: the sample photos)")
    fil.add_argument("--images-dir", default=None, help="a folder of images for the dead-channel count")
    fil.add_argument("--no-dead", action="store_true", help="skip the dead-channel count (no forward passes)")
    fil.add_argument("--mosaic", default=None, help="PNG of the filters, each contrast-normalised")
    fil.add_argument("--scale", type=_positive_int, default=8, help="mosaic pixels per filter weight")
    fil.add_argument("--batch-size", type=_positive_int, default=8)
    fil.add_argument("--json", required=True, dest="json_out", help="file to write the JSON result to ('-': stdout)")
    fil.set_defaults(func=_lazy("analysis", "filters_main"))


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What a study of a finished training run reads (`evolution`, `convergence`): its checkpoints, over images."""
    parser.add_argument("--checkpoints", required=True, help="a `convscope train` run folder")
    parser.add_argument("--images", required=True, help="digits, faces or an ImageFolder directory")
    parser.add_argument("--split", default="train", choices=["train", "val", "all"], help="which of the run's images")
    parser.add_argument("--limit", type=_positive_int, default=None, help="a stratified subset of N images")


def _add_training_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    """What decides a training run (`train` and `ablate`); defaults follow the paper where it fits."""
    parser.add_argument("--arch", default="zfnet-small", choices=["zfnet", "zfnet-small"])
    parser.add_argument("--data", required=True, help="digits, faces or an ImageFolder directory")
    parser.add_argument("--epochs", type=_positive_int, default=epochs)
    parser.add_argument("--widths", default=None, help="conv1..conv5 channels, e.g. 32,64,96,96,64")
    parser.add_argument("--fc-width", type=_positive_int, default=None, help="units in fc6 and fc7")
    parser.add_argument("--size", type=_positive_int, default=None, help="input side (zfnet 224, zfnet-small 64)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (paper: 1e-2)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--lr-patience", type=int, default=2, help="epochs on a plateau before lr /= 10")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout on fc6/fc7")
    parser.add_argument("--radius", type=float, default=0.1, help="conv filter RMS cap after each step (0: off)")
    parser.add_argument("--init", default="kaiming", choices=["kaiming", "paper", "torch"])
    parser.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (stratified, seeded)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="use a stratified subset of N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _add_study_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`train`, `evolution`, `ablate`, `probe`, `stride`, `convergence` (paper Figs. 4 and 6, Tables 3 and 7)."""
    tr = sub.add_parser("train", help="train a ZF net (SGD, dropout, filter renormalisation); resumable")
    _add_training_arguments(tr, epochs=10)
    tr.add_argument("--remove", default=None, help="layers to remove, e.g. conv3,conv4 or 6,7 (Table 3)")
    tr.add_argument(
        "--checkpoints", default="all", help="epochs to save: all, none, or e.g. 0.25,0.5,1,2,5,10 (fractions: early)"
    )
    tr.add_argument("--no-resume", action="store_true", help="start over even if --out holds a run")
    tr.add_argument(
        "--first-layer", default="zf", choices=["zf", "alexnet"], help="conv1 7×7/2 (zf) or 11×11/4 (alexnet; Fig. 6)"
    )
    tr.add_argument("--out", required=True, help="run folder (model.json, epoch-E.pt, state.pt, log.json)")
    tr.set_defaults(func=_lazy("studies", "train_main"))

    ev = sub.add_parser("evolution", help="strongest activation of feature maps across checkpoints (Fig. 4)")
    _add_run_arguments(ev)
    ev.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5", help="conv1,conv5 or conv1:0,5;conv5:3")
    ev.add_argument("--per-layer", type=_positive_int, default=4, help="random channels per layer (seeded)")
    ev.add_argument("--epochs", default=None, help="only these checkpoints, e.g. 1,2,5,10")
    ev.add_argument("--crop", default="rf", choices=["rf", "full"], help="tile: the receptive field or the input")
    ev.add_argument(
        "--color", default="auto", choices=["auto", "rgb", "gray"], help="gray: the projection's grey component"
    )
    ev.add_argument("--tile", type=_positive_int, default=64, help="tile side in pixels")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    ev.add_argument("--out", required=True, help="FILE.png or FILE.json (both are written)")
    ev.set_defaults(func=_lazy("studies", "evolution_main"))

    ab = sub.add_parser("ablate", help="retrain with layers removed or resized; Table 3 (JSON + Markdown)")
    _add_training_arguments(ab, epochs=10)
    ab.add_argument(
        "--variants",
        default="full;-6,7;-3,4;-3,4,6,7;fc=x0.5",
        help="';'-separated: full, -L,L (remove), fc=N|xF, conv345=A,B,C, widths=…; changes joined by '+'",
    )
    ab.add_argument("--seeds", type=_positive_int, default=1, help="runs per variant (seeds seed..seed+N-1)")
    ab.add_argument("--out", required=True, help="folder: ablation.json, ablation.md, runs/")
    ab.set_defaults(func=_lazy("studies", "ablate_main"))

    st = sub.add_parser("stride", help="train stride-4 and stride-2 first layers alike; dead filters, spectra (Fig. 6)")
    _add_training_arguments(st, epochs=10)
    st.add_argument(
        "--first-layers", default="zf,alexnet", help="first layers to compare: zf (7×7/2), alexnet (11×11/4)"
    )
    st.add_argument("--checkpoints", default="all", help="epochs each run saves (the last is always saved)")
    st.add_argument("--no-resume", action="store_true", help="retrain the runs even if --out holds them")
    st.add_argument("--out", required=True, help="folder: stride.json, stride.md, stride*.png, runs/")
    st.set_defaults(func=_lazy("studies", "stride_main"))

    cv = sub.add_parser("convergence", help="per layer, top-9 overlap with the final checkpoint's, per epoch (Fig. 4)")
    _add_run_arguments(cv)
    cv.add_argument("--layers", default=None, help="comma-separated layers (default: every conv layer)")
    cv.add_argument(
        "--epochs", default=None, help="only these checkpoints, e.g. 1,2,5,10 (the last one is the reference)"
    )
    cv.add_argument("--top", type=_positive_int, default=9, help="k of the top-k image sets")
    cv.add_argument("--threshold", type=float, default=2 / 3, help="a layer has settled once it stays ≥ this")
    cv.add_argument("--batch-size", type=_positive_int, default=128)
    cv.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    cv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    cv.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    cv.add_argument("--out", required=True, help="FILE.json (FILE.md is written beside it)")
    cv.set_defaults(func=_lazy("studies", "convergence_main"))

    pr = sub.add_parser("probe", help="linear SVM / softmax on each layer's pooled features (Table 7)")
    _add_model(pr)
    pr.add_argument("--data", required=True, help="digits, faces or an ImageFolder directory")
    pr.add_argument("--layers", default=None, help="comma-separated module names (default: one per stage)")
    pr.add_argument("--folds", type=_positive_int, default=5, help="stratified k-fold")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--pool", type=_positive_int, default=2, help="pool 4-D features to P×P")
    pr.add_argument("--pool-mode", default="avg", choices=["avg", "max"])
    pr.add_argument("--classifiers", default="svm,softmax")
    pr.add_argument(
        "--C", type=float, default=None, help="inverse regularisation of both classifiers (default: SVM 0.1, softmax 1)"
    )
    pr.add_argument("--size", type=_positive_int, default=None, help="input side (default: the model's)")
    pr.add_argument("--limit", type=_positive_int, default=None, help="a stratified subset of N images")
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    pr.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    pr.add_argument("--out", required=True, help="FILE.json (FILE.md is written beside it)")
    pr.set_defaults(func=_lazy("studies", "probe_main"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except ConvscopeError as exc:
        print(f"convscope {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
