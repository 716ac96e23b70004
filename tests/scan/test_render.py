"""Receptive-field crops (hand-computed boxes on the ZF net), projections and the montage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main as cli_main
from convscope.engine import Engine
from convscope.engine.render import contrast_normalise
from convscope.images import prepare_image
from convscope.models import load_model
from convscope.models.labels import numbered_labels
from convscope.models.spec import LoadedModel
from convscope.models.zfnet import ZFNet
from convscope.scan import (
    ScanRenderer,
    ScanStore,
    ScanStoreError,
    crop_box,
    default_layers,
    folder_source,
    montage,
    run_scan,
)
from convscope.scan.render import crop_array
from scan.conftest import SIZE, TINY, run_cli

# The paper's geometry (Fig. 3), as (kernel, stride, padding) from the input up.
ZF_CHAIN = {
    "features.conv1": [(7, 2, 1)],
    "features.pool1": [(7, 2, 1), (3, 2, 0)],
    "features.conv2": [(7, 2, 1), (3, 2, 0), (5, 2, 0)],
    "features.pool2": [(7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0)],
    "features.conv3": [(7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0), (3, 1, 1)],
    "features.conv5": [(7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)],
    "features.pool5": [(7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0)],
}


def span(unit: int, chain: list[tuple[int, int, int]]) -> tuple[int, int]:
    """First and last input pixel a unit sees: walk down, unit range [lo, hi] -> [s·lo − p, s·hi − p + k − 1]."""
    low, high = unit, unit
    for kernel, stride, padding in reversed(chain):
        low, high = stride * low - padding, stride * high - padding + kernel - 1
    return low, high


@pytest.fixture(scope="module")
def zf_engine() -> Engine:
    torch.manual_seed(0)
    module = ZFNet(num_classes=10, widths=(4, 4, 4, 4, 4), fc_width=8, input_size=224).eval()
    return Engine(LoadedModel("zf-narrow", module, numbered_labels(10), 224), device_name="cpu")


def test_zf_crop_boxes_match_hand_computed_ones(zf_engine: Engine) -> None:
    # worked by hand from Fig. 3: (top, left, bottom, right), half-open
    hand = {
        ("features.conv1", 0, 0): (-1, -1, 6, 6),
        ("features.conv1", 109, 3): (217, 5, 224, 12),
        ("features.pool1", 0, 0): (-1, -1, 10, 10),
        ("features.conv2", 0, 0): (-1, -1, 26, 26),
        ("features.conv2", 25, 1): (199, 7, 226, 34),
        ("features.conv5", 12, 12): (143, 143, 282, 282),
        ("features.pool5", 5, 0): (111, -49, 282, 122),
    }
    for (layer, y, x), box in hand.items():
        assert crop_box(zf_engine.layer(layer), y, x, 224) == box, layer
    for layer, chain in ZF_CHAIN.items():
        info = zf_engine.layer(layer)
        spec = info
        for y, x in [(0, 0), (info.height - 1, info.width - 1), (info.height // 2, 1), (2, info.width - 2)]:
            (top, bottom), (left, right) = span(y, chain), span(x, chain)
            assert crop_box(spec, y, x, 224) == (top, left, bottom + 1, right + 1), (layer, y, x)


def test_default_layers_are_one_per_resolution(zf_engine: Engine) -> None:
    expected = ["features.relu1", "features.norm1", "features.relu2", "features.relu5", "features.pool5"]
    assert default_layers(zf_engine.layers()) == expected


def test_crops_are_zero_padded_past_the_border() -> None:
    array = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3) + 1
    out = crop_array(array, (-2, 3, 4, 8))
    assert out.shape == (6, 5, 3)
    assert (out[:2] == 0).all() and (out[:, 3:] == 0).all()
    assert (out[2:, :3] == array[0:4, 3:6]).all()


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_rendered_crops_and_projections(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    out = tmp_path / "scan"
    run_scan(tiny_engine, folder_source(image_dir), out, layers="relu2,relu3", top=3, batch_size=5)
    renderer = ScanRenderer(ScanStore(out), engine=tiny_engine)
    for layer in ("relu2", "relu3"):
        spec = renderer.manifest.layer(layer)
        for rank, entry in enumerate(renderer.entries(layer, 1)):
            box = crop_box(spec, entry.y, entry.x, SIZE)
            with Image.open(image_dir / renderer.store.image(entry.image)[1]) as original:
                prepared = prepare_image(original.convert("RGB"), SIZE, tiny_engine.model.mean, tiny_engine.model.std)
            crop = png_array(renderer.png(layer, 1, rank, "crop"))
            assert crop.shape == (box[2] - box[0], box[3] - box[1], 3)
            assert (crop == crop_array(np.asarray(prepared.display), box)).all()

            result = tiny_engine.project(prepared, layer, 1, position=(entry.y, entry.x))
            assert result.seed_value == pytest.approx(entry.value, rel=1e-5)
            raw = crop_array(result.projection.numpy().transpose(1, 2, 0), box).transpose(2, 0, 1)
            expected = contrast_normalise(torch.from_numpy(np.ascontiguousarray(raw)))
            assert (png_array(renderer.png(layer, 1, rank, "projection")) == expected).all()
            assert renderer.path(layer, 1, rank, "projection").is_file()  # cached on disk


def test_projections_refuse_other_weights(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    out = tmp_path / "scan"
    run_scan(tiny_engine, folder_source(image_dir), out, layers="relu1", top=2)
    retrained = load_model(TINY, input_size=SIZE)
    with torch.no_grad():
        next(retrained.module.parameters()).mul_(2)
    other = Engine(retrained, device_name="cpu")
    renderer = ScanRenderer(ScanStore(out), engine=other)
    assert renderer.png("relu1", 0, 0, "crop")  # crops need no model
    with pytest.raises(ScanStoreError, match="weights"):
        renderer.png("relu1", 0, 0, "projection")


def test_montage_in_python_and_from_the_cli(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scan"
    run_scan(tiny_engine, folder_source(image_dir), out, layers="relu2", top=9, batch_size=8)
    image = montage(ScanRenderer(ScanStore(out), engine=tiny_engine), "relu2", [0, 3], tile=20, columns=2)
    # two cells side by side: each 2 grids of 3 tiles (20 px, 2 px gaps) with an 8 px gutter
    block = 3 * 20 + 2 * 2
    assert image.size == (2 * (2 * block + 8) + 3 * 8, block + 14 + 2 * 8)

    png = tmp_path / "montage.png"
    done = run_cli("montage", "--scan", str(out), "--layer", "relu2", "--channels", "0-2,5", "--out", str(png))
    assert done.returncode == 0, done.stderr
    with Image.open(png) as written:
        assert written.size[0] > 4 * block and written.mode == "RGB"
    assert len(list((out / "cache" / "relu2").glob("*/*-projection.png"))) == 5 * 9  # channels 0-3 and 5
    # the same command in process: a layer the scan does not have is one line and exit 2
    assert cli_main(["montage", "--scan", str(out), "--layer", "relu9", "--out", str(png)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("convscope montage: error:") and "relu9" in error[0]
