"""The command-line side of the studies: `convscope invariance`, `correspond` and `filters`.

`convscope.cli` declares the arguments and calls these; problems that are the
user's raise `ConvscopeError`, which the CLI turns into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convscope.arguments import pick
from convscope.errors import ConvscopeError, InvalidRequestError, NotFoundError
from convscope.tasks import ConsoleTask

if TYPE_CHECKING:
    from PIL import Image
    from pydantic import BaseModel

    from convscope.engine import Engine


class OutputError(ConvscopeError):
    """An output file that cannot be written."""


def _engine(args: argparse.Namespace) -> Engine:
    from convscope.engine import Engine
    from convscope.models import load_model
    from convscope.models.preprocessing import model_options

    return Engine(load_model(args.model, weights=args.weights, **model_options(args)), device_name=args.device)


def source_image(text: str, base: Path | None = None) -> Image.Image:
    """An image file (relative to `base` when given and it exists there) or a bundled sample id."""
    from convscope.images import load_image_file
    from convscope.samples import is_face_id, list_samples, load_face, load_sample

    if is_face_id(text):
        return load_face(text)
    for candidate in (Path(text), *((base / text,) if base is not None else ())):
        if candidate.is_file():
            return load_image_file(candidate)
    ids = [sample.id for sample in list_samples()]
    if text in ids:
        return load_sample(text)
    raise NotFoundError(f"{text!r} is neither an image file nor a sample id ({', '.join(ids)})")


def _write_json(target: str, response: BaseModel) -> Any:
    """Write a response's JSON, the API's serialisation of it (`-`: stdout); the stream the summary should go to."""
    text = json.dumps(response.model_dump(mode="json"))
    if target == "-":
        print(text)
        return sys.stderr
    try:
        Path(target).write_text(text + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return sys.stdout


# ---- invariance -------------------------------------------------------------------------------------
def invariance_main(args: argparse.Namespace) -> int:
    from convscope.analysis.invariance import UNITS, invariance, plot_invariance
    from convscope.api.schemas import InvarianceResponse

    if not args.images:
        raise InvalidRequestError("name at least one image with --image (a file or a sample id)")
    images = [(text, source_image(text)) for text in args.images]
    engine = _engine(args)
    with ConsoleTask("invariance", unit="pass") as task:
        flags = pick(args, "start", "stop", "steps", "low_layer", "high_layer", "edge", "target", "batch_size")
        result = invariance(engine, images, args.transform, task=task, **flags)
    stream = _write_json(args.json_out, InvarianceResponse.from_result(result))
    if args.plot:
        try:
            plot_invariance(result, args.plot)
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot write {args.plot}: {exc}") from None
    unit = UNITS[result.transform]
    print(
        f"{result.transform} {result.values[0]:g}…{result.values[-1]:g} {unit} in {len(result.values)} steps; "
        f"low layer {result.low_layer}, high layer {result.high_layer}; {result.forward_passes} passes "
        f"in {result.seconds:.1f}s",
        file=stream,
    )
    for curve in result.curves:
        low = max(curve.low_distance) / curve.low_norm if curve.low_norm else float("nan")
        high = max(curve.high_distance) / curve.high_norm if curve.high_norm else float("nan")
        print(
            f"  {curve.image}: top-1 {curve.target_label!r}; largest ‖x − x₀‖/‖x₀‖ low {low:.3f}, high {high:.3f}; "
            f"probability {min(curve.probability):.3f}…{max(curve.probability):.3f}",
            file=stream,
        )
    if len(result.curves) > 1:
        print(f"  n = {len(result.curves)} images; the JSON's summary has the mean ± std per step", file=stream)
    return 0


# ---- correspondence ------------------------------------------------------------------------------------
def correspond_main(args: argparse.Namespace) -> int:
    from convscope.analysis.correspondence import (
        BUNDLED_ANNOTATIONS,
        correspondence,
        format_table,
        load_annotation,
        parse_parts,
    )
    from convscope.api.schemas import CorrespondenceResponse

    engine = _engine(args)
    annotation = load_annotation(args.parts)
    base = None if args.parts in BUNDLED_ANNOTATIONS else Path(args.parts).parent
    names = args.images or None
    if names is not None and isinstance(annotation.get("parts"), dict):
        # an {image: box} annotation may be keyed by the file's stem: map each argument to its key
        keys = {key for boxes in annotation["parts"].values() if isinstance(boxes, dict) for key in boxes}
        names = [name if name in keys or Path(name).stem not in keys else Path(name).stem for name in names]
    image_names, parts = parse_parts(annotation, names, engine.input_size)
    sources = args.images or image_names
    prepared = [
        (name, engine.prepare(source_image(text, base))) for name, text in zip(image_names, sources, strict=True)
    ]
    with ConsoleTask("correspond", unit="pass") as task:
        flags = pick(args, "layers", "draws", "seed", "batch_size")
        result = correspondence(engine, prepared, parts, task=task, **flags)
    stream = _write_json(args.json_out, CorrespondenceResponse.from_result(result))
    print(
        f"{len(result.images)} images ({', '.join(result.images)}), {len(result.parts)} parts, "
        f"{result.draws} random draws (seed {result.seed}); {result.forward_passes} passes in {result.seconds:.1f}s",
        file=stream,
    )
    print(format_table(result), file=stream)
    return 0


# ---- filters ---------------------------------------------------------------------------------------------
def filters_main(args: argparse.Namespace) -> int:
    from convscope.analysis.filters import (
        BAND_NAMES,
        conv_weight,
        filter_mosaic,
        filters_report,
        folder_images,
        white_reference,
    )
    from convscope.api.schemas import FiltersReportResponse

    engine = _engine(args)
    name, conv = conv_weight(engine, args.layer)  # bad layer fails before any forward pass
    tensors: list[tuple[str, Any]] | None = None
    if not args.no_dead:
        from convscope.images import load_image_file
        from convscope.samples import list_samples, load_sample

        if args.images_dir:
            files = folder_images(args.images_dir)
            tensors = [(file.name, engine.prepare(load_image_file(file)).tensor) for file in files]
        elif args.images:
            tensors = [(text, engine.prepare(source_image(text)).tensor) for text in args.images]
        else:
            tensors = [(s.id, engine.prepare(load_sample(s.id)).tensor) for s in list_samples()]
    with ConsoleTask("filters", unit="img", total=len(tensors or [])) as task:
        report = filters_report(engine, tensors, layer=name, batch_size=args.batch_size, task=task)
    if args.mosaic:
        try:
            filter_mosaic(conv.weight, scale=args.scale).save(args.mosaic)
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot write {args.mosaic}: {exc}") from None
    stream = _write_json(args.json_out, FiltersReportResponse.from_report(report, mosaic=args.mosaic or None))
    freq, dead = report.frequency, report.dead
    mean = ", ".join(f"{band} {value:.2f}" for band, value in zip(BAND_NAMES, freq.mean, strict=True))
    white = ", ".join(f"{value:.2f}" for value in white_reference())
    print(
        f"{freq.layer}: {len(freq.bands)} filters {freq.kernel_size[0]}×{freq.kernel_size[1]} "
        f"stride {freq.stride[0]}; mean energy {mean} (white noise: {white}); "
        f"dominant band counts {freq.dominant_counts}",
        file=stream,
    )
    if dead is not None:
        print(
            f"dead channels over {len(dead.images)} images: {dead.total_dead} of {dead.total_channels} "
            f"in {len(dead.layers)} conv layers ({dead.rectified_dead} after an activation)",
            file=stream,
        )
        for row in dead.layers:
            if row.dead:
                where = row.measured_at if row.rectified else "its output (no activation)"
                print(f"  {row.layer}: {len(row.dead)}/{row.channels} at {where}", file=stream)
    return 0


def add_image_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--images", "--image", dest="images", nargs="+", action="extend", default=[], metavar="IMAGE", help=help_text
    )
