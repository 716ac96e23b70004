"""Top-k scan throughput (paper Fig. 2): `run_scan` against a bare batched forward pass, and 1 vs 2 processes.

On one folder of JPEG photos (variants of the bundled samples: random crops, flips,
400–640 px), in one run:

- scan: `run_scan(engine, folder, out, layers=<default handful>, top=9, batch_size=B,
  workers=W)`: listing, reading and hashing the files, decoding, resizing and
  normalising, the forward pass with the layer hooks, the per-channel top-k updates
  and the SQLite checkpoints: everything a user waits for after the model is loaded;
- bare: the same images, decoded and preprocessed beforehand, through the bare module
  in batches of B under `torch.no_grad()`: no hooks, no files, no top-k. The floor;
- bare + decode: the bare pass, decoding and preprocessing the files in the loop (what
  any scanner has to do in one process), for reference.

They are interleaved over `--rounds` so a slow spell on a shared machine hits all of
them, and each is reported at its best, by wall time and by CPU time (this process and
its reader processes; on a shared, loaded machine the steadier of the two). The target
is scan ≥ 0.85 × bare.

Then `convscope scan` runs as a subprocess under `torchrun --standalone --nproc-per-node P`
for P = 1 and 2 (the same folder, batch size and layers); the figure is the scan's own
time from the manifest (`progress.seconds`: first batch to last checkpoint, without
start-up and model loading). torchrun gives each of 2+ processes one thread
(OMP_NUM_THREADS=1); a single process uses every core, and is also timed with one thread
to tell the two effects apart.

    .venv/bin/python benchmarks/scan.py                     # the recorded run
    .venv/bin/python benchmarks/scan.py --images 32 --rounds 1 --processes 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.engine import Engine
from convscope.images import load_image_file, normalise, resize_and_crop
from convscope.models import load_model
from convscope.samples import list_samples, load_sample
from convscope.scan import default_layers, folder_source, run_scan


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    samples = [load_sample(sample.id) for sample in list_samples()]
    for i in range(count):
        image = samples[i % len(samples)]
        width, height = image.size
        scale = rng.uniform(0.6, 1.0)
        w, h = max(64, int(width * scale)), max(64, int(height * scale))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        side = int(rng.integers(400, 641))
        crop.thumbnail((side, side), Image.Resampling.LANCZOS)
        crop.save(folder / f"photo{i:04d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the scan's reader processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measured(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    function()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def bare(engine: Engine, batches: list[torch.Tensor]) -> None:
    module = engine.model.module
    with torch.no_grad():
        for batch in batches:
            module(batch.to(engine.device))
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def bare_decode(engine: Engine, files: list[Path], batch_size: int) -> None:
    module, size, mean, std = engine.model.module, engine.input_size, engine.model.mean, engine.model.std
    with torch.no_grad():
        for first in range(0, len(files), batch_size):
            tensors = [
                normalise(resize_and_crop(load_image_file(f), size), mean, std)[0]
                for f in files[first : first + batch_size]
            ]
            module(torch.stack(tensors).to(engine.device))
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def scan_once(engine: Engine, folder: Path, work: Path, layers: list[str], batch_size: int, workers: int) -> None:
    out = work / f"scan-{time.perf_counter_ns()}"
    result = run_scan(engine, folder_source(folder), out, layers=layers, top=9, batch_size=batch_size, workers=workers)
    assert result.status == "complete" and result.skipped == 0
    shutil.rmtree(out)


def torchrun_scan(
    processes: int, threads: int | None, args: argparse.Namespace, folder: Path, work: Path, layers: list[str]
) -> float:
    """`convscope scan` under torchrun; `threads` sets OMP_NUM_THREADS (None: torchrun's default)."""
    out = work / f"torchrun-{processes}-{threads}"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", str(processes), "-m", "convscope", "scan"]
    command += ["--model", args.model, "--images", str(folder), "--out", str(out), "--layers", ",".join(layers)]
    command += ["--batch-size", str(args.batch_size), "--device", args.device]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"torchrun with {processes} processes failed:\n{done.stderr[-3000:]}")
    seconds = float(json.loads((out / "manifest.json").read_text())["progress"]["seconds"])
    shutil.rmtree(out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="reader processes of the in-process scan")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", default="1,2", help="torchrun process counts ('' to skip)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    engine = Engine(load_model(args.model), device_name=args.device)
    layers = default_layers(engine.layers())
    with tempfile.TemporaryDirectory(prefix="convscope-bench-scan-") as temp:
        work = Path(temp)
        folder = work / "photos"
        folder.mkdir()
        make_photos(folder, args.images)
        files = sorted(folder.iterdir())
        size, mean, std = engine.input_size, engine.model.mean, engine.model.std
        tensors = [normalise(resize_and_crop(load_image_file(f), size), mean, std)[0] for f in files]
        batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
        bare(engine, batches[:1])  # warm-up
        runs: dict[str, Callable[[], object]] = {
            "bare": lambda: bare(engine, batches),
            "scan": lambda: scan_once(engine, folder, work, layers, args.batch_size, args.workers),
            "bare + decode": lambda: bare_decode(engine, files, args.batch_size),
        }
        walls: dict[str, list[float]] = {name: [] for name in runs}
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                wall, cpu = measured(run)
                walls[name].append(wall)
                cpus[name].append(cpu)

        print(f"# scan benchmark: {args.model} on {args.device}, {args.images} JPEG photos, batch {args.batch_size}")
        print(f"# layers: {', '.join(layers)}; top-9; scan reader workers: {args.workers}")
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at the end; "
            f"best of {args.rounds} (interleaved)"
        )
        print(f"{'':14s} {'wall s':>7s} {'img/s':>6s} {'vs bare':>7s} {'CPU s':>7s} {'vs bare':>7s}   all wall runs")
        wall_best = {name: min(values) for name, values in walls.items()}
        cpu_best = {name: min(values) for name, values in cpus.items()}
        for name in ("bare", "bare + decode", "scan"):
            wall, cpu = wall_best[name], cpu_best[name]
            spread = ", ".join(f"{t:.1f}" for t in walls[name])
            print(
                f"{name:14s} {wall:7.2f} {args.images / wall:6.1f} {wall_best['bare'] / wall:6.2f}× "
                f"{cpu:7.2f} {cpu_best['bare'] / cpu:6.2f}×   {spread}"
            )
        ratio, cpu_ratio = wall_best["bare"] / wall_best["scan"], cpu_best["bare"] / cpu_best["scan"]
        verdict = "meets" if ratio >= 0.85 else "misses"
        print(
            f"scan throughput = {ratio:.2f} × bare forward by wall time ({verdict} the 0.85× target), {cpu_ratio:.2f} × by CPU time"
        )

        counts = [int(p) for p in args.processes.split(",") if p.strip()]
        if counts:
            # (processes, OMP threads per process): torchrun gives 2+ processes one thread each;
            # one process with every core, and with one thread, for comparison
            configs: list[tuple[int, int | None]] = []
            for processes in counts:
                configs += [(1, None), (1, 1)] if processes == 1 else [(processes, None)]
            spans: dict[tuple[int, int | None], list[float]] = {config: [] for config in configs}
            for _ in range(args.rounds):  # interleaved, like the above
                for processes, threads in configs:
                    spans[(processes, threads)].append(torchrun_scan(processes, threads, args, folder, work, layers))
            print(
                f"\n# convscope scan under torchrun (the scan's own seconds, from its manifest; best of {args.rounds})"
            )
            first = min(spans[configs[0]])
            for processes, threads in configs:
                seconds = min(spans[(processes, threads)])
                spread = ", ".join(f"{t:.1f}" for t in spans[(processes, threads)])
                each = "1 thread" if threads == 1 or processes > 1 else f"{os.cpu_count()} threads"
                label = f"{processes} process{'es' if processes > 1 else ''} × {each}"
                print(
                    f"{label:24s} {seconds:7.2f} s {args.images / seconds:6.1f} img/s "
                    f"{first / seconds:5.2f}× vs the first   (all runs: {spread} s)"
                )


if __name__ == "__main__":
    main()
