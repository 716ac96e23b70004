"""Feature-level convergence per layer (Fig. 4 as numbers) on the checkpoints of a real digits run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convscope.cli import main
from convscope.studies.checkpoints import list_checkpoints
from convscope.studies.convergence import feature_convergence, peak_correlation, settled_at, top_overlap
from convscope.studies.data import ImageSet
from studies.helpers import digits_subset, train_digits

LAYERS = ["features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5"]


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return digits_subset(120, seed=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, digits: ImageSet) -> Path:
    folder = tmp_path_factory.mktemp("convergence") / "run"
    return train_digits(folder, digits, epochs=2, batch_size=32, checkpoint_epochs="0,all")


def test_overlap_and_correlation_by_hand() -> None:
    final = np.array([[5.0, 1.0], [4.0, 2.0], [3.0, 3.0], [2.0, 4.0]])
    same = top_overlap(final, final, k=2)
    assert same.tolist() == [1.0, 1.0]
    flipped = final[::-1].copy()  # the channels' strongest images become their weakest
    assert top_overlap(flipped, final, k=2).tolist() == [0.0, 0.0]
    shifted = np.array([[5.0, 1.0], [1.0, 2.0], [3.0, 3.0], [2.0, 4.0]])  # image 1 drops out of channel 0's top 2
    assert top_overlap(shifted, final, k=2).tolist() == [0.5, 1.0]
    ties = np.zeros((4, 1))  # all equal: the earlier images win
    assert top_overlap(ties, np.array([[1.0], [1.0], [0.0], [0.0]]), k=2).tolist() == [1.0]
    r = peak_correlation(np.c_[final[:, 0] * 3 + 1, np.ones(4)], final)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])  # a constant channel has no correlation
    assert settled_at([0.2, 0.9, 0.5, 0.8, 1.0], [0, 1, 2, 5, 10], 0.7) == 5
    assert settled_at([0.9, 0.9, 1.0], [0, 1, 2], 0.7) == 0
    assert settled_at([0.9, 0.5], [1, 2], 0.7) is None


def test_the_final_checkpoint_against_itself_is_one_and_the_init_differs(run: Path, digits: ImageSet) -> None:
    checkpoints = list_checkpoints(run)
    assert [c.label for c in checkpoints] == ["0", "1", "2"]
    images = digits.subset(range(80))
    doc = feature_convergence(checkpoints, images, device="cpu").document
    assert doc["layers"] == LAYERS and doc["epochs"] == [0.0, 1.0, 2.0] and doc["top"] == 9
    for row in doc["overlap"] + doc["correlation"]:
        assert len(row) == 3 and row[-1] == pytest.approx(1.0)
        assert all(v is None or -1.0 <= v <= 1.0 for v in row)
    assert all(0.0 <= v <= 1.0 for row in doc["overlap"] for v in row)
    assert min(row[0] for row in doc["overlap"]) < 1.0  # the untrained net's features are not the final ones
    assert doc["drift"]["values"][0][-1] == 0.0
    again = feature_convergence(checkpoints, images, device="cpu").document
    assert again["overlap"] == doc["overlap"] and again["correlation"] == doc["correlation"]


def test_a_layer_left_untrained_differs_and_the_layers_below_it_do_not(
    run: Path, digits: ImageSet, tmp_path: Path
) -> None:
    """A checkpoint equal to the final one except conv3, put back to random weights: conv1 and conv2
    match the final features exactly, conv3 (and what it feeds) does not."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(run / "model.json", folder / "model.json")
    shutil.copy(run / "epoch-2.pt", folder / "epoch-2.pt")
    state = torch.load(run / "epoch-2.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    state["features.conv3.weight"] = torch.randn(state["features.conv3.weight"].shape, generator=generator) * 0.05
    torch.save(state, folder / "epoch-1.pt")
    doc = feature_convergence(list_checkpoints(folder), digits.subset(range(80)), device="cpu").document
    overlap = dict(zip(doc["layers"], doc["overlap"], strict=True))
    correlation = dict(zip(doc["layers"], doc["correlation"], strict=True))
    assert overlap["features.conv1"][0] == overlap["features.conv2"][0] == 1.0
    assert correlation["features.conv1"][0] == pytest.approx(1.0)
    assert overlap["features.conv3"][0] < 2 / 3 and correlation["features.conv3"][0] < 0.9
    assert doc["settled"]["overlap"]["features.conv1"] == 1.0 and doc["settled"]["overlap"]["features.conv3"] == 2.0


def test_convergence_command_writes_json_and_markdown(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "conv.json"
    argv = ["convergence", "--checkpoints", str(run), "--images", "digits", "--limit", "40", "--layers", "conv1,conv5"]
    assert main([*argv, "--top", "5", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["study"] == "convergence" and doc["layers"] == ["features.conv1", "features.conv5"]
    assert doc["images"]["count"] == 40 and doc["images"]["split"] == "train" and doc["top"] == 5
    table = (tmp_path / "conv.md").read_text()
    assert "Top-5 overlap" in table and "| conv5 |" in table and "Settled" in table
    assert "conv.md" in capsys.readouterr().out
    assert main([*argv, "--top", "41", "--out", str(out)]) == 2  # more than the 40 images
    assert main(["convergence", "--checkpoints", str(tmp_path / "none"), "--images", "digits", "--out", str(out)]) == 2
    assert main([*argv, "--epochs", "7", "--out", str(out)]) == 2
    assert "none of epochs 7" in capsys.readouterr().err
