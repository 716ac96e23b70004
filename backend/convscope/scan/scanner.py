"""The scan itself: read the images in batches, run the model, keep each channel's top-k.

`run_scan` is the one entry point for the CLI (single process or under torchrun),
the server's jobs and Python users. Work is cut into batches of the global image
list; a process scans batch `next + round·world + rank` in each round, and every
`checkpoint_images` images (and at the end) the processes merge their top-k and
rank 0 commits a checkpoint to the store. A `convscope.tasks.Task` sees progress
(rank 0) and may stop the scan: at the next checkpoint the work so far is
committed and `Cancelled` is raised; `resume=True` later continues from there to
the same result an uninterrupted scan gives.

Nothing waits on the device per batch: reader workers (`convscope.scan.readers`)
read, hash and decode ahead of the model into page-locked memory, the copies to the
GPU are asynchronous, and the running top-k stays on the device until a checkpoint
copies it to the host. A file that cannot be read or decoded is skipped: logged, kept
with its reason in the store's image list and the manifest's `skipped` list.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from convscope.engine import Engine, LayerInfo
from convscope.errors import ConvscopeError, InvalidRequestError
from convscope.layer_names import resolve_name
from convscope.scan.distributed import LocalContext
from convscope.scan.readers import (
    DECODERS,
    Batch,
    ImageReader,
    collate,
    default_batch_size,
    default_workers,
    model_input,
)
from convscope.scan.store import (
    ImageRecord,
    ImageSource,
    Manifest,
    Progress,
    ScanConfig,
    ScanStore,
    ScanStoreError,
)
from convscope.scan.topk import TopK
from convscope.scan.walk import IMAGE_EXTENSIONS, list_images, sha256_file
from convscope.tasks import Cancelled, Task, as_task

if TYPE_CHECKING:
    from convscope.scan.gpudecode import DeviceDecoder

log = logging.getLogger("convscope.scan")

_PASS_THROUGH = ("Identity", "Dropout", "Dropout2d", "AlphaDropout", "DropPath", "Flatten")
DEFAULT_MAX_LAYERS = 8


# ---- what to scan ------------------------------------------------------------------------------
def folder_source(folder: str | Path, *, confine: bool = False) -> ImageSource:
    root = Path(folder).resolve()
    paths = tuple(list_images(folder, confine=confine))
    return ImageSource("folder", str(root), paths, paths)


def samples_source() -> ImageSource:
    """The bundled sample photos (ids are the sample ids)."""
    from convscope.samples import list_samples

    samples = list_samples()
    return ImageSource("samples", None, tuple(str(s.path) for s in samples), tuple(s.id for s in samples))


def default_layers(layers: Sequence[LayerInfo], limit: int = DEFAULT_MAX_LAYERS) -> list[str]:
    """A handful of representative layers: one per spatial resolution (roughly one per stage).

    For each resolution (1×1 and global layers, pass-through layers and wrappers that span
    more than two resolutions left out) the layer that sees the most of the input
    (largest receptive field), preferring stage-level modules (fewest dots in the name)
    and then the later one; at most `limit`, spread evenly.
    """
    spans: dict[str, set[tuple[int, int]]] = {}
    for info in layers:  # the resolutions inside each container module
        parts = info.name.split(".")
        for depth in range(1, len(parts)):
            spans.setdefault(".".join(parts[:depth]), set()).add((info.height, info.width))
    groups: dict[tuple[int, int], list[tuple[int, LayerInfo]]] = {}
    for order, info in enumerate(layers):
        if info.kind in _PASS_THROUGH or info.receptive_field.global_ or info.height * info.width <= 1:
            continue
        if len(spans.get(info.name, set())) > 2:  # a whole-network wrapper such as `features`, not a stage
            continue
        groups.setdefault((info.height, info.width), []).append((order, info))
    picked = []
    for members in groups.values():
        _, best = max(members, key=lambda m: (m[1].receptive_field.size, -m[1].name.count("."), m[0]))
        picked.append(best)
    picked.sort(key=lambda info: (-info.height * info.width, info.receptive_field.size))
    if len(picked) > limit:
        step = (len(picked) - 1) / (limit - 1)
        picked = [picked[round(i * step)] for i in range(limit)]
    return [info.name for info in picked]


def resolve_layers(engine: Engine, layers: str | Sequence[str] | None) -> list[LayerInfo]:
    """`None`/"" -> the default handful, "all" -> every layer, else a list or comma-separated names."""
    if layers is None or layers == "" or layers == "default":
        names = default_layers(engine.layers())
    elif layers == "all":
        names = [info.name for info in engine.layers()]
    else:
        raw = layers.split(",") if isinstance(layers, str) else list(layers)
        names = list(dict.fromkeys(name.strip() for name in raw if name.strip()))
    if not names:
        raise InvalidRequestError("no layers to scan")
    known = [info.name for info in engine.layers()]
    return [engine.layer(resolve_name(name, known, model=engine.name)) for name in names]  # 404 for an unknown one


def model_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}\n".encode())
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def scan_config(
    engine: Engine,
    source: ImageSource,
    layers: Sequence[LayerInfo],
    top: int,
    weights: str | None = None,
    decoder: str = "pil",
) -> ScanConfig:
    if top < 1:
        raise InvalidRequestError("--top must be at least 1")
    weights_path = str(Path(weights).resolve()) if weights else None
    return ScanConfig(
        model=engine.name,
        weights=weights_path,
        weights_sha256=sha256_file(weights_path) if weights_path else None,
        fingerprint=model_fingerprint(engine.model.module),
        input_size=engine.input_size,
        mean=tuple(float(v) for v in engine.model.mean),
        std=tuple(float(v) for v in engine.model.std),
        crop_pct=float(engine.model.crop_pct),
        layers=tuple(layers),
        top=top,
        source_kind=source.kind,
        source_root=source.root,
        image_count=len(source.paths),
        image_list_sha256=source.digest(),
        decoder=decoder,
    )


# ---- reading images: convscope.scan.readers ------------------------------------------------------
def _decoded(
    batch: Batch, decoder: DeviceDecoder | None, device: torch.device
) -> tuple[torch.Tensor | None, list[int]]:
    """The batch's N×S×S×3 uint8 pixels (on `device` when the GPU decoded some) and their image indices;
    files the GPU decoder could not take get their reason in the batch's records."""
    if not batch.raw:
        return batch.tensor, batch.indices
    if decoder is None:
        raise RuntimeError("a batch holds undecoded JPEGs but the scan has no device decoder")
    decoded = decoder.decode([data for _, data in batch.raw])
    records = {record.index: record for record in batch.records}
    parts = [batch.tensor.to(device, non_blocking=True)] if batch.tensor is not None else []
    indices = list(batch.indices)
    for (index, _), result in zip(batch.raw, decoded, strict=True):
        if isinstance(result, str):
            records[index].error = result
        else:
            parts.append(result.unsqueeze(0))
            indices.append(index)
    return (torch.cat(parts) if parts else None), indices


