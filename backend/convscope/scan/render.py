"""Crops and projections of a scan's top-k entries, rendered on demand and cached on disk.

For an entry (layer, channel, rank) = (value, image, y, x):
- the *crop* is the receptive field of unit (y, x) in the S×S model input (the image
  exactly as the model saw it), zero-padded (black) where the field extends past the
  border. Fields larger than the image are limited to S×S around the unit's centre.
- the *projection* is the projection of that single activation in a mode (deconvnet by
  default, or guided / gradient: `Engine.project(..., position=(y, x), mode=...)`),
  cropped the same way (zero outside the image) and then contrast-normalised to 0..255
  as in the paper.

Both are PNGs under `<scan>/cache/<layer>/<channel>/<rank>-{crop,projection}.png`
(`<rank>-projection-<mode>.png` for a mode other than the deconvnet).
A crop needs no model; a projection needs an engine whose weights match the scan's
fingerprint. Source files are checked against the content hash recorded by the scan.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from convscope.engine import Engine, LayerInfo, Seed
from convscope.engine.render import contrast_normalise, png_bytes
from convscope.engine.rules import Rule
from convscope.errors import ConvscopeError, InvalidRequestError, NotFoundError
from convscope.fileio import atomic_write_bytes
from convscope.images import decode_image, prepare_image, resize_and_crop
from convscope.scan.store import Manifest, ScanStore, ScanStoreError
from convscope.scan.topk import Entry
from convscope.scan.walk import sha256_bytes

log = logging.getLogger("convscope.scan")

Kind = Literal["crop", "projection"]
KINDS: tuple[Kind, ...] = ("crop", "projection")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def crop_box(info: LayerInfo, y: int, x: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), half-open, of unit (y, x)'s receptive field in the S×S input.

    The engine's box, unclipped; a field wider than the image keeps its centre and is
    limited to S×S."""
    field_ = info.receptive_field
    top, left, bottom, right = field_.box(y, x, size)
    side = bottom - top
    if side <= size:
        return top, left, bottom, right
    centre_y, centre_x = field_.offset + y * field_.stride, field_.offset + x * field_.stride
    top, left = round(centre_y - size / 2.0 + 0.5), round(centre_x - size / 2.0 + 0.5)
    return top, left, top + size, left + size


