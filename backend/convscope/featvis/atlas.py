"""A static atlas of a model's units: per unit its optimised image, its top-k images from a
scan (deconvnet projections beside the image patches) and its numbers.

The output folder is self-contained (HTML, JS, CSS and PNGs; no server, no CDN): open
`index.html` from `file://` or publish the folder on any static host. The data the page
shows is in `data.js` (a script, not JSON: browsers refuse `fetch` on `file://`).

Resumable: a unit is finished once its `unit.json` is written (last, atomically);
running again skips finished units and fills in the rest. `atlas.json` records the
model and weights hash, so a folder made with other weights is refused.

Without a scan, the bundled sample photos are scanned for the chosen layers into
`<out>/_scan` (a few seconds).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from convscope import __version__
from convscope.engine import Engine, LayerInfo
from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.featvis.cache import FeatvisCache
from convscope.featvis.limits import DEFAULT_STEPS
from convscope.featvis.objectives import check_target
from convscope.jsonvalues import finite_or_none
from convscope.scan.render import ScanRenderer, check_engine, layer_dirname
from convscope.scan.store import ScanStore, atomic_write_bytes
from convscope.tasks import CallbackTask, Task, checkpoint

SITE_FILES = ("index.html", "atlas.js", "atlas.css")
DEFAULT_CHANNELS = 16
SCAN_DIR = "_scan"


@dataclass
class AtlasResult:
    directory: Path
    layers: list[str]
    units: int  # units in the atlas
    computed: int  # units made by this run
    seconds: float


def _site_file(name: str) -> bytes:
    return (resources.files("convscope.featvis") / "atlas_site" / name).read_bytes()


def _unit_dir(out: Path, layer: str, channel: int) -> Path:
    return out / "units" / layer_dirname(layer) / str(channel)


def _relative(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    manifest = out / "atlas.json"
    if manifest.is_file():
        try:
            known = json.loads(manifest.read_text())
        except (OSError, ValueError):
            known = {}
        different = [key for key, value in identity.items() if known.get(key) != value]
        if different:
            raise InvalidRequestError(
                f"{out} holds an atlas made with other settings ({', '.join(different)}); use another --out"
            )
    atomic_write_bytes(manifest, json.dumps(identity, indent=2).encode())


def _sample_scan(engine: Engine, out: Path, layers: Sequence[str]) -> ScanStore:
    from convscope.scan.scanner import run_scan, samples_source

    directory = out / SCAN_DIR
    run_scan(
        engine,
        samples_source(),
        directory,
        layers=list(layers),
        top=9,
        resume=True,
        replace=True,
        extra={"label": "the bundled sample photos"},
    )
    return ScanStore(directory)


def _top_entries(renderer: ScanRenderer | None, out: Path, layer: str, channel: int) -> list[dict[str, Any]] | None:
    """Copy a unit's top-k crops and projections into the atlas; None when the scan lacks the layer."""
    if renderer is None or all(spec.name != layer for spec in renderer.manifest.config.layers):
        return None
    entries = renderer.entries(layer, channel)
    renderer.render(layer, [(channel, rank) for rank in range(len(entries))])
    folder = _unit_dir(out, layer, channel)
    rows = []
    for rank, entry in enumerate(entries):
        image_id, _, _, _ = renderer.store.image(entry.image)
        row: dict[str, Any] = {
            "rank": rank,
            "value": finite_or_none(entry.value),
            "image": image_id,
            "y": entry.y,
            "x": entry.x,
        }
        for kind in ("projection", "crop"):
            target = folder / f"top-{rank}-{kind}.png"
            atomic_write_bytes(target, renderer.path(layer, channel, rank, kind).read_bytes())
            row[kind] = _relative(target, out)
        rows.append(row)
    return rows


def _layer_entry(info: LayerInfo) -> dict[str, Any]:
    from convscope.api.schemas import LayerResponse  # the one JSON shape of a layer (the API's)

    return {**LayerResponse.from_info(info).model_dump(mode="json"), "dir": layer_dirname(info.name)}


def write_data(out: Path, header: dict[str, Any], layers: Sequence[LayerInfo], channels: dict[str, list[int]]) -> int:
    """Gather the finished units' JSON into `data.js`; returns how many units it lists."""
    count = 0
    rows = []
    for info in layers:
        units = []
        for channel in channels[info.name]:
            path = _unit_dir(out, info.name, channel) / "unit.json"
            try:
                units.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        count += len(units)
        rows.append({**_layer_entry(info), "wanted": len(channels[info.name]), "units": units})
    data = {**header, "layers": rows, "updated_at": time.time()}
    script = "window.CONVSCOPE_ATLAS = " + json.dumps(data, allow_nan=False, default=str) + ";\n"
    atomic_write_bytes(out / "data.js", script.encode())
    return count