# ---- the scan ------------------------------------------------------------------------------------
@dataclass
class ScanResult:
    directory: Path
    status: str  # "complete" or "unchanged" (was already complete); a stopped scan raises Cancelled
    images: int
    scanned: int  # images read by this run (all processes)
    skipped: int  # unreadable images in the whole scan
    seconds: float
    layers: list[str]

    @property
    def images_per_second(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "status": self.status,
            "images": self.images,
            "scanned": self.scanned,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "layers": self.layers,
        }


@dataclass
class _Plan:
    action: str  # "scan", "done" or "error"
    next_batch: int = 0
    batch_size: int = 0
    images_done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    digest: str = ""
    message: str = ""


def _different_settings(store: ScanStore, old: ScanConfig, new: ScanConfig, different: list[str]) -> str:
    """Why the store at `store` cannot take this scan, naming both decoders when they differ."""
    if "decoder" not in different:
        return (
            f"{store.directory} holds a scan with different settings ({', '.join(different)}); "
            "use another --out directory (or delete this one)"
        )
    others = [name for name in different if name != "decoder"]
    also = f"; its other settings differ too ({', '.join(others)})" if others else ""
    return (
        f"{store.directory} was scanned with the {old.decoder!r} decoder, not {new.decoder!r}: their pixels "
        f"differ, so the two would not make one scan; resume it with --decoder {old.decoder}, or use another "
        f"--out directory{also}"
    )


