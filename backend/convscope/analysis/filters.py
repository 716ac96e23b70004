"""Filter diagnostics (paper Fig. 6).

- `filter_mosaic`: the first convolution's filters as small RGB images, each
  contrast-normalised on its own to [0, 255] as in the paper.
- `frequency_coverage`: for each filter, the share of its energy in a low, a mid
  and a high band of spatial frequency. The paper saw that a large first-layer
  stride (ZF's 7×7/2 against AlexNet's 11×11/4) leaves filters with extreme
  frequencies and little mid-frequency coverage. The spectrum is the filter's
  frequency response |H(f)|² (the 2-D DFT of the kernel zero-padded to 64×64,
  summed over input channels); by Parseval the band energies add up to the sum of
  the squared weights. Bands are rings of radial frequency ρ = |f| / 0.5 (a fraction
  of Nyquist): low ρ < 1/3 (with DC), mid 1/3 ≤ ρ < 2/3, high ρ ≥ 2/3 (including
  the diagonal corners beyond Nyquist). A white-noise kernel would spread its
  energy in proportion to the band areas, given as `white_reference`.
- `dead_channels`: for every convolution, the channels that are never positive
  over a set of images (the bundled sample photos by default). Each convolution is
  measured after its activation: the first ReLU-like layer that follows it, before
  the next convolution, with the same output shape; a convolution with none (a
  linear bottleneck, or a functional `F.relu`) is measured at its own output and
  flagged `rectified: false`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from cachetools import LRUCache
from PIL import Image
from torch import nn

from convscope.analysis.features import first_conv_layer
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.layer_names import resolve_name
from convscope.tasks import Task, checkpoint

if TYPE_CHECKING:
    from convscope.engine import Engine

BAND_NAMES = ("low", "mid", "high")
BAND_EDGES = (1 / 3, 2 / 3)
SPECTRUM_SIZE = 64
MAX_SPECTRUM_SIZE = 256  # larger kernels are refused: their spectra would not be bounded
FFT_CHUNK_BYTES = 8 * 1024 * 1024  # working memory of one chunk of `band_energies`
QUADRATIC_MAX_TAPS = 256  # kernels up to 16×16 taps: exact quadratic form, larger: chunked FFT
ACTIVATION_KINDS = frozenset({"ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "PReLU", "RReLU", "CELU", "ELU", "SELU"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_FOLDER_IMAGES = 1000


# ---- the filters as images -------------------------------------------------------------------------
def conv_weight(engine: Engine, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The named (default: first) `nn.Conv2d` of the model."""
    modules = dict(engine.model.module.named_modules())
    name = resolve_name(layer, modules, model=engine.name, what="module") if layer else first_conv_layer(engine)
    module = modules[name]
    if not isinstance(module, nn.Conv2d):
        raise InvalidRequestError(f"{name!r} is a {type(module).__name__}, not a Conv2d layer")
    return name, module


