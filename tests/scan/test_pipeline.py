"""The scan pipeline: the top-k kept on the device, reader workers, corrupt files, the recorded
decoder, and the GPU decoder's code path (run on the CPU here, and on CUDA where there is one)."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.models import load_model
from convscope.samples import list_samples, load_sample
from convscope.scan import ScanStore, ScanStoreError, folder_source, run_scan
from convscope.scan.gpudecode import DeviceDecoder
from convscope.scan.readers import ImageReader, collate, gpu_decodable, pil_pixels
from convscope.scan.scanner import _decoded
from convscope.scan.topk import TopK, _select
from convscope.tasks import CallbackTask, Cancelled
from scan.conftest import SIZE, TINY, make_images, run_cli

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
LAYERS = "relu1,relu2,relu3"


def dump(directory: Path) -> tuple[list[tuple[object, ...]], ...]:
    with sqlite3.connect(directory / "scan.sqlite") as db:
        return (
            db.execute("SELECT * FROM topk ORDER BY layer, channel, rank").fetchall(),
            db.execute("SELECT * FROM images ORDER BY idx").fetchall(),
            db.execute("SELECT layer, vals, imgs, pos FROM state ORDER BY layer").fetchall(),
        )


def jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ---- the top-k on the device ----------------------------------------------------------------------
class HostTopK:
    """The bookkeeping as it was before the state moved to the device: state on the host, and
    each update's per-image maxima copied there (`.cpu()`, a synchronisation per layer and batch)."""

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.values = torch.full((channels, k), float("-inf"))
        self.images = torch.full((channels, k), -1, dtype=torch.int64)
        self.positions = torch.full((channels, k), -1, dtype=torch.int64)

    def update(self, activations: torch.Tensor, image_indices: list[int]) -> None:
        n, channels, height, width = activations.shape
        indices = torch.as_tensor(image_indices, dtype=torch.int64).reshape(-1)
        flat = torch.nan_to_num(activations.detach().reshape(n, channels, height * width).float(), nan=float("-inf"))
        best, where = flat.max(dim=2)
        values = torch.cat([self.values, best.cpu().t()], dim=1)
        images = torch.cat([self.images, indices.view(1, n).expand(channels, n)], dim=1)
        positions = torch.cat([self.positions, where.cpu().t().to(torch.int64)], dim=1)
        self.values, self.images, self.positions = _select(values, images, positions, self.k)


