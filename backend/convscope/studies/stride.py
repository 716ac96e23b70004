"""The paper's Fig. 6: a stride-4 first layer (Krizhevsky et al.'s 11×11/4) against the paper's
stride-2 one (7×7/2), in the same net, trained alike.

`stride_study` trains each first layer (`TrainConfig.first_layer`: "zf", "alexnet") with one
and the same config — same seed, same images, split, batch order and crops (each run's log
carries a fingerprint of its training pixels and labels; the document checks they agree) —
and compares the trained conv1 layers side by side:

- **dead filters**: conv1 channels that are never positive after relu1 over the run's images
  (`convscope.analysis.filters.dead_channels`, the measure of `convscope filters`), and
  **collapsed** ones, whose RMS fell below a tenth of the layer's median RMS (weight decay
  shrinks a filter that no gradient reaches);
- **frequency content**: each filter's power spectrum |H(f)|² (the kernel zero-padded to
  64×64, summed over input channels, scaled to sum 1), averaged over the filters, in rings of
  radial frequency ρ = |f| / 0.5 (a fraction of Nyquist) of width 1/12; the low / mid / high
  bands of `convscope filters` (edges 1/3, 2/3) are sums of rings, and "aliased" is the share
  of energy at frequencies the layer's output grid cannot hold — max(|f_x|, |f_y|) ≥ 1/(2·stride)
  — which folds back into lower frequencies of the map. A white-noise kernel's shares are given
  beside each (`white`);
- a mosaic of each variant's filters (PNG), and the two side by side.

Writes `stride.json`, `stride.md`, `stride-<variant>.png`, `stride.png` and the runs under
`runs/<variant>/` (resumable: an interrupted study continues).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.models.zfnet import FIRST_LAYERS
from convscope.studies.data import ImageSet, dataset_id, load_dataset
from convscope.studies.store import FORMAT_VERSION, markdown_table
from convscope.studies.train import Echo, TrainConfig, build_model, parse_checkpoint_epochs, select_split, train
from convscope.tasks import Task

if TYPE_CHECKING:
    from convscope.analysis.filters import DeadLayer

SPECTRUM_SIZE = 64
RING_WIDTH = 1 / 12  # the band edges 1/3, 2/3 and the Nyquist fractions 1/4, 1/2 fall on ring edges
RINGS = math.ceil(math.sqrt(2) / RING_WIDTH)  # ρ reaches √2 in the corners
BAND_NAMES = ("low", "mid", "high")
BAND_RINGS = ((0, 4), (4, 8), (8, RINGS))  # ρ < 1/3, 1/3 ≤ ρ < 2/3, ρ ≥ 2/3
COLLAPSED_FRACTION = 0.1  # a filter whose RMS is under this share of the layer's median RMS
MOSAIC_TILE = 44  # pixels per filter in the mosaics, whatever the kernel size


def parse_first_layers(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`zf,alexnet` -> ("zf", "alexnet"): known first layers, each once, at least two."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(dict.fromkeys(part.strip().lower() for part in parts if part.strip()))
    unknown = [name for name in names if name not in FIRST_LAYERS]
    if unknown:
        raise InvalidRequestError(f"unknown first layer {unknown[0]!r}; use {', '.join(FIRST_LAYERS)}")
    if len(names) < 2:
        raise InvalidRequestError("compare at least two first layers, e.g. zf,alexnet")
    return names


# ---- spectra ------------------------------------------------------------------------------------------
def _frequencies(size: int = SPECTRUM_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(f_y, f_x) of each DFT sample, in cycles per pixel (the layout of `np.fft.fft2`)."""
    freq = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    return fy, fx


def filter_power(weight: torch.Tensor | np.ndarray, size: int = SPECTRUM_SIZE) -> np.ndarray:
    """Out×size×size: each filter's |H(f)|² summed over its input channels, scaled to sum 1
    (all zeros for an all-zero filter)."""
    array = weight.detach().double().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    if array.ndim != 4:
        raise InvalidRequestError(f"a conv weight is out×in×kh×kw, got shape {array.shape}")
    spectrum = np.fft.fft2(array, s=(size, size))
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=1)
    total = power.sum(axis=(1, 2), keepdims=True)
    return np.where(total > 0, power / np.where(total > 0, total, 1.0), 0.0)