def normalised_filters(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Out×k×k×3 uint8: each filter min–max scaled to [0, 255] on its own (grey when constant).

    Filters with 3 input channels are shown as RGB; any other number as the grey mean over inputs.
    """
    array = weight.detach().float().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    if array.ndim != 4:
        raise InvalidRequestError(f"a conv weight is out×in×kh×kw, got shape {array.shape}")
    if array.shape[1] != 3:
        array = np.repeat(array.mean(axis=1, keepdims=True), 3, axis=1)
    low = array.min(axis=(1, 2, 3), keepdims=True)
    span = array.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.where(span > 0, (array - low) / np.where(span > 0, span, 1.0), 0.5)
    return np.round(scaled * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def filter_mosaic(
    weight: torch.Tensor | np.ndarray, *, scale: int = 6, gap: int = 2, columns: int | None = None
) -> Image.Image:
    """The filters as a grid of tiles (row-major: filter c at row c // columns), each `scale`× enlarged."""
    if not 1 <= scale <= 64 or not 0 <= gap <= 16:
        raise InvalidRequestError("mosaic scale must be 1..64 and gap 0..16")
    tiles = normalised_filters(weight)
    count, kh, kw, _ = tiles.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    th, tw = kh * scale, kw * scale
    canvas = np.full((rows * (th + gap) + gap, columns * (tw + gap) + gap, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        canvas[y : y + th, x : x + tw] = np.kron(tile, np.ones((scale, scale, 1), np.uint8))
    return Image.fromarray(canvas)


# ---- frequency coverage --------------------------------------------------------------------------------
def _radial(size: int) -> np.ndarray:
    freq = np.fft.fftfreq(size)
    return np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2) / 0.5


def _band_masks(size: int) -> np.ndarray:
    rho = _radial(size)
    return np.stack([rho < BAND_EDGES[0], (rho >= BAND_EDGES[0]) & (rho < BAND_EDGES[1]), rho >= BAND_EDGES[1]])


def _band_forms(size: int, kh: int, kw: int) -> np.ndarray:
    """3×(kh·kw)×(kh·kw): the band energy of a kernel w is vec(w)ᵀ·M_b·vec(w).

    Σ_{f in band} |DFT(w)(f)|² = Σ_{p,q} w_p w_q C_b(p − q), where C_b = DFT(mask_b) is real
    (the bands are symmetric under f → −f), so no spectrum of any kernel is ever formed."""
    kernels = np.real(np.fft.fft2(_band_masks(size).astype(np.float64)))  # 3×size×size
    y, x = np.mgrid[0:kh, 0:kw]
    dy = (y.reshape(-1, 1) - y.reshape(1, -1)) % size
    dx = (x.reshape(-1, 1) - x.reshape(1, -1)) % size
    return kernels[:, dy, dx]


def band_energies(
    weight: torch.Tensor | np.ndarray, size: int = SPECTRUM_SIZE, chunk_bytes: int = FFT_CHUNK_BYTES
) -> np.ndarray:
    """Out×3 fractions of each filter's spectral energy in the low / mid / high bands (rows add to 1).

    Bounded memory whatever out × in: kernels up to QUADRATIC_MAX_TAPS taps use the exact
    quadratic form of `_band_forms` (no spectra at all); larger ones are transformed in float32
    (complex64), a chunk of (filter, input channel) pairs at a time (at most `chunk_bytes` of
    spectra), each chunk reduced to its three band sums at once. Kernels larger than
    MAX_SPECTRUM_SIZE are refused (422)."""
    array: np.ndarray = (
        weight.detach().float().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    )
    if array.ndim != 4:
        raise InvalidRequestError(f"a conv weight is out×in×kh×kw, got shape {array.shape}")
    out, inputs, kh, kw = array.shape
    size = max(size, kh, kw)
    if size > MAX_SPECTRUM_SIZE:
        raise InvalidRequestError(f"a {kh}×{kw} kernel is larger than the {MAX_SPECTRUM_SIZE}-point spectrum limit")
    rows = array.reshape(out * inputs, kh * kw)
    energy = np.zeros((out, 3), np.float64)
    if kh * kw <= QUADRATIC_MAX_TAPS:
        forms = _band_forms(size, kh, kw)
        per_chunk = max(1, chunk_bytes // (kh * kw * 8 * 2))
        for start in range(0, len(rows), per_chunk):
            part = rows[start : start + per_chunk].astype(np.float64)
            bands = np.stack([np.einsum("rp,pq,rq->r", part, form, part) for form in forms], axis=1)
            np.add.at(energy, np.arange(start, start + len(part)) // inputs, bands)
    else:
        masks = _band_masks(size).reshape(3, -1).astype(np.float32)
        kernels = rows.reshape(-1, kh, kw).astype(np.float32, copy=False)
        per_chunk = max(1, chunk_bytes // (size * size * 8))
        for start in range(0, len(kernels), per_chunk):
            chunk = kernels[start : start + per_chunk]
            spectrum = np.fft.fft2(chunk, s=(size, size)).astype(np.complex64, copy=False)
            power = (spectrum.real**2 + spectrum.imag**2).reshape(len(chunk), -1)
            owners = np.arange(start, start + len(chunk)) // inputs
            np.add.at(energy, owners, (power @ masks.T).astype(np.float64))
    energy = np.maximum(energy, 0.0)  # the quadratic form can round to a tiny negative
    total = energy.sum(axis=1, keepdims=True)
    return np.where(total > 0, energy / np.where(total > 0, total, 1.0), 0.0)


def white_reference(size: int = SPECTRUM_SIZE) -> list[float]:
    """The band fractions of a white-noise kernel: the share of frequency-plane samples in each band."""
    rho = _radial(size)
    low = float(np.mean(rho < BAND_EDGES[0]))
    mid = float(np.mean((rho >= BAND_EDGES[0]) & (rho < BAND_EDGES[1])))
    return [low, mid, 1.0 - low - mid]


@dataclass
class FrequencyCoverage:
    layer: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    bands: np.ndarray  # out×3

    @property
    def mean(self) -> list[float]:
        """The bands' mean share over the filters."""
        return [float(v) for v in self.bands.mean(axis=0)] if len(self.bands) else [0.0, 0.0, 0.0]

    @property
    def dominant_counts(self) -> list[int]:
        """How many filters have most of their energy in each band."""
        dominant = self.bands.argmax(axis=1) if len(self.bands) else np.zeros(0, int)
        return [int((dominant == k).sum()) for k in range(3)]


_COVERAGE_CACHE: LRUCache[tuple[int, int, int, str], FrequencyCoverage] = LRUCache(maxsize=128)
_COVERAGE_LOCK = threading.Lock()


def frequency_coverage(engine: Engine, layer: str | None = None) -> FrequencyCoverage:
    """The layer's band energies; cached per weight tensor (keyed by its storage and version)."""
    name, conv = conv_weight(engine, layer)
    weight = conv.weight
    key = (id(conv), weight.data_ptr(), int(weight._version), name)
    with _COVERAGE_LOCK:
        cached = _COVERAGE_CACHE.get(key)
        if cached is not None:
            return cached
    kernel = conv.kernel_size if isinstance(conv.kernel_size, tuple) else (conv.kernel_size, conv.kernel_size)
    stride = conv.stride if isinstance(conv.stride, tuple) else (conv.stride, conv.stride)
    coverage = FrequencyCoverage(
        name, (int(kernel[0]), int(kernel[1])), (int(stride[0]), int(stride[1])), band_energies(weight)
    )
    with _COVERAGE_LOCK:
        _COVERAGE_CACHE[key] = coverage
    return coverage


# ---- dead channels ------------------------------------------------------------------------------------
@dataclass
class DeadLayer:
    layer: str  # the convolution
    measured_at: str  # where "positive" is checked: its activation, or the conv itself
    rectified: bool
    channels: int
    max_activation: np.ndarray  # per channel, the largest value seen

    @property
    def dead(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.max_activation <= 0)]

    @property
    def dead_fraction(self) -> float:
        return len(self.dead) / self.channels if self.channels else 0.0


@dataclass
class DeadChannels:
    """Dead channels of every convolution over a set of images (`dead_channels`' layers, with totals)."""

    images: list[str]
    layers: list[DeadLayer]
    seconds: float = 0.0

    @property
    def total_channels(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def total_dead(self) -> int:
        return sum(len(layer.dead) for layer in self.layers)

    @property
    def rectified_dead(self) -> int:
        """Dead channels measured after an activation (a conv without one can be negative by design)."""
        return sum(len(layer.dead) for layer in self.layers if layer.rectified)


def measurement_points(engine: Engine) -> list[tuple[str, str, bool]]:
    """(conv, measured at, rectified) for every Conv2d with a 4-D output, in layer order."""
    modules = dict(engine.model.module.named_modules())
    layers = engine.layers()
    points = []
    for index, info in enumerate(layers):
        if not isinstance(modules.get(info.name), nn.Conv2d):
            continue
        measured, rectified = info.name, False
        for later in layers[index + 1 :]:
            if isinstance(modules.get(later.name), nn.Conv2d):
                break
            same_shape = (later.channels, later.height, later.width) == (info.channels, info.height, info.width)
            if later.kind in ACTIVATION_KINDS and same_shape:
                measured, rectified = later.name, True
                break
        points.append((info.name, measured, rectified))
    return points


def dead_channels(
    engine: Engine,
    images: Iterable[torch.Tensor],
    *,
    total: int | None = None,
    batch_size: int = 8,
    task: Task | None = None,
) -> list[DeadLayer]:
    """Per convolution, the largest activation each channel reached over `images` (1×3×S×S tensors)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch size must be a positive integer, got {batch_size!r}")
    points = measurement_points(engine)
    if not points:
        raise InvalidRequestError(f"model {engine.name!r} has no Conv2d layer with a 4-D output")
    from convscope.engine.capture import Tap

    wanted = sorted({measured for _, measured, _ in points})
    taps = [Tap(name, reduce="max") for name in wanted]  # per image, each channel's spatial peak
    running: dict[str, torch.Tensor] = {}

    done = 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        nonlocal done
        if not batch:
            return
        _, tapped = engine.infer(torch.cat(batch), taps)  # the engine's lock: this batch only
        for tap, value in tapped.items():
            if value.dim() != 2:
                continue
            peak = value.float().amax(dim=0).cpu()
            running[tap.module] = peak if tap.module not in running else torch.maximum(running[tap.module], peak)
        done += len(batch)
        batch.clear()
        checkpoint(task, done, total or done, "dead channels")

    for tensor in images:  # images are prepared here, outside the engine's lock
        batch.append(tensor)
        if len(batch) >= batch_size:
            flush()
    flush()
    if done == 0:
        raise InvalidRequestError("no images to measure dead channels on")
    results = []
    for conv, measured, rectified in points:
        peak = running.get(measured)
        if peak is None:
            continue
        results.append(DeadLayer(conv, measured, rectified, len(peak), peak.numpy()))
    return results


def folder_images(folder: str | Path) -> list[Path]:
    """The image files directly in a folder (by suffix, sorted), at most MAX_FOLDER_IMAGES."""
    path = Path(folder)
    if not path.is_dir():
        raise NotFoundError(f"image folder not found: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidRequestError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    if len(files) > MAX_FOLDER_IMAGES:
        raise InvalidRequestError(f"{len(files)} images in {path}; the limit is {MAX_FOLDER_IMAGES}")
    return files


@dataclass
class FiltersReport:
    """`convscope filters`: frequency coverage of one conv layer and, when images were given, dead channels."""

    model: str
    frequency: FrequencyCoverage
    dead: DeadChannels | None


def filters_report(
    engine: Engine,
    image_tensors: Sequence[tuple[str, torch.Tensor]] | None = None,
    *,
    layer: str | None = None,
    batch_size: int = 8,
    task: Task | None = None,
) -> FiltersReport:
    """Frequency coverage of the (first) conv layer and, when images are given, dead channels per conv layer."""
    began = time.perf_counter()
    report = FiltersReport(engine.name, frequency_coverage(engine, layer), None)
    if image_tensors is not None:
        names = [name for name, _ in image_tensors]
        dead = dead_channels(
            engine,
            (tensor for _, tensor in image_tensors),
            total=len(image_tensors),
            batch_size=batch_size,
            task=task,
        )
        report.dead = DeadChannels(names, dead, time.perf_counter() - began)
    return report