def _open_store(
    store: ScanStore,
    config: ScanConfig,
    source: ImageSource,
    batch_size: int | None,
    resume: bool,
    replace: bool,
    extra: dict[str, Any] | None,
    device: torch.device,
) -> tuple[Manifest, _Plan]:
    """Create, resume or recognise the scan at `store` (rank 0, lock held)."""
    if store.exists():
        manifest = store.manifest()
        different = manifest.config.differences(config)
        if different and replace:
            log.info("replacing the scan at %s (different %s)", store.directory, ", ".join(different))
            shutil.rmtree(store.directory / "cache", ignore_errors=True)
            store.manifest_path.unlink()
        elif different:
            raise ScanStoreError(_different_settings(store, manifest.config, config, different))
        elif manifest.complete:
            done = Progress(**vars(manifest.progress))
            return manifest, _Plan("done", done.next_batch, manifest.batch_size, done.images_done, done.skipped)
        elif not resume:
            raise ScanStoreError(f"{store.directory} holds an unfinished scan; pass --resume to continue it")
        else:
            if batch_size is not None and manifest.batch_size != batch_size:
                log.warning("resuming with the scan's batch size %d (not %d)", manifest.batch_size, batch_size)
            progress = store.progress()
            return manifest, _Plan(
                "scan",
                progress.next_batch,
                manifest.batch_size,
                progress.images_done,
                progress.skipped,
                progress.seconds,
            )
    size = default_batch_size(device) if batch_size is None else batch_size
    manifest = store.create(config, source, size, extra)
    return manifest, _Plan("scan", 0, size)


def check_writable(store: ScanStore) -> None:
    """Refuse an output the scan could not write (ScanStoreError naming the path)."""
    import os
    import tempfile

    directory = store.directory
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the folder that the scan would create its directory in
    try:
        if not probe.is_dir():
            raise ScanStoreError(f"cannot write the scan to {directory}: {probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
        for path in (store.manifest_path, store.database_path):
            if path.exists():
                with open(path, "r+b"):
                    pass
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(probe))
    except OSError as exc:
        where = exc.filename or probe
        raise ScanStoreError(f"cannot write the scan to {directory}: {where}: {exc.strerror or exc}") from None