def ring_index(size: int = SPECTRUM_SIZE) -> np.ndarray:
    """size×size: the ring of each frequency sample, floor(ρ / RING_WIDTH), ρ = |f| / 0.5."""
    fy, fx = _frequencies(size)
    rho = np.sqrt(fy**2 + fx**2) / 0.5
    return np.minimum(np.floor(rho / RING_WIDTH + 1e-9).astype(int), RINGS - 1)


def radial_spectrum(power: np.ndarray) -> np.ndarray:
    """Out×RINGS: each filter's share of energy per ring (rows of a non-zero filter sum to 1)."""
    rings = ring_index(power.shape[-1]).ravel()
    flat = power.reshape(len(power), -1)
    out = np.zeros((len(power), RINGS))
    for ring in range(RINGS):
        out[:, ring] = flat[:, rings == ring].sum(axis=1)
    return out


def white_radial(size: int = SPECTRUM_SIZE) -> np.ndarray:
    """The ring shares of a white-noise kernel: the share of frequency samples in each ring."""
    return np.bincount(ring_index(size).ravel(), minlength=RINGS) / float(size * size)


def bands_from_rings(rings: np.ndarray) -> np.ndarray:
    """…×RINGS -> …×3: the low / mid / high bands of `convscope filters` as sums of rings."""
    return np.stack([rings[..., a:b].sum(axis=-1) for a, b in BAND_RINGS], axis=-1)


def aliased_mask(stride: int, size: int = SPECTRUM_SIZE) -> np.ndarray:
    """size×size: the frequencies a stride-`stride` output grid cannot represent, max(|f_x|, |f_y|) ≥ 1/(2·stride)."""
    fy, fx = _frequencies(size)
    return np.maximum(np.abs(fy), np.abs(fx)) >= 1.0 / (2 * stride) - 1e-12


def aliased_share(power: np.ndarray, stride: int) -> np.ndarray:
    """Out: each filter's share of energy above its output grid's Nyquist frequency."""
    return power[:, aliased_mask(stride, power.shape[-1])].sum(axis=1)


# ---- dead and collapsed filters -----------------------------------------------------------------------
def collapsed_filters(weight: torch.Tensor, fraction: float = COLLAPSED_FRACTION) -> tuple[list[int], np.ndarray]:
    """(channels whose RMS is below `fraction` × the layer's median RMS, every filter's RMS)."""
    rms = weight.detach().double().pow(2).mean(dim=(1, 2, 3)).sqrt().cpu().numpy()
    median = float(np.median(rms))
    return [int(c) for c in np.flatnonzero(rms < fraction * median)], rms


def _dead_per_layer(engine: Any, images: ImageSet, batch_size: int, task: Task | None) -> list[DeadLayer]:
    """`dead_channels` of every conv layer over the images (batches of tensors, one engine pass each)."""
    from convscope.analysis.filters import dead_channels

    mean, std = engine.model.mean, engine.model.std
    batches = images.batches(engine.input_size, mean, std, batch_size)  # each one is concatenated alone
    total = math.ceil(len(images) / batch_size)
    return dead_channels(engine, batches, total=total, batch_size=1, task=task)


# ---- mosaics ------------------------------------------------------------------------------------------
def variant_mosaic(weight: torch.Tensor, columns: int | None = None) -> Image.Image:
    """The filters as `convscope filters` draws them (each contrast-normalised on its own), every
    tile about MOSAIC_TILE pixels whatever the kernel size."""
    from convscope.analysis.filters import filter_mosaic

    scale = max(1, math.ceil(MOSAIC_TILE / int(weight.shape[-1])))
    return filter_mosaic(weight, scale=scale, gap=2, columns=columns)