def maps_with_ties(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(30, 6, 5, 7, generator=generator)
    maps[4, 1] = maps[9, 1]  # two images tie exactly
    maps[12, 3, 2, 2] = float("nan")  # counts as -inf
    maps[20] = maps[20].round()  # an image whose maxima occur more than once
    return maps


def test_the_device_kept_state_on_the_cpu_equals_the_old_host_bookkeeping() -> None:
    maps = maps_with_ties(1)
    old, new = HostTopK(6, 5), TopK.empty(6, 5, 7, device="cpu")
    for start, size in ((0, 7), (7, 1), (8, 13), (21, 9)):
        indices = list(range(start, start + size))
        old.update(maps[start : start + size], indices)
        new.update(maps[start : start + size], torch.tensor(indices))  # the scan passes a tensor now
    assert torch.equal(old.values, new.values)
    assert torch.equal(old.images, new.images) and torch.equal(old.positions, new.positions)
    assert new.host() is new and new.to("cpu") is new  # on the CPU: no copies


def test_updates_and_merges_never_read_the_state_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = maps_with_ties(3)
    state, other = TopK.empty(6, 5, 7), TopK.empty(6, 5, 7)
    other.update(maps[20:], torch.arange(20, 30))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a copy to the host (on a GPU: a wait for it)")

    for name in ("cpu", "item", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    state.update(maps[:10], torch.arange(10))
    state.update(maps[10:20], torch.arange(10, 20))
    state.merge(other)
    monkeypatch.undo()
    old = HostTopK(6, 5)
    for start in (0, 10, 20):
        old.update(maps[start : start + 10], list(range(start, start + 10)))
    assert torch.equal(old.values, state.values) and torch.equal(old.images, state.images)
    with pytest.raises(AssertionError, match="a copy to the host"):  # the guard works
        monkeypatch.setattr(torch.Tensor, "tolist", refuse)
        state.entries(0)


@CUDA
def test_top_k_on_the_gpu_equals_the_cpu_result() -> None:
    maps = maps_with_ties(2)
    cpu = TopK.empty(6, 5, 7)
    gpu = TopK.empty(6, 5, 7, device="cuda")
    parts = [TopK.empty(6, 5, 7, device="cuda") for _ in range(2)]  # two processes' shares, merged
    for number, start in enumerate(range(0, 30, 4)):
        chunk, indices = maps[start : start + 4], torch.arange(start, min(30, start + 4))
        cpu.update(chunk, indices)
        gpu.update(chunk.cuda(), indices.cuda())
        parts[number % 2].update(chunk.cuda(), indices.cuda())
    parts[0].merge(parts[1].host())  # a merge brings the other part to this one's device
    assert gpu.values.device.type == "cuda"
    for state in (gpu, parts[0]):
        host = state.host()
        assert host.values.device.type == "cpu"
        assert torch.equal(host.values, cpu.values)
        assert torch.equal(host.images, cpu.images) and torch.equal(host.positions, cpu.positions)


@CUDA
def test_a_scan_on_the_gpu_finds_the_cpu_scans_top_k(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    gpu_engine = Engine(load_model(TINY, input_size=SIZE), device_name="cuda")
    source = folder_source(image_dir)
    run_scan(tiny_engine, source, tmp_path / "cpu", layers=LAYERS, top=4, batch_size=5)
    result = run_scan(gpu_engine, source, tmp_path / "gpu", layers=LAYERS, top=4, workers=1)
    assert result.status == "complete" and result.skipped == 1
    assert ScanStore(tmp_path / "gpu").manifest().batch_size == 128  # the larger default on a GPU
    cpu, gpu = dump(tmp_path / "cpu"), dump(tmp_path / "gpu")
    assert cpu[1] == gpu[1]  # the same files read, hashes and skip reasons
    assert len(cpu[0]) == len(gpu[0])
    for mine, theirs in zip(cpu[0], gpu[0], strict=True):
        layer, channel, rank, value, image, y, x = mine
        assert (layer, channel, rank, image, y, x) == (theirs[0], theirs[1], theirs[2], *theirs[4:])
        assert theirs[3] == pytest.approx(value, rel=1e-3, abs=1e-4)  # float sums differ on the GPU


# ---- reader workers, corrupt files -----------------------------------------------------------------
def test_reader_workers_give_the_same_store_as_reading_in_process(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine
) -> None:
    source = folder_source(image_dir)
    run_scan(tiny_engine, source, tmp_path / "inline", layers=LAYERS, top=4, batch_size=32, workers=0)
    run_scan(tiny_engine, source, tmp_path / "workers", layers=LAYERS, top=4, workers=2)  # default batch
    assert ScanStore(tmp_path / "workers").manifest().batch_size == 32  # the default on the CPU
    assert dump(tmp_path / "inline") == dump(tmp_path / "workers")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_files_are_skipped_logged_and_listed_in_the_manifest(
    tmp_path: Path, tiny_engine: Engine, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, count=5)  # 5 images, `broken.jpg` (text bytes) and a .txt
    whole = (folder / "img01.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="convscope.scan"):
        result = run_scan(
            tiny_engine, folder_source(folder), tmp_path / "scan", layers=LAYERS, top=3, batch_size=2, workers=workers
        )
    assert (result.status, result.images, result.skipped) == ("complete", 8, 3)
    manifest = json.loads((tmp_path / "scan" / "manifest.json").read_text())
    reasons = {entry["id"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "empty.png", "truncated.jpg"}
    assert "not an image" in reasons["broken.jpg"] and "empty" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert manifest["progress"]["skipped"] == 3
    for name in reasons:
        assert f"skipped {name}: {reasons[name]}" in caplog.text
    store = ScanStore(tmp_path / "scan")
    assert sorted(store.skipped()) == sorted(reasons.items())
    ranked = {
        store.image(entry.image)[0]
        for layer in LAYERS.split(",")
        for entries in store.all_top(layer).values()
        for entry in entries
    }
    assert ranked and not ranked & set(reasons)


# ---- the decoder: recorded, checked on resume ------------------------------------------------------
def test_the_decoder_is_recorded_and_a_resume_with_another_is_refused(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine
) -> None:
    out = tmp_path / "scan"
    options = {"layers": LAYERS, "top": 3, "batch_size": 3}
    with pytest.raises(Cancelled):
        run_scan(
            tiny_engine,
            folder_source(image_dir),
            out,
            checkpoint_images=3,
            task=CallbackTask(should_stop=lambda: True),
            **options,
        )
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    assert data["settings"]["decoder"] == "pil" and ScanStore(out).manifest().config.decoder == "pil"

    data["settings"]["decoder"] = "nvjpeg"  # as a scan begun on a GPU machine records it
    path.write_text(json.dumps(data))
    with pytest.raises(ScanStoreError) as refused:
        run_scan(tiny_engine, folder_source(image_dir), out, resume=True, **options)
    assert refused.value.status_code == 409
    assert "the 'nvjpeg' decoder, not 'pil'" in str(refused.value) and "--decoder nvjpeg" in str(refused.value)
    args = ["scan", "--model", TINY, "--images", str(image_dir), "--out", str(out), "--size", str(SIZE)]
    cli = run_cli(*args, "--layers", LAYERS, "--top", "3", "--batch-size", "3", "--device", "cpu", "--resume")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("convscope scan: error:") and "'nvjpeg' decoder, not 'pil'" in last

    del data["settings"]["decoder"]  # a manifest from before the choice: a Pillow scan, which resumes
    path.write_text(json.dumps(data))
    assert run_scan(tiny_engine, folder_source(image_dir), out, resume=True, **options).status == "complete"
    assert json.loads(path.read_text())["settings"]["decoder"] == "pil"


def test_the_gpu_decoder_without_cuda_is_a_clear_error(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="--decoder nvjpeg decodes on a CUDA GPU, but the model runs on cpu"):
        run_scan(tiny_engine, folder_source(image_dir), tmp_path / "scan", decoder="nvjpeg")
    assert not (tmp_path / "scan").exists()
    with pytest.raises(InvalidRequestError, match="unknown decoder 'turbo'"):
        run_scan(tiny_engine, folder_source(image_dir), tmp_path / "scan", decoder="turbo")
    args = ["scan", "--model", TINY, "--images", str(image_dir), "--out", str(tmp_path / "cli"), "--size", str(SIZE)]
    cli = run_cli(*args, "--device", "cpu", "--decoder", "nvjpeg")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1] == (
        "convscope scan: error: --decoder nvjpeg decodes on a CUDA GPU, but the model runs on cpu; "
        "use --decoder pil (the default) or --device cuda"
    )
    assert not (tmp_path / "cli").exists()


# ---- the GPU decoder's code path -------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_the_device_decoder_is_close_to_pillow(device: str) -> None:
    photos = [load_sample(sample.id) for sample in list_samples()[:3]]
    files = [jpeg(photo, quality=90) for photo in photos]
    files.append(jpeg(photos[0].convert("L")))  # grey
    files.append(jpeg(photos[1].resize((100, 80))))  # smaller than S: enlarged
    decoder = DeviceDecoder(device, 224, crop_pct=0.875)
    decoded = decoder.decode([as_tensor(data) for data in files])
    for data, pixels in zip(files, decoded, strict=True):
        assert isinstance(pixels, torch.Tensor), pixels
        assert pixels.shape == (224, 224, 3) and pixels.dtype == torch.uint8 and pixels.device.type == device
        difference = (pixels.cpu().int() - pil_pixels(data, 224, 0.875).int()).abs().float()
        if device == "cpu":  # libjpeg, as Pillow's: only the resampler differs (by ~0.15 levels, at most 1, here)
            assert difference.mean() < 0.5 and difference.max() <= 2, (float(difference.mean()), int(difference.max()))
        else:  # nvJPEG's own IDCT and chroma upsampling on top: close, not the same
            assert difference.mean() < 3.0, float(difference.mean())


def test_files_the_gpu_decoder_cannot_take_go_to_pillow_or_are_skipped(tmp_path: Path) -> None:
    photo = load_sample(list_samples()[0].id)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: Pillow turns it upright, nvJPEG would not
    whole = jpeg(photo)
    png = io.BytesIO()
    photo.save(png, format="PNG")
    files = {
        "a.jpg": whole,
        "b.png": png.getvalue(),
        "c.jpg": whole[: len(whole) // 2],  # truncated
        "d.jpg": jpeg(photo.convert("CMYK")),
        "e.jpg": jpeg(photo, exif=exif.tobytes()),
        "f.jpg": b"\xff\xd8\xff" + b"not really" + b"\xff\xd9",
    }
    assert gpu_decodable(whole, 64, 1.0)
    assert not any(gpu_decodable(data, 64, 1.0) for name, data in files.items() if name != "a.jpg")

    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    source = folder_source(tmp_path)
    assert list(source.ids) == sorted(files)
    reader = ImageReader(source, 64, 1.0, decoder="nvjpeg")
    batch = collate([reader[index] for index in range(len(reader))])
    assert [index for index, _ in batch.raw] == [0]  # only the plain JPEG waits for the GPU
    pixels, indices = _decoded(batch, DeviceDecoder("cpu", 64), torch.device("cpu"))
    assert pixels is not None and sorted(indices) == [0, 1, 3, 4]
    errors = {source.ids[record.index]: record.error for record in batch.records if record.error}
    assert set(errors) == {"c.jpg", "f.jpg"} and "truncated" in str(errors["c.jpg"])
    upright = pil_pixels(files["e.jpg"], 64, 1.0)  # the rotated photo went through Pillow, exactly
    assert torch.equal(pixels[indices.index(4)], upright)

    # through a reader worker process, the JPEG's bytes reach the main process intact
    loader = DataLoader(reader, batch_sampler=[list(range(len(reader)))], num_workers=1, collate_fn=collate)
    (from_worker,) = list(loader)
    assert [(index, bytes(data.numpy())) for index, data in from_worker.raw] == [(0, whole)]
    assert [record.error is None for record in from_worker.records] == [True, True, False, True, True, False]

    # a file that fails on the device falls back to Pillow, which gives the reason
    decoded = DeviceDecoder("cpu", 64).decode([as_tensor(whole), as_tensor(files["f.jpg"])])
    assert isinstance(decoded[0], torch.Tensor) and decoded[0].shape == (64, 64, 3)
    assert isinstance(decoded[1], str) and "not an image" in decoded[1]


def test_the_gpu_decoder_scan_loop_on_the_cpu(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole `--decoder nvjpeg` loop (workers passing raw JPEGs, batches decoded by `DeviceDecoder`,
    fallbacks, records), with torchvision's CPU decoder standing in for nvJPEG: only the check that
    refuses it without CUDA is switched off here."""
    import convscope.scan.gpudecode as gpudecode

    monkeypatch.setattr(gpudecode, "check_available", lambda device: None)
    source = folder_source(image_dir)
    run_scan(tiny_engine, source, tmp_path / "pil", layers=LAYERS, top=4, batch_size=5)
    result = run_scan(
        tiny_engine, source, tmp_path / "device", layers=LAYERS, top=4, batch_size=5, workers=1, decoder="nvjpeg"
    )
    assert (result.status, result.skipped) == ("complete", 1)
    manifest = json.loads((tmp_path / "device" / "manifest.json").read_text())
    assert manifest["settings"]["decoder"] == "nvjpeg" and [e["id"] for e in manifest["skipped"]] == ["broken.jpg"]
    pil, device = dump(tmp_path / "pil"), dump(tmp_path / "device")
    assert pil[1] == device[1]  # the same files, hashes and skip reasons
    same = sum(mine[4] == theirs[4] for mine, theirs in zip(pil[0], device[0], strict=True))
    assert same >= 0.9 * len(pil[0])  # pixels a level apart here and there: nearly the same top-k
    assert max(abs(float(m[3]) - float(t[3])) for m, t in zip(pil[0], device[0], strict=True)) < 0.05


@CUDA
def test_a_gpu_decoder_scan_records_its_decoder_and_skips_bad_files(tmp_path: Path, image_dir: Path) -> None:
    engine = Engine(load_model(TINY, input_size=SIZE), device_name="cuda")
    out = tmp_path / "scan"
    result = run_scan(engine, folder_source(image_dir), out, layers=LAYERS, top=4, workers=1, decoder="nvjpeg")
    assert (result.status, result.skipped) == ("complete", 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["decoder"] == "nvjpeg"
    assert [entry["id"] for entry in manifest["skipped"]] == ["broken.jpg"]
    with pytest.raises(ScanStoreError, match="the 'nvjpeg' decoder, not 'pil'"):
        run_scan(engine, folder_source(image_dir), out, layers=LAYERS, top=4, resume=True)