def run_scan(
    engine: Engine,
    source: ImageSource,
    out: str | Path,
    *,
    layers: str | Sequence[str] | None = None,
    top: int = 9,
    batch_size: int | None = None,
    workers: int | None = 0,
    decoder: str = "pil",
    resume: bool = False,
    weights: str | None = None,
    context: LocalContext | None = None,
    task: Task | None = None,
    checkpoint_images: int = 1024,
    replace: bool = False,
    wait_lock: bool = False,
    extra: dict[str, Any] | None = None,
) -> ScanResult:
    """Scan `source` into the store at `out` (see the module docstring); rank 0 reports progress.

    `batch_size=None`: 32 on the CPU, 128 on a GPU (a resumed scan keeps its own).
    `workers`: reader worker processes (0: read in this process; None: the cores this
    process may use, shared among torchrun's processes on this machine, less one).
    `decoder`: "pil" (Pillow on the CPU, the default) or "nvjpeg" (on the GPU; needs
    CUDA); it is recorded, and a scan is resumed only with its own decoder.
    `replace=True` replaces a store made with other settings instead of refusing it
    (the server does this for its own sample scans). When `task.should_stop()` turns
    true the work done so far is checkpointed and `Cancelled` is raised; a later
    `resume=True` run continues it.
    """
    if batch_size is not None and batch_size < 1:
        raise InvalidRequestError("--batch-size must be at least 1")
    if workers is not None and workers < 0:
        raise InvalidRequestError("--workers must be 0 or more")
    if decoder not in DECODERS:
        raise InvalidRequestError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "nvjpeg":
        from convscope.scan.gpudecode import check_available

        check_available(engine.device)
    context = context or LocalContext(engine.device_name)
    started = time.perf_counter()
    store = ScanStore(out)
    infos = resolve_layers(engine, layers)
    names = [info.name for info in infos]
    if not source.paths:
        where = source.root or "the image list"
        raise InvalidRequestError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {where}")
    digest = source.digest()
    if context.is_main:
        check_writable(store)  # a read-only output fails now, naming the path, not after a batch

    lock = store.lock(wait=wait_lock) if context.is_main else None
    plan: _Plan
    manifest: Manifest | None = None
    try:
        if lock is not None:
            try:
                lock.__enter__()
                config = scan_config(engine, source, infos, top, weights, decoder)
                manifest, plan = _open_store(store, config, source, batch_size, resume, replace, extra, engine.device)
                plan.digest = digest
            except ConvscopeError as exc:
                plan = _Plan("error", message=str(exc))
        else:
            plan = _Plan("scan")
        plan = context.broadcast(plan)
        if plan.action == "error":
            raise ScanStoreError(plan.message)
        if context.any(plan.digest != digest):  # every process stops, not only the one that differs
            raise ScanStoreError("the processes see different image lists; is the folder changing?")
        total_images = len(source.paths)
        if plan.action == "done":
            if context.is_main:
                as_task(task).report(plan.images_done, total_images)
            return ScanResult(
                store.directory, "unchanged", total_images, 0, plan.skipped, time.perf_counter() - started, names
            )
        return _scan(
            engine,
            source,
            store,
            manifest,
            plan,
            infos,
            top,
            default_workers() if workers is None else workers,
            decoder,
            context,
            task,
            checkpoint_images,
            started,
        )
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _scan(
    engine: Engine,
    source: ImageSource,
    store: ScanStore,
    manifest: Manifest | None,
    plan: _Plan,
    infos: Sequence[LayerInfo],
    top: int,
    workers: int,
    decoder: str,
    context: LocalContext,
    task: Task | None,
    checkpoint_images: int,
    started: float,
) -> ScanResult:
    names = [info.name for info in infos]
    total_images = len(source.paths)
    batch_size = plan.batch_size
    total_batches = math.ceil(total_images / batch_size)
    world, rank = context.world, context.rank
    remaining = max(0, total_batches - plan.next_batch)
    rounds = math.ceil(remaining / world)
    every = max(1, math.ceil(checkpoint_images / (batch_size * world)))
    device = engine.device
    on_cuda = device.type == "cuda"

    def batch_range(batch: int) -> list[int]:
        return list(range(batch * batch_size, min(total_images, (batch + 1) * batch_size)))

    def images_before(batch: int) -> int:
        return min(total_images, batch * batch_size)

    mine = [plan.next_batch + r * world + rank for r in range(rounds)]
    mine = [batch for batch in mine if batch < total_batches]
    # the running top-k lives on the model's device; the host sees it at checkpoints only
    states = {name: state.to(device) for name, state in (store.load_state() if context.is_main else {}).items()}
    for info in infos:
        if info.name not in states:
            states[info.name] = TopK.empty(info.channels, top, info.width, device=device)
    device_decoder = None
    if decoder == "nvjpeg":
        from convscope.scan.gpudecode import DeviceDecoder

        device_decoder = DeviceDecoder(device, engine.input_size, engine.model.crop_pct)
    dataset = ImageReader(source, engine.input_size, engine.model.crop_pct, decoder)
    loader = DataLoader(
        dataset,
        batch_sampler=[batch_range(batch) for batch in mine],
        num_workers=workers,
        collate_fn=collate,
        pin_memory=on_cuda,
        persistent_workers=False,  # one pass over the scan's batches: the same workers read all of them
        prefetch_factor=4 if workers > 0 else None,
    )
    batches = iter(loader)
    pending: list[ImageRecord] = []
    done_images, skipped, seconds_before = plan.images_done, plan.skipped, plan.seconds
    scanned_now = 0
    run_started = time.perf_counter()
    reporter = as_task(task)
    if context.is_main:
        reporter.report(done_images, total_images)

    def checkpoint(next_batch: int) -> None:
        nonlocal skipped, done_images
        context.merge_topk(states)
        gathered = context.all_gather_objects(pending)
        if context.is_main and manifest is not None:
            records = [record for part in gathered for record in part]
            for record in records:
                if record.error is not None:
                    skipped += 1
                    manifest.add_skipped(record.index, source.ids[record.index], record.error)
            done_images = images_before(next_batch)
            state = Progress(
                next_batch=next_batch,
                batches=total_batches,
                images_done=done_images,
                skipped=skipped,
                seconds=seconds_before + time.perf_counter() - run_started,
            )
            store.checkpoint(manifest, state, {name: s.host() for name, s in states.items()}, records)
        pending.clear()

    stopped = False
    last_done: int | None = None  # the last batch whose images are all in `states` (one process)
    try:
        for round_ in range(rounds):
            if round_ < len(mine):
                batch = next(batches)
                snapshot = {name: (s.values, s.images, s.positions) for name, s in states.items()}
                try:
                    pixels, indices = _decoded(batch, device_decoder, device)
                    if pixels is not None:
                        order = torch.tensor(indices, dtype=torch.int64)
                        if on_cuda:
                            order = order.pin_memory().to(device, non_blocking=True)
                        _, outputs = engine.forward_batch(model_input(pixels, engine), names)
                        for name in names:
                            states[name].update(outputs[name], order)
                except KeyboardInterrupt:
                    for name, (values, images, positions) in snapshot.items():  # updates make new tensors
                        states[name].values, states[name].images, states[name].positions = values, images, positions
                    raise
                for record in batch.records:
                    if record.error is not None:
                        log.warning("skipped %s: %s", source.ids[record.index], record.error)
                pending.extend(batch.records)
                last_done = mine[round_]
            first_next = plan.next_batch + (round_ + 1) * world
            scanned_now = images_before(min(first_next, total_batches)) - images_before(plan.next_batch)
            if context.is_main:
                reporter.report(plan.images_done + scanned_now, total_images)
            last = round_ == rounds - 1
            # asked to stop (cancel, shutdown): checkpoint after this batch, not at the next periodic one
            stop = context.any(reporter.should_stop())
            if last or stop or (round_ + 1) % every == 0:
                checkpoint(min(first_next, total_batches))
                if stop and not last:
                    stopped = True
                    break
    except KeyboardInterrupt:
        # One process: keep what is done (Ctrl-C). Under torchrun the others cannot join
        # a checkpoint any more; the last one stands.
        if world == 1 and pending and last_done is not None:
            checkpoint(last_done + 1)
        raise
    finally:
        del batches
    if rounds == 0:
        checkpoint(total_batches)
    seconds = time.perf_counter() - started
    if stopped:  # the checkpoint above holds everything scanned so far: resumable
        raise Cancelled(done_images, total_images, "scan")
    if context.is_main and manifest is not None:
        store.finish(manifest, {name: s.host() for name, s in states.items()})
    return ScanResult(store.directory, "complete", total_images, scanned_now, skipped, seconds, names)
