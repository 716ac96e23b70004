"""Feature evolution (Fig. 4) across the checkpoints of a real training run on `digits`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main
from convscope.engine import Engine
from convscope.studies.checkpoints import list_checkpoints, load_checkpoint
from convscope.studies.data import ImageSet, stratified_subset
from convscope.studies.evolution import feature_evolution, parse_layers
from convscope.studies.probe import load_probe_model, probe
from studies.helpers import digits_subset, train_digits


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return digits_subset(200, seed=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, digits: ImageSet) -> Path:
    folder = tmp_path_factory.mktemp("evolution") / "run"
    return train_digits(folder, digits, epochs=2, checkpoint_epochs="0,0.5,all")


def test_montage_rows_and_columns_are_channels_and_checkpoints(run: Path, digits: ImageSet) -> None:
    checkpoints = list_checkpoints(run)
    assert [c.label for c in checkpoints] == ["0", "0.5", "1", "2"]
    images = digits.subset(range(60))
    layers = parse_layers("conv1:0,5,9;conv2;conv5")
    result = feature_evolution(checkpoints, images, layers, per_layer=2, tile=40, seed=3)
    doc, montage = result.document, result.montage
    rows, cols = 3 + 2 + 2, len(checkpoints)
    assert doc["shape"] == {"rows": rows, "cols": cols}
    assert len(doc["cells"]) == rows and all(len(row) == cols for row in doc["cells"])
    assert [r["channel"] for r in doc["rows"][:3]] == [0, 5, 9]
    assert [r["layer"] for r in doc["rows"]] == ["features.conv1"] * 3 + ["features.conv2"] * 2 + ["features.conv5"] * 2
    geometry = doc["geometry"]
    assert montage.size == (geometry["width"], geometry["height"])
    assert doc["color"] == "gray"  # digits are grey: tiles show the projection's grey component
    pixels_rgb = np.asarray(montage).astype(int)
    assert np.array_equal(pixels_rgb[..., 0], pixels_rgb[..., 1])
    drift = doc["drift"]
    assert drift["layers"][0] == "features.conv1" and drift["layers"][-1] == "classifier.fc8"
    assert all(len(row) == cols and row[-1] == 0.0 for row in drift["values"])
    assert all(row[0] > 0 for row in drift["values"])  # epoch 0 (the init) differs from epoch 2
    assert len(geometry["row_y"]) == rows and len(geometry["col_x"]) == cols
    assert geometry["col_x"][-1] + 40 <= montage.width and geometry["row_y"][-1] + 40 <= montage.height

    # every cell is the strongest activation of its channel across the set, at that checkpoint
    pixels = np.asarray(montage)
    for c, checkpoint in enumerate(checkpoints):
        engine = Engine(load_checkpoint(checkpoint.path), device_name="cpu")
        batch = images.tensor(engine.input_size, engine.model.mean, engine.model.std)
        _, outputs = engine.forward_batch(batch, ["features.conv2"])
        for r in (3, 4):
            cell = doc["cells"][r][c]
            maps = outputs["features.conv2"][:, cell["channel"]]
            assert cell["activation"] == pytest.approx(float(maps.max()), rel=1e-4)
            assert float(maps[cell["image"]].max()) == pytest.approx(float(maps.max()), rel=1e-4)
            y, x = cell["position"]
            assert float(maps[cell["image"], y, x]) == pytest.approx(float(maps.max()), rel=1e-4)
        for r in range(rows):
            tile = pixels[
                geometry["row_y"][r] : geometry["row_y"][r] + 40, geometry["col_x"][c] : geometry["col_x"][c] + 40
            ]
            assert tile.std() > 0  # a projection, not blank canvas
    # training changed the features: the same map's tile differs between epoch 0 and epoch 2
    first = pixels[geometry["row_y"][3] : geometry["row_y"][3] + 40, geometry["col_x"][0] : geometry["col_x"][0] + 40]
    last = pixels[geometry["row_y"][3] : geometry["row_y"][3] + 40, geometry["col_x"][-1] : geometry["col_x"][-1] + 40]
    assert not np.array_equal(first, last)


def test_cli_evolution_writes_png_and_json(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evo.png"
    args = ["evolution", "--checkpoints", str(run), "--images", "digits", "--limit", "40", "--threads", "1"]
    assert main([*args, "--layers", "conv1,conv3", "--per-layer", "3", "--epochs", "0.5,2", "--out", str(out)]) == 0
    doc = json.loads((tmp_path / "evo.json").read_text())
    assert doc["shape"] == {"rows": 6, "cols": 2} and doc["epochs"] == [0.5, 2.0] and doc["image"] == "evo.png"
    assert doc["images"]["split"] == "train" and doc["finished"]
    assert Image.open(out).size == (doc["geometry"]["width"], doc["geometry"]["height"])
    assert main([*args, "--layers", "conv9", "--out", str(out)]) == 2
    assert "conv9" in capsys.readouterr().err


def test_probe_works_on_a_trained_checkpoint(run: Path, digits: ImageSet) -> None:
    engine = Engine(load_probe_model("zfnet-small", str(run / "epoch-2.pt")), device_name="cpu")
    assert engine.input_size == 64 and engine.model.labels[3] == "3"
    result = probe(
        engine, digits.subset(stratified_subset(digits.labels, 60, seed=0)), folds=2, classifiers=["softmax"]
    )
    layers = [row["layer"] for row in result.document["layers"]]
    assert layers == [f"features.relu{i}" for i in range(1, 6)] + ["classifier.relu6", "classifier.relu7"]
    assert result.document["layers"][-1]["dims"] == 512  # fc7 vectors are used as they are