def build_atlas(
    engine: Engine,
    out: str | Path,
    *,
    layers: Sequence[str] | None = None,
    channels: str | None = None,
    scan: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    size: int | None = None,
    seed: int = 0,
    objective: str = "channel",
    batch_size: int = 8,
    cache: FeatvisCache | None = None,
    task: Task | None = None,
) -> AtlasResult:
    """Write (or complete) the atlas of `layers` × `channels` at `out` (see the module docstring)."""
    from convscope.scan.montage import parse_channels
    from convscope.scan.scanner import resolve_layers

    if objective == "logit":
        raise InvalidRequestError("an atlas shows a layer's units: use the channel or unit objective")
    started = time.perf_counter()
    out = Path(out)
    infos = resolve_layers(engine, list(layers) if layers else None)
    wanted = {info.name: parse_channels(channels, info.channels, DEFAULT_CHANNELS) for info in infos}
    targets = {
        info.name: check_target(engine, info.name, wanted[info.name], objective, steps, size, seed) for info in infos
    }
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or FeatvisCache(out / "_featvis")
    fingerprint = cache.fingerprint(engine)
    _check_identity(out, {"model": engine.name, "weights": fingerprint, "input_size": engine.input_size})
    for name in SITE_FILES:
        atomic_write_bytes(out / name, _site_file(name))

    if scan is None:
        store = _sample_scan(engine, out, [info.name for info in infos])
    else:
        store = ScanStore(scan)
        if not store.manifest_path.is_file():
            raise InvalidRequestError(f"{scan} is not a scan (no manifest.json); make one with `convscope scan`")
    renderer = ScanRenderer(store, engine=engine)
    if not renderer.manifest.complete:
        raise InvalidRequestError(
            f"the scan at {store.directory} has not finished; resume it with `convscope scan --resume`"
        )
    check_engine(engine, renderer.manifest)  # other weights: refuse now, not once per unit
    label = str(renderer.manifest.extra.get("label") or renderer.manifest.config.source_root or "scan")
    target0 = next(iter(targets.values()))
    header = {
        "version": __version__,
        "model": engine.name,
        "weights": fingerprint[:16],
        "pretrained": engine.model.pretrained,
        "input_size": engine.input_size,
        "settings": {"objective": objective, "steps": steps, "size": target0.size, "seed": seed},
        "scan": {"label": label, "images": renderer.manifest.config.image_count, "top": renderer.manifest.config.top},
    }

    todo = {name: [c for c in wanted[name] if not (_unit_dir(out, name, c) / "unit.json").is_file()] for name in wanted}
    total = sum(len(v) for v in wanted.values())
    done = total - sum(len(v) for v in todo.values())
    computed = 0
    checkpoint(task, done, total, "atlas")
    write_data(out, header, infos, wanted)
    for info in infos:
        missing = todo[info.name]
        for start in range(0, len(missing), max(1, batch_size)):
            batch = missing[start : start + max(1, batch_size)]
            target = check_target(engine, info.name, batch, objective, steps, size, seed)
            # progress counts units; the steps inside a batch still honour a cancel
            inner = CallbackTask(should_stop=task.should_stop) if task is not None else None
            for vis in cache.visualize(engine, target, task=inner):
                folder = _unit_dir(out, info.name, vis.channel)
                atomic_write_bytes(folder / "vis.png", vis.png())
                note: str | None = None
                try:
                    top = _top_entries(renderer, out, info.name, vis.channel)
                except ConvscopeError as exc:
                    top, note = None, str(exc)
                else:
                    note = None if top is not None else f"{info.name} is not in the scan"
                unit = {
                    "layer": info.name,
                    "channel": vis.channel,
                    "objective": vis.objective,
                    "position": list(vis.position) if vis.position else None,
                    "value": finite_or_none(vis.value),
                    "steps": vis.steps,
                    "size": vis.size,
                    "seed": vis.seed,
                    "vis": _relative(folder / "vis.png", out),
                    "top": top,
                    "top_note": note,
                }
                atomic_write_bytes(folder / "unit.json", json.dumps(unit, allow_nan=False, default=str).encode())
                computed += 1
                done += 1
            write_data(out, header, infos, wanted)
            checkpoint(task, done, total, "atlas")
    count = write_data(out, header, infos, wanted)
    return AtlasResult(out, [info.name for info in infos], count, computed, time.perf_counter() - started)


def remove_scratch(out: Path) -> None:
    """Delete the atlas's private scan and image cache (the site works without them)."""
    for name in (SCAN_DIR, "_featvis"):
        shutil.rmtree(out / name, ignore_errors=True)