def crop_array(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`array[top:bottom, left:right]` (H×W or H×W×C) with zeros outside the array."""
    top, left, bottom, right = box
    height, width = array.shape[:2]
    out = np.zeros((bottom - top, right - left, *array.shape[2:]), dtype=array.dtype)
    y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def crop_image(display: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    return Image.fromarray(crop_array(np.asarray(display.convert("RGB")), box), mode="RGB")


def crop_projection(projection: torch.Tensor, box: tuple[int, int, int, int]) -> Image.Image:
    """Crop a raw 3×S×S projection (zeros outside), then contrast-normalise the crop."""
    raw = projection.detach().float().cpu().numpy().transpose(1, 2, 0)
    cropped = torch.from_numpy(np.ascontiguousarray(crop_array(raw, box).transpose(2, 0, 1)))
    return Image.fromarray(contrast_normalise(cropped), mode="RGB")


def layer_dirname(layer: str) -> str:
    """A file-system-safe folder name for a layer (readable, unique via a short hash when altered)."""
    safe = _SAFE.sub("_", layer)
    if safe != layer or safe in ("", ".", ".."):
        safe = f"{safe or 'layer'}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"
    return safe


class ScanRenderer:
    """Renders and caches the crops and projections of one scan.

    `engine` (or `engine_factory`, called at the first projection that is not cached)
    must hold the scan's model with the same weights; it is checked once, unless the
    caller says it has (`verified`).
    """

    def __init__(
        self,
        store: ScanStore,
        engine: Engine | None = None,
        engine_factory: Callable[[], Engine] | None = None,
        *,
        verified: bool = False,
    ) -> None:
        self.store = store
        self.manifest: Manifest = store.manifest()
        self._engine = engine
        self._engine_factory = engine_factory
        self._checked = verified  # the caller has checked the engine against the scan
        self._lock = threading.Lock()

    # ---- lookups --------------------------------------------------------------------------
    def entries(self, layer: str, channel: int) -> list[Entry]:
        spec = self.manifest.layer(layer)
        if not 0 <= channel < spec.channels:
            raise InvalidRequestError(f"channel {channel} is out of range for layer {layer!r} (0..{spec.channels - 1})")
        if not self.manifest.complete:
            raise ScanStoreError("this scan has not finished yet")
        return self.store.top(layer, channel)

    def entry(self, layer: str, channel: int, rank: int) -> Entry:
        entries = self.entries(layer, channel)
        if not 0 <= rank < len(entries):
            raise NotFoundError(f"rank {rank} is out of range for channel {channel} (0..{len(entries) - 1})")
        return entries[rank]

    def box(self, layer: str, entry: Entry) -> tuple[int, int, int, int]:
        return crop_box(self.manifest.layer(layer), entry.y, entry.x, self.manifest.config.input_size)

    def path(self, layer: str, channel: int, rank: int, kind: Kind, mode: Rule = "deconvnet") -> Path:
        suffix = f"-{mode}" if kind == "projection" and mode != "deconvnet" else ""
        return self.store.cache_dir / layer_dirname(layer) / str(channel) / f"{rank}-{kind}{suffix}.png"

    # ---- sources ------------------------------------------------------------------------------
    def source_image(self, index: int) -> Image.Image:
        """The original image file of a scan entry (checked against its recorded hash)."""
        _, path, sha256, error = self.store.image(index)
        if error is not None:
            raise ScanStoreError(f"image {path} was skipped by the scan: {error}")
        root = self.manifest.config.source_root
        file = Path(path) if root is None else Path(root) / path
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise NotFoundError(f"the scanned image {file} cannot be read any more: {exc.strerror or exc}") from None
        if sha256 is not None and sha256_bytes(data) != sha256:
            raise ScanStoreError(f"the scanned image {file} has changed since the scan")
        return decode_image(data)

    def display(self, index: int) -> Image.Image:
        """The S×S image the model saw."""
        return resize_and_crop(self.source_image(index), self.manifest.config.input_size, self.manifest.config.crop_pct)

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                if self._engine_factory is None:
                    raise ScanStoreError("projections need the scan's model, and none was given")
                self._engine = self._engine_factory()
            if not self._checked:
                check_engine(self._engine, self.manifest)
                self._checked = True
            return self._engine

    # ---- rendering ------------------------------------------------------------------------------
    def png(self, layer: str, channel: int, rank: int, kind: Kind, mode: Rule = "deconvnet") -> bytes:
        """The cached PNG of one entry, rendering it first when needed."""
        if kind not in KINDS:
            raise InvalidRequestError(f"unknown kind {kind!r}; use crop or projection")
        path = self.path(layer, channel, rank, kind, mode)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        self.render(layer, [(channel, rank)], kinds=(kind,), mode=mode)
        return path.read_bytes()

    def render(
        self,
        layer: str,
        wanted: Iterable[tuple[int, int]],
        kinds: Sequence[Kind] = KINDS,
        mode: Rule = "deconvnet",
    ) -> None:
        """Render the missing crops/projections (in `mode`) of (channel, rank) pairs of one layer.

        Projections are grouped by source image: one recorded forward pass per image,
        one backward pass per seed."""
        spec = self.manifest.layer(layer)
        config = self.manifest.config
        size = config.input_size
        todo: dict[int, list[tuple[int, int, Entry]]] = {}
        for channel, rank in wanted:
            entry = self.entry(layer, channel, rank)
            if any(not self.path(layer, channel, rank, kind, mode).is_file() for kind in kinds):
                todo.setdefault(entry.image, []).append((channel, rank, entry))
        for index, items in sorted(todo.items()):
            source = self.source_image(index)
            display = resize_and_crop(source, size, config.crop_pct)
            if "crop" in kinds:
                for channel, rank, entry in items:
                    image = crop_image(display, crop_box(spec, entry.y, entry.x, size))
                    atomic_write_bytes(self.path(layer, channel, rank, "crop"), png_bytes(image))
            if "projection" in kinds:
                engine = self.engine()
                prepared = prepare_image(source, size, config.mean, config.std, config.crop_pct)
                seeds = [Seed(channel, position=(entry.y, entry.x)) for channel, _, entry in items]
                projections = engine.project_many(prepared, layer, seeds, mode=mode)
                for (channel, rank, entry), result in zip(items, projections, strict=True):
                    if not np.isclose(result.seed_value, entry.value, rtol=1e-3, atol=1e-4):
                        log.warning(
                            "%s channel %d rank %d: activation %.6g now, %.6g in the scan",
                            layer,
                            channel,
                            rank,
                            result.seed_value,
                            entry.value,
                        )
                    image = crop_projection(result.projection, crop_box(spec, entry.y, entry.x, size))
                    atomic_write_bytes(self.path(layer, channel, rank, "projection", mode), png_bytes(image))


def check_engine(engine: Engine, manifest: Manifest) -> None:
    """Refuse an engine whose model is not the scan's (name, input size, weights fingerprint)."""
    from convscope.scan.scanner import model_fingerprint

    config = manifest.config
    if engine.input_size != config.input_size:
        raise ScanStoreError(f"the scan used input size {config.input_size}, the model has {engine.input_size}")
    if model_fingerprint(engine.model.module) != config.fingerprint:
        raise ScanStoreError(
            f"the model's weights are not the ones scanned ({config.model}"
            + (f" with {config.weights}" if config.weights else "")
            + "); randomly initialised models differ at every load: scan with --weights"
        )


def engine_for_scan(manifest: Manifest, device: str = "auto") -> Engine:
    """Load the scan's model as the scan recorded it (name, weights file, input size)."""
    from convscope.models import load_model

    config = manifest.config
    try:
        preprocessing = {"mean": config.mean, "std": config.std, "crop_pct": config.crop_pct}
        model = load_model(
            config.model, weights=config.weights, input_size=config.input_size, preprocessing=preprocessing
        )
    except ConvscopeError as exc:
        raise ScanStoreError(f"cannot load the scan's model {config.model!r}: {exc}") from None
    return Engine(model, device_name=device)
