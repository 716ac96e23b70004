"""The `convscope scan` and `convscope montage` commands (the argparse glue is in `convscope.cli`)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from convscope.arguments import pick
from convscope.errors import ConvscopeError
from convscope.tasks import ConsoleTask


def scan_main(args: argparse.Namespace) -> int:
    from convscope.engine import Engine
    from convscope.models import load_model
    from convscope.models.preprocessing import model_options
    from convscope.scan.distributed import make_context
    from convscope.scan.scanner import folder_source, run_scan

    context = make_context(args.device)
    try:
        model = load_model(args.model, weights=args.weights, **model_options(args))
        engine = Engine(model, device_name=context.device_name)
        source = folder_source(args.images)
        console = ConsoleTask("scan", unit="img", show=True if args.progress else None)
        with console if context.is_main else contextlib.nullcontext(None) as task:
            flags = pick(args, "layers", "top", "batch_size", "workers", "decoder", "resume", "weights")
            result = run_scan(
                engine, source, args.out, context=context, task=task, checkpoint_images=args.checkpoint_every, **flags
            )
    finally:
        context.close()
    if context.is_main:
        where = Path(args.out)
        if result.status == "unchanged":
            print(f"{where}: the scan is already complete ({result.images} images); nothing to do")
        else:
            world = f" on {context.world} processes" if context.world > 1 else ""
            print(
                f"scanned {result.scanned} images{world} in {result.seconds:.1f}s "
                f"({result.images_per_second:.1f} img/s); {result.skipped} unreadable skipped; "
                f"top-{args.top} of {len(result.layers)} layers ({', '.join(result.layers)}) -> {where}"
            )
    return 0


def montage_main(args: argparse.Namespace) -> int:
    from convscope.scan.montage import montage, parse_channels
    from convscope.scan.render import ScanRenderer, engine_for_scan
    from convscope.scan.store import ScanStore

    store = ScanStore(args.scan)
    manifest = store.manifest()
    spec = manifest.layer(args.layer)
    channels = parse_channels(args.channels, spec.channels)
    renderer = ScanRenderer(store, engine_factory=lambda: engine_for_scan(manifest, args.device))
    image = montage(renderer, args.layer, channels, tile=args.tile)
    try:
        image.save(args.out)
    except (OSError, ValueError) as exc:
        raise ConvscopeError(f"cannot write {args.out}: {exc}") from None
    print(f"{args.layer}: {len(channels)} channels, top-{manifest.config.top} each -> {args.out}")
    return 0
