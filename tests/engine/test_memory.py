"""The recorded-pass cache is bounded in bytes, measured from the tensors each record holds."""

from __future__ import annotations

import subprocess
import sys

import torch
from PIL import Image

from convscope.engine import Engine
from convscope.engine.memory import held_bytes, model_storages
from convscope.models import load_model
from convscope.samples import get_sample, load_sample
from fixtures.nets import make_engine, pooled_head_net


def _engine(cache_mb: float | None = None, cache_size: int | None = None) -> Engine:
    return Engine(
        load_model("alexnet", pretrained=False, input_size=112),
        device_name="cpu",
        cache_mb=cache_mb,
        cache_size=cache_size,
    )


def test_a_record_counts_what_its_graph_saved() -> None:
    engine = make_engine(pooled_head_net(), 64, classes=4)
    image = engine.prepare(load_sample("chelsea"))
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        record = engine._record_tensor(image.tensor)
    for tensor in (record.image, *record.outputs.values()):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
    model = model_storages(engine.model.module)
    expected = sum(size for pointer, size in saved.items() if pointer not in model)
    assert record.nbytes == expected == held_bytes([record.image, *record.outputs.values()], model)
    assert record.nbytes > sum(t.numel() * 4 for t in {id(t): t for t in record.outputs.values()}.values())


def test_recording_more_images_than_fit_keeps_the_bound() -> None:
    probe = _engine()
    # a click's record stops at its layer: measure one of those
    one = probe._record_tensor(probe.prepare(load_sample("chelsea")).tensor, "features.3").nbytes
    limit_mb = 2.5 * one / 2**20  # room for two records, not three
    engine = _engine(cache_mb=limit_mb)
    for shade in range(6):
        image = engine.prepare(Image.new("RGB", (112, 112), (shade * 40, 10, 0)))
        engine.project(image, "features.3", 0)
        memory = engine.memory()
        assert memory.bytes <= memory.limit_bytes == int(limit_mb * 2**20)
        assert memory.records == min(shade + 1, 2)
    assert engine.stats.forward_passes >= 6


def test_least_recently_used_goes_first() -> None:
    probe = _engine()
    one = probe._record_tensor(probe.prepare(load_sample("chelsea")).tensor, "features.0").nbytes
    engine = _engine(cache_mb=2.5 * one / 2**20)
    a, b, c = (engine.prepare(load_sample(name)) for name in ("chelsea", "coffee", "rocket"))
    engine.project(a, "features.0", 0)
    engine.project(b, "features.0", 0)
    engine.project(a, "features.0", 1)  # a is now the most recent
    engine.project(c, "features.0", 0)  # evicts b
    passes = engine.stats.forward_passes
    engine.project(a, "features.0", 2)
    assert engine.stats.forward_passes == passes
    engine.project(b, "features.0", 2)
    assert engine.stats.forward_passes == passes + 1


def test_a_record_larger_than_the_bound_is_used_not_kept() -> None:
    engine = _engine(cache_mb=0.01)
    image = engine.prepare(load_sample("chelsea"))
    first = engine.project(image, "features.3", 3)
    again = engine.project(image, "features.3", 3)
    assert torch.equal(first.projection, again.projection)
    assert engine.memory().records == 0 and engine.stats.not_cached == 2


def test_an_entry_cap_still_applies() -> None:
    engine = _engine(cache_size=1)
    for name in ("chelsea", "coffee"):
        engine.project(engine.prepare(load_sample(name)), "features.0", 0)
    assert engine.memory().records == 1


def test_default_bound_per_device() -> None:
    assert _engine().memory().limit_bytes == 1024 * 2**20


def test_cli_verbose_reports_the_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    photo = get_sample("chelsea").path
    result = subprocess.run(
        [sys.executable, "-m", "convscope", "project", "--model", "zfnet", "--image", str(photo), "--layer",
         "features.conv2", "--channel", "0", "--out", str(tmp_path / "p.png"), "--verbose", "--mode", "auto"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded forward passes: 1, holding" in result.stderr and "MiB" in result.stderr
    assert "features.conv2 channel 0 deconvnet/max" in result.stdout  # auto: ZF's conv2 lies above a max-pool