def side_by_side(pictures: Sequence[tuple[str, Image.Image]]) -> Image.Image:
    """Mosaics next to each other on white, each with its label above it."""
    font = ImageFont.load_default()
    gap, top = 12, 16
    width = sum(p.width for _, p in pictures) + gap * (len(pictures) + 1)
    height = top + max(p.height for _, p in pictures) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for label, picture in pictures:
        draw.text((x, 2), label, fill=(30, 30, 30), font=font)
        canvas.paste(picture, (x, top))
        x += picture.width + gap
    return canvas


# ---- the study ----------------------------------------------------------------------------------------
@dataclass
class StrideResult:
    document: dict[str, Any]
    markdown: str
    mosaics: dict[str, Image.Image]
    combined: Image.Image


def _conv_geometry(conv: nn.Conv2d) -> dict[str, int]:
    return {
        "kernel": int(conv.kernel_size[0]),
        "stride": int(conv.stride[0]),
        "padding": int(conv.padding[0]) if isinstance(conv.padding, tuple) else 0,
        "channels": int(conv.out_channels),
    }


def conv1_of(module: nn.Module) -> nn.Conv2d:
    """A ZF net's conv1 (`features.conv1`)."""
    conv = dict(module.named_modules()).get("features.conv1")
    if not isinstance(conv, nn.Conv2d):
        raise InvalidRequestError("the model has no features.conv1 convolution (not a ZF net)")
    return conv


def first_conv(engine: Any) -> nn.Conv2d:
    """The conv1 of an Engine's ZF net."""
    return conv1_of(engine.model.module)


def spectrum_measures(weight: torch.Tensor, stride: int) -> dict[str, Any]:
    """Mean radial spectrum, bands, dominant-band counts and aliased share of a conv weight's filters."""
    power = filter_power(weight)
    live = power.sum(axis=(1, 2)) > 0
    rings = radial_spectrum(power)[live]
    mean_rings = rings.mean(axis=0) if len(rings) else np.zeros(RINGS)
    per_filter_bands = bands_from_rings(rings)
    aliased = aliased_share(power[live], stride)
    dominant = per_filter_bands.argmax(axis=1) if len(per_filter_bands) else np.zeros(0, int)
    return {
        "radial": [float(v) for v in mean_rings],
        "bands": [float(v) for v in bands_from_rings(mean_rings)],
        "dominant_counts": [int((dominant == k).sum()) for k in range(3)],
        "aliased": float(aliased.mean()) if len(aliased) else 0.0,
    }


