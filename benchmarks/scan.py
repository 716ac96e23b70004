"""Top-k scan throughput (paper Fig. 2) on a large generated folder: `run_scan` against a bare forward pass.

A folder of `--images` JPEGs (default 20,000) is generated from the bundled sample photos
(random crops, flips and resizes to about `--image-size` px on the longer side, JPEG quality
85–95), in parallel on every core, into a temporary folder (or `--folder`, kept and reused
by later runs). Then, in one process, img/s for:

- bare: the model's bare module under `torch.no_grad()` on preprocessed batches (uint8 in
  page-locked memory, copied to the device and normalised there, cycling over a few distinct
  batches): no files, no hooks, no top-k. The floor;
- bare + decode: the bare pass, reading and decoding the files with Pillow in the loop (one
  process, one core: what any scanner does without reader processes);
- scan: `run_scan(engine, folder, out, layers=<default handful>, top=9, batch_size=B,
  workers=W, decoder=D)` end to end after the model is loaded (listing, reading and hashing,
  decoding, the forward pass with the layer hooks, the top-k updates, the SQLite
  checkpoints), for D = pil and, on CUDA, nvjpeg, each with W = 1 and W = N reader workers
  (N: `--workers`, default cores − 1).

Runs that use one core for decoding (bare + decode, scans with 1 worker) read the first
`--slow-images` files only (default: all), as their rate per image does not depend on the
folder's size; every row says how many images it timed. Each row is timed `--rounds`
times, interleaved, and reported at its best. `--processes 1,2` also times `convscope scan`
under `torchrun --standalone` (the scan's own seconds from its manifest).

    python benchmarks/scan.py                                    # the recorded run (20,000 images)
    python benchmarks/scan.py --device cuda --slow-images 2000   # a GPU machine (benchmarks/gpu.sh)
    python benchmarks/scan.py --images 64 --image-size 96 --rounds 1   # does it work?
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.engine import Engine
from convscope.images import load_image_file, normalise, resize_and_crop
from convscope.models import load_model
from convscope.samples import list_samples, load_sample
from convscope.scan import ImageSource, default_layers, folder_source, run_scan
from convscope.scan.readers import default_workers, model_input, pil_pixels

PER_FOLDER = 1000  # files per subfolder of the generated set

# ---- the generated folder -------------------------------------------------------------------------
_SAMPLES: list[Image.Image] = []


def _load_samples() -> None:
    _SAMPLES.extend(load_sample(sample.id) for sample in list_samples())


def _make_photo(job: tuple[Path, int, int]) -> None:
    folder, index, side = job
    rng = np.random.default_rng(index)
    image = _SAMPLES[index % len(_SAMPLES)]
    width, height = image.size
    scale = rng.uniform(0.5, 1.0)
    w, h = max(32, int(width * scale)), max(32, int(height * scale))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    crop = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    longer = int(side * rng.uniform(0.75, 1.25))
    factor = longer / max(crop.size)
    crop = crop.resize(
        (max(8, round(crop.width * factor)), max(8, round(crop.height * factor))), Image.Resampling.BILINEAR
    )
    path = folder / f"part{index // PER_FOLDER:03d}" / f"photo{index:06d}.jpg"
    crop.save(path, quality=int(rng.integers(85, 96)))


def make_photos(folder: Path, count: int, side: int) -> float:
    """`count` JPEGs under `folder` (kept when already there); the seconds it took."""
    started = time.perf_counter()
    done = folder / f".complete-{count}-{side}"
    if done.exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    for part in range((count + PER_FOLDER - 1) // PER_FOLDER):
        (folder / f"part{part:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(folder, index, side) for index in range(count)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1, initializer=_load_samples) as pool:
        for _ in pool.imap_unordered(_make_photo, jobs, chunksize=64):
            pass
    done.touch()
    return time.perf_counter() - started


def subset(source: ImageSource, count: int) -> ImageSource:
    return ImageSource(source.kind, source.root, source.paths[:count], source.ids[:count])


# ---- what is timed --------------------------------------------------------------------------------
def synchronise(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def bare(engine: Engine, batches: list[torch.Tensor], images: int, batch_size: int) -> None:
    module = engine.model.module
    with torch.no_grad():
        for number in range((images + batch_size - 1) // batch_size):
            module(model_input(batches[number % len(batches)], engine))
    synchronise(engine)


def bare_decode(engine: Engine, source: ImageSource, batch_size: int) -> None:
    module, size, crop_pct = engine.model.module, engine.input_size, engine.model.crop_pct
    with torch.no_grad():
        for first in range(0, len(source.paths), batch_size):
            pixels = [
                pil_pixels(source.file(i).read_bytes(), size, crop_pct)
                for i in range(first, min(len(source.paths), first + batch_size))
            ]
            module(model_input(torch.stack(pixels), engine))
    synchronise(engine)


def scan_once(
    engine: Engine, source: ImageSource, work: Path, layers: list[str], batch_size: int, workers: int, decoder: str
) -> None:
    out = work / f"scan-{time.perf_counter_ns()}"
    result = run_scan(
        engine, source, out, layers=layers, top=9, batch_size=batch_size, workers=workers, decoder=decoder
    )
    assert result.status == "complete" and result.skipped == 0, result
    shutil.rmtree(out)


def torchrun_scan(processes: int, args: argparse.Namespace, folder: Path, work: Path, layers: list[str]) -> float:
    """`convscope scan` under torchrun: the scan's own seconds (from its manifest)."""
    out = work / f"torchrun-{processes}"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", str(processes), "-m", "convscope", "scan"]
    command += ["--model", args.model, "--images", str(folder), "--out", str(out), "--layers", ",".join(layers)]
    command += ["--batch-size", str(args.batch_size), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"torchrun with {processes} processes failed:\n{done.stderr[-3000:]}")
    seconds = float(json.loads((out / "manifest.json").read_text())["progress"]["seconds"])
    shutil.rmtree(out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs to generate and scan")
    parser.add_argument("--image-size", type=int, default=400, help="about this many px on the longer side")
    parser.add_argument("--folder", default=None, help="generate into (and reuse) this folder, not a temporary one")
    parser.add_argument("--slow-images", type=int, default=None, help="images for the one-core runs (default all)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the scan's (32 CPU, 128 GPU)")
    parser.add_argument("--workers", type=int, default=None, help="N reader workers (default: cores − 1)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", default="", help="torchrun process counts, e.g. 1,2 ('' skips them)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    engine = Engine(load_model(args.model), device_name=args.device)
    cuda = engine.device.type == "cuda"
    args.batch_size = args.batch_size or (128 if cuda else 32)
    many = max(1, args.workers if args.workers is not None else default_workers())
    layers = default_layers(engine.layers())
    with tempfile.TemporaryDirectory(prefix="convscope-bench-scan-") as temp:
        work = Path(temp)
        folder = Path(args.folder) if args.folder else work / "photos"
        made = make_photos(folder, args.images, args.image_size)
        source = folder_source(folder)
        assert len(source.paths) == args.images, (len(source.paths), args.images)
        slow = subset(source, min(args.images, args.slow_images or args.images))
        size = engine.input_size
        first = [load_image_file(source.file(i)) for i in range(min(len(source.paths), 8 * args.batch_size))]
        pixels = [torch.from_numpy(np.array(resize_and_crop(image, size, engine.model.crop_pct))) for image in first]
        batches = [torch.stack(pixels[i : i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)]
        if cuda:
            batches = [batch.pin_memory() for batch in batches]
        expected = normalise(
            resize_and_crop(first[0], size, engine.model.crop_pct), engine.model.mean, engine.model.std
        )
        assert torch.allclose(model_input(batches[0][:1], engine).cpu(), expected, atol=1e-5)  # the scan's input

        runs: dict[str, tuple[int, Callable[[], object]]] = {
            "bare forward": (args.images, lambda: bare(engine, batches, args.images, args.batch_size)),
            "bare + decode (1 process)": (len(slow.paths), lambda: bare_decode(engine, slow, args.batch_size)),
        }
        decoders = ["pil", "nvjpeg"] if cuda else ["pil"]
        for decoder in decoders:
            for workers in sorted({1, many}):
                chosen = slow if workers == 1 else source
                runs[f"scan {decoder}, {workers} worker{'s' if workers > 1 else ''}"] = (
                    len(chosen.paths),
                    lambda chosen=chosen, workers=workers, decoder=decoder: scan_once(  # type: ignore[misc]
                        engine, chosen, work, layers, args.batch_size, workers, decoder
                    ),
                )
        for decoder in decoders:  # warm-up: cuDNN's kernel choice, nvJPEG's start-up, the page cache
            scan_once(
                engine, subset(source, min(args.images, 2 * args.batch_size)), work, layers, args.batch_size, 0, decoder
            )
        bare(engine, batches, args.batch_size, args.batch_size)

        walls: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (_, run) in runs.items():
                started = time.perf_counter()
                run()
                walls[name].append(time.perf_counter() - started)

        device = torch.cuda.get_device_name(engine.device) if cuda else platform.processor() or platform.machine()
        print(
            f"# scan benchmark: {args.model} on {args.device} ({device}), {args.images} JPEGs of ~{args.image_size} px"
        )
        print(f"# generated in {made:.1f} s on {os.cpu_count()} processes" if made else f"# reused {folder}")
        print(f"# batch {args.batch_size}; layers {', '.join(layers)}; top-9; N = {many} reader workers")
        print(
            f"# {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {os.getloadavg()[0]:.1f} at the end; best of {args.rounds}"
        )
        rates = {name: runs[name][0] / min(values) for name, values in walls.items()}
        floor = rates["bare forward"]
        print(f"{'':30s} {'images':>7s} {'best s':>8s} {'img/s':>8s} {'× bare':>7s}")
        for name, values in walls.items():
            print(f"{name:30s} {runs[name][0]:7d} {min(values):8.2f} {rates[name]:8.1f} {rates[name] / floor:6.2f}×")
        best = max((name for name in rates if name.startswith("scan")), key=lambda name: rates[name])
        verdict = "meets" if rates[best] >= 0.85 * floor else "misses"
        print(f"best scan: {best}, {rates[best] / floor:.2f} × bare ({verdict} the 0.85× target)")

        spans: dict[int, float] = {}
        for processes in [int(p) for p in args.processes.split(",") if p.strip()]:
            spans[processes] = min(torchrun_scan(processes, args, folder, work, layers) for _ in range(args.rounds))
            print(f"torchrun × {processes}: {spans[processes]:.2f} s, {args.images / spans[processes]:.1f} img/s")
        if args.json:
            record: dict[str, Any] = {
                "model": args.model,
                "device": device,
                "images": args.images,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "workers": many,
                "cpus": os.cpu_count(),
                "rows": {
                    name: {"images": runs[name][0], "seconds": min(walls[name]), "img_s": rates[name]} for name in runs
                },
                "torchrun_seconds": spans,
            }
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
