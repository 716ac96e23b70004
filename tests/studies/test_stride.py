"""Fig. 6: the stride-4 (AlexNet) and stride-2 (ZF) first layers, trained alike on real digits (tiny run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.analysis.filters import band_energies
from convscope.cli import main
from convscope.models.zfnet import ZFNet, config_from_state_dict, load_zfnet_checkpoint, zfnet_small
from convscope.studies.checkpoints import load_checkpoint
from convscope.studies.data import ImageSet, load_dataset, stratified_subset
from convscope.studies.stride import (
    RINGS,
    aliased_mask,
    bands_from_rings,
    filter_power,
    radial_spectrum,
    ring_index,
    stride_study,
    white_radial,
)
from convscope.studies.train import TrainConfig, select_split
from studies.helpers import one_thread

TINY = TrainConfig(data="digits", epochs=1, batch_size=32, limit=96, checkpoint_epochs="0", seed=3)


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    data = load_dataset("digits")
    return data.subset(stratified_subset(data.labels, 96, seed=0))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, digits: ImageSet) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("stride")
    with one_thread():  # as the tests that compare with it run
        result = stride_study(TINY, folder, device="cpu", data=digits)
    return folder, result.document


def _measures(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in variant.items() if k != "seconds"} for variant in document["variants"]]


# ---- the architecture --------------------------------------------------------------------------------
def test_the_alexnet_first_layer_keeps_every_later_map() -> None:
    for size, zf_maps, alex_maps in (
        (64, [30, 15, 6, 3, 1], [15, 7, 7, 3, 1]),
        (224, [110, 55, 26, 13, 6], [55, 27, 27, 13, 6]),
    ):
        for first, expected in (("zf", zf_maps), ("alexnet", alex_maps)):
            net = ZFNet(num_classes=10, widths=(8, 16, 16, 16, 8), fc_width=16, input_size=size, first_layer=first)
            x = torch.zeros(1, 3, size, size)
            sides = {}
            for name, layer in net.features.named_children():
                x = layer(x)
                sides[name] = x.shape[-1]
            assert [sides[k] for k in ("conv1", "pool1", "conv2", "pool2", "pool5")] == expected, (size, first)
    alex = zfnet_small(first_layer="alexnet")
    assert alex.features.conv1.kernel_size == (11, 11) and alex.features.conv1.stride == (4, 4)
    assert alex.features.conv2.stride == (1, 1) and alex.config["first_layer"] == "alexnet"
    with pytest.raises(ValueError, match="unknown first layer"):
        ZFNet(first_layer="vgg")


def test_an_alexnet_checkpoint_rebuilds_from_its_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zfnet_small(num_classes=3, widths=(8, 12, 16, 16, 8), fc_width=24, first_layer="alexnet")
    path = tmp_path / "epoch-1.pt"  # no model.json beside it
    torch.save(net.state_dict(), path)
    config = config_from_state_dict(net.state_dict())
    assert config["first_layer"] == "alexnet" and config["input_size"] == 64
    loaded = load_zfnet_checkpoint(path)
    assert torch.equal(loaded.features.conv1.weight, net.features.conv1.weight)
    assert loaded.features.conv2.stride == (1, 1)


# ---- the spectrum --------------------------------------------------------------------------------------
def test_a_single_tap_is_white_and_a_cosine_sits_in_its_ring() -> None:
    delta = np.zeros((1, 3, 7, 7))
    delta[0, :, 3, 3] = 1.0
    power = filter_power(delta)
    assert power.sum() == pytest.approx(1.0)
    assert np.allclose(radial_spectrum(power)[0], white_radial())  # flat spectrum: shares = ring areas
    assert white_radial().sum() == pytest.approx(1.0) and len(white_radial()) == RINGS

    # a horizontal cosine of 16 cycles per 64 pixels (ρ = 0.5) on an 64-tap kernel: all energy in ring 6
    x = np.arange(64)
    wave = np.cos(2 * np.pi * 16 * x / 64)[None, :].repeat(64, axis=0)
    rings = radial_spectrum(filter_power(wave[None, None]))[0]
    assert int(np.argmax(rings)) == 6 and rings[6] == pytest.approx(1.0)
    assert ring_index()[0, 16] == 6  # ρ = 16/64 / 0.5 = 0.5 exactly → ring floor(0.5·12)
    # the share that a stride-2 output grid cannot hold: max(|f_x|, |f_y|) ≥ 1/4 (|k| ≥ 16 of 64)
    assert aliased_mask(2).mean() == pytest.approx(1 - (31 / 64) ** 2)
    assert aliased_mask(4).mean() == pytest.approx(1 - (15 / 64) ** 2)


def test_bands_from_rings_are_the_filters_commands_bands() -> None:
    weight = torch.randn(12, 3, 11, 11, generator=torch.Generator().manual_seed(0))
    ours = bands_from_rings(radial_spectrum(filter_power(weight)))
    assert np.allclose(ours, band_energies(weight), atol=1e-6)


# ---- the study -----------------------------------------------------------------------------------------
def test_both_first_layers_train_on_identical_data_and_are_measured_alike(
    study: tuple[Path, dict[str, Any]], digits: ImageSet
) -> None:
    folder, doc = study
    assert doc["study"] == "stride" and doc["finished"] is True
    zf, alex = doc["variants"]
    assert (zf["first_layer"], alex["first_layer"]) == ("zf", "alexnet")
    assert (zf["conv1"]["kernel"], zf["conv1"]["stride"], zf["conv1"]["map"]) == (7, 2, 30)
    assert (alex["conv1"]["kernel"], alex["conv1"]["stride"], alex["conv1"]["map"]) == (11, 4, 15)
    # the same training pixels and labels, the same settings but the first layer
    assert zf["fingerprint"] == alex["fingerprint"]
    logs = [json.loads((folder / v["run"] / "log.json").read_text()) for v in (zf, alex)]
    configs = [{k: v for k, v in log["config"].items() if k != "first_layer"} for log in logs]
    assert configs[0] == configs[1] == doc["config"] and configs[0]["seed"] == 3
    assert [log["config"]["first_layer"] for log in logs] == ["zf", "alexnet"]
    assert doc["images"]["count"] == 96

    measured = select_split(digits, TINY, "all")
    for variant in (zf, alex):
        channels = variant["conv1"]["channels"]
        dead, collapsed = variant["dead"], variant["collapsed"]
        assert 0 <= dead["count"] <= channels and dead["count"] == len(dead["channels"])
        assert 0 <= collapsed["count"] <= channels and len(collapsed["rms"]) == channels
        assert len(variant["radial"]) == RINGS and sum(variant["radial"]) == pytest.approx(1.0)
        assert sum(variant["bands"]) == pytest.approx(1.0) and sum(variant["dominant_counts"]) == channels
        assert 0.0 <= variant["aliased"] <= 1.0
        assert max(variant["collapsed"]["rms"]) <= 0.1 + 1e-6  # the paper's renormalisation radius

        # dead: never positive after relu1, checked here on the checkpoint by a plain forward pass
        model = load_checkpoint(folder / variant["run"] / variant["checkpoint"])
        batch = measured.tensor(model.input_size, model.mean, model.std)
        with torch.no_grad():
            conv1 = model.module.features.conv1(batch)
        never = [int(c) for c in torch.nonzero(conv1.amax(dim=(0, 2, 3)) <= 0).flatten()]
        assert dead["channels"] == never
        weight = model.module.features.conv1.weight
        assert np.allclose(variant["bands"], band_energies(weight).mean(axis=0), atol=1e-6)
        # the learned part is measured against the run's own initialisation (its epoch-0 checkpoint)
        initial = torch.load(folder / variant["run"] / "epoch-0.pt", weights_only=True)["features.conv1.weight"]
        assert variant["moved"] == pytest.approx(float((weight - initial).norm() / initial.norm()), rel=1e-5)
        assert 0 < variant["moved"] < 2
        w, w0 = weight.double().flatten(1), initial.double().flatten(1)
        residual = w - ((w * w0).sum(1, keepdim=True) / (w0 * w0).sum(1, keepdim=True)) * w0
        assert torch.allclose(
            (residual * w0).sum(1), torch.zeros(len(w), dtype=torch.float64), atol=1e-9
        )  # orthogonal to the init
        assert variant["learned_share"] == pytest.approx(float(residual.pow(2).sum() / w.pow(2).sum()), rel=1e-6)
        learned = band_energies(residual.reshape(weight.shape)).mean(axis=0)
        assert np.allclose(variant["learned"]["bands"], learned, atol=1e-6)


def test_the_study_is_deterministic_for_a_seed(
    study: tuple[Path, dict[str, Any]], digits: ImageSet, tmp_path: Path
) -> None:
    _, first = study
    again = stride_study(TINY, tmp_path / "again", device="cpu", data=digits).document
    assert _measures(again) == _measures(first)


def test_stride_command_writes_the_table_and_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stride"
    argv = ["stride", "--data", "digits", "--limit", "64", "--epochs", "1", "--batch-size", "32"]
    assert main([*argv, "--checkpoints", "none", "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    doc = json.loads((out / "stride.json").read_text())
    assert [v["first_layer"] for v in doc["variants"]] == ["zf", "alexnet"]
    for variant in doc["variants"]:
        mosaic = Image.open(out / variant["mosaic"])
        assert mosaic.width >= 8 * 44 and mosaic.height >= 4 * 44  # 32 filters, 8 per row, ≥ 44 px each
    combined = Image.open(out / "stride.png")
    assert combined.width > sum(Image.open(out / v["mosaic"]).width for v in doc["variants"])
    table = (out / "stride.md").read_text()
    assert "zf: 7×7/2" in table and "alexnet: 11×11/4" in table and "white-noise kernel" in table
    assert "stride.json" in capsys.readouterr().out

    assert main(["stride", "--data", "digits", "--first-layers", "zf", "--out", str(tmp_path / "x")]) == 2
    assert main(["stride", "--data", "digits", "--first-layers", "zf,vgg", "--out", str(tmp_path / "x")]) == 2
    assert "unknown first layer 'vgg'" in capsys.readouterr().err


def test_train_command_takes_the_first_layer(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", "faces", "--limit", "40", "--epochs", "1", "--batch-size", "20", "--checkpoints", "1"]
    assert main([*argv, "--first-layer", "alexnet", "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"]["first_layer"] == "alexnet" and meta["train"]["first_layer"] == "alexnet"
    model = load_checkpoint(out / "epoch-1.pt")
    assert model.module.features.conv1.kernel_size == (11, 11)
    log = json.loads((out / "log.json").read_text())
    assert log["title"].endswith("alexnet first layer") and len(log["dataset"]["fingerprint"]) == 64