def learned_part(weight: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Per filter, W − c·W₀ with c = ⟨W, W₀⟩ / ‖W₀‖²: what is left of W once its initialisation,
    rescaled as well as it can be, is taken out (orthogonal to W₀)."""
    dims = tuple(range(1, weight.dim()))
    scale = (weight * initial).sum(dim=dims, keepdim=True) / initial.pow(2).sum(dim=dims, keepdim=True).clamp_min(1e-24)
    return weight - scale * initial


def measure_first_layer(
    engine: Any,
    images: ImageSet,
    batch_size: int = 128,
    task: Task | None = None,
    initial: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Dead, collapsed, spectrum, bands and aliasing of a ZF net's conv1 (an Engine on a checkpoint).

    With the layer's `initial` weight W₀ (the run's seeded initialisation), also how far training
    moved it (`moved`: ‖W − W₀‖ / ‖W₀‖) and the spectrum of what it learned (`learned`): per filter
    the part of W that is not a rescaled W₀, W − c·W₀ with c = ⟨W, W₀⟩ / ‖W₀‖² (the RMS cap and
    weight decay rescale the random initialisation, which would otherwise count as white noise
    "learned"), and that part's share of the filter energy (`learned_share`, ‖W − c·W₀‖² / ‖W‖²)."""
    conv = first_conv(engine)
    geometry = _conv_geometry(conv)
    dead_layers = _dead_per_layer(engine, images, batch_size, task)
    conv1 = next(row for row in dead_layers if row.layer == "features.conv1")
    collapsed, rms = collapsed_filters(conv.weight)
    map_side = engine.layer("features.conv1").height
    measures: dict[str, Any] = {
        "conv1": {**geometry, "map": int(map_side)},
        "dead": {
            "count": len(conv1.dead),
            "channels": conv1.dead,
            "measured_at": conv1.measured_at,
            "per_layer": {row.layer: len(row.dead) for row in dead_layers},
        },
        "collapsed": {"count": len(collapsed), "channels": collapsed, "rms": [float(v) for v in rms]},
        **spectrum_measures(conv.weight, geometry["stride"]),
        "aliased_white": float(aliased_mask(geometry["stride"]).mean()),
    }
    if initial is not None:
        weight = conv.weight.detach().double().cpu()
        start = initial.detach().double().cpu()
        measures["moved"] = float((weight - start).norm() / start.norm().clamp_min(1e-12))
        residual = learned_part(weight, start)
        measures["learned_share"] = float(residual.pow(2).sum() / weight.pow(2).sum().clamp_min(1e-24))
        measures["learned"] = spectrum_measures(residual, geometry["stride"])
    return measures


def stride_study(
    config: TrainConfig,
    out: str | Path,
    first_layers: Sequence[str] = ("zf", "alexnet"),
    *,
    device: str = "auto",
    resume: bool = True,
    batch_size: int = 128,
    task: Task | None = None,
    echo: Echo | None = None,
    data: ImageSet | None = None,
) -> StrideResult:
    """Train one run per first layer into `out/runs/<name>` and compare their conv1 (module docstring)."""
    from convscope.engine import Engine
    from convscope.studies.checkpoints import load_checkpoint
    from convscope.studies.train import epoch_label

    names = parse_first_layers(first_layers)
    began = time.perf_counter()
    folder = Path(out)
    images = data if data is not None else load_dataset(config.data)
    wanted = parse_checkpoint_epochs(config.checkpoint_epochs, config.epochs)
    base = (
        config
        if float(config.epochs) in wanted
        else replace(config, checkpoint_epochs=f"{config.checkpoint_epochs},{config.epochs}")
    )
    measured_on = select_split(images, base, "all")
    say = echo or (lambda _text: None)
    variants: list[dict[str, Any]] = []
    mosaics: dict[str, Image.Image] = {}
    fingerprints = set()
    for name in names:
        run_config = replace(base, first_layer=name)
        say(f"training the {name} first layer -> {folder / 'runs' / name}")
        result = train(
            run_config, folder / "runs" / name, device=device, resume=resume, task=task, echo=echo, data=images
        )
        fingerprints.add(result.log["dataset"]["fingerprint"])
        final = folder / "runs" / name / f"epoch-{epoch_label(config.epochs)}.pt"
        engine = Engine(load_checkpoint(final), device_name=device, cache_size=1)
        initial = conv1_of(build_model(run_config, len(images.classes))).weight  # the run's seeded init
        measures = measure_first_layer(engine, measured_on, batch_size, initial=initial)
        mosaics[name] = variant_mosaic(first_conv(engine).weight, columns=8)
        variants.append(
            {
                "first_layer": name,
                "run": f"runs/{name}",
                "checkpoint": final.name,
                "mosaic": f"stride-{name}.png",
                "parameters": result.log["parameters"],
                "fingerprint": result.log["dataset"]["fingerprint"],
                "val_top1": result.final["val"]["top1"],
                "train_top1": result.final["train"]["top1"],
                **measures,
            }
        )
        del engine
    if len(fingerprints) != 1:
        raise ConvscopeError("the variants did not train on the same images (their fingerprints differ)")
    shared = {k: v for k, v in base.to_dict().items() if k != "first_layer"}
    document: dict[str, Any] = {
        "study": "stride",
        "version": FORMAT_VERSION,
        "finished": True,
        "title": f"First layer stride (Fig. 6): {' vs '.join(names)}, {base.arch} on {dataset_id(base.data)}",
        "config": shared,
        "images": {"dataset": images.name, "count": len(measured_on), "split": "all"},
        "spectrum": {
            "size": SPECTRUM_SIZE,
            "ring_width": RING_WIDTH,
            "ring_edges": [k * RING_WIDTH for k in range(RINGS + 1)],
            "white": [float(v) for v in white_radial()],
            "bands": list(BAND_NAMES),
            "band_edges": [0.0, 1 / 3, 2 / 3],
            "white_bands": [float(v) for v in bands_from_rings(white_radial())],
        },
        "collapsed_fraction": COLLAPSED_FRACTION,
        "variants": variants,
        "image": "stride.png",
        "markdown": "stride.md",
        "seconds": time.perf_counter() - began,
    }
    combined = side_by_side(
        [
            (
                f"{v['first_layer']}: {v['conv1']['kernel']}x{v['conv1']['kernel']} stride {v['conv1']['stride']}",
                mosaics[v["first_layer"]],
            )
            for v in variants
        ]
    )
    return StrideResult(document, stride_markdown(document), mosaics, combined)


def stride_markdown(document: dict[str, Any]) -> str:
    """The side-by-side table: one row per first layer."""
    white = document["spectrum"]["white_bands"]
    header = [
        "First layer",
        "conv1 map",
        "Val top-1 %",
        "Dead (never > 0)",
        "Collapsed",
        "Low",
        "Mid",
        "High",
        "Aliased (white)",
    ]
    rows = []
    for v in document["variants"]:
        c = v["conv1"]
        rows.append(
            [
                f"{v['first_layer']}: {c['kernel']}×{c['kernel']}/{c['stride']}",
                f"{c['map']}×{c['map']}",
                f"{100 * v['val_top1']:.1f}",
                f"{v['dead']['count']} / {c['channels']}",
                f"{v['collapsed']['count']} / {c['channels']}",
                f"{v['bands'][0]:.3f}",
                f"{v['bands'][1]:.3f}",
                f"{v['bands'][2]:.3f}",
                f"{v['aliased']:.3f} ({v['aliased_white']:.3f})",
            ]
        )
    rows.append(["white-noise kernel", "", "", "", "", *(f"{w:.3f}" for w in white), ""])
    config = document["config"]
    note = (
        f"\n{config['arch']} on {document['images']['dataset']}, {config['epochs']} epochs, seed {config['seed']}; "
        f"dead and collapsed over {document['images']['count']} images; bands: mean share of filter energy at "
        "ρ < 1/3, 1/3–2/3, ≥ 2/3 of Nyquist; aliased: share above the output grid's Nyquist (1/(2·stride)).\n"
    )
    learned_rows = [
        [
            v["first_layer"],
            f"{v['moved']:.3f}",
            f"{v['learned_share']:.3f}",
            *(f"{x:.3f}" for x in v["learned"]["bands"]),
            f"{v['learned']['aliased']:.3f} ({v['aliased_white']:.3f})",
        ]
        for v in document["variants"]
        if "learned" in v
    ]
    learned = (
        "\nWhat training added: per filter W − c·W₀, the final conv1 less its best-rescaled seeded "
        "initialisation W₀ (share: of the final filters' energy):\n\n"
        + markdown_table(
            ["First layer", "‖W − W₀‖ / ‖W₀‖", "Share", "Low", "Mid", "High", "Aliased (white)"], learned_rows
        )
        if learned_rows
        else ""
    )
    spectrum = document["spectrum"]
    edges = spectrum["ring_edges"]
    ring_rows = [
        [
            f"{edges[k]:.3f}–{edges[k + 1]:.3f}",
            *(f"{v['radial'][k]:.4f}" for v in document["variants"]),
            f"{spectrum['white'][k]:.4f}",
        ]
        for k in range(len(spectrum["white"]))
    ]
    rings = markdown_table(["ρ (of Nyquist)", *(v["first_layer"] for v in document["variants"]), "white"], ring_rows)
    return (
        f"# {document['title']}\n\n"
        + markdown_table(header, rows)
        + note
        + learned
        + "\nMean radial power spectrum of the conv1 filters (share of energy per ring of ρ):\n\n"
        + rings
    )
