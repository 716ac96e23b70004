"""Training zfnet-small on the real `digits`: beats chance in two epochs, resumes from
its checkpoint, and a resumed run retraces an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from convscope.cli import main
from convscope.errors import InvalidRequestError
from convscope.models.weights import read_state_dict
from convscope.studies.train import TrainConfig, parse_checkpoint_epochs, train


def test_two_epochs_on_digits_beat_chance_and_resume_continues(tmp_path) -> None:
    out = tmp_path / "run"
    config = TrainConfig(arch="zfnet-small", data="digits", checkpoint_epochs="0.5,all")
    first = train(TrainConfig(**{**config.__dict__, "epochs": 1}), out)
    assert first.trained_epochs == [1] and first.resumed_from == 0
    epoch1 = read_state_dict(out / "epoch-1.pt")

    second = train(TrainConfig(**{**config.__dict__, "epochs": 2}), out)
    assert second.resumed_from == 1 and second.trained_epochs == [2]  # epoch 1 was not trained again
    log = json.loads((out / "log.json").read_text())
    assert log["finished"] and [row["epoch"] for row in log["epochs"]] == [1, 2]
    assert log["epochs"][0] == first.log["epochs"][0]
    assert [c["file"] for c in log["checkpoints"]] == ["epoch-0.5.pt", "epoch-1.pt", "epoch-2.pt"]
    assert all(torch.equal(epoch1[k], v) for k, v in read_state_dict(out / "epoch-1.pt").items())

    chance = 1 / 10
    val = log["final"]["val"]
    assert val["top1"] > 3 * chance, val  # 360 held-out digits; ~0.5-0.7 after two epochs
    assert log["epochs"][1]["val_top1"] > log["epochs"][0]["val_top1"] - 0.05
    assert log["dataset"]["train"] == 1437 and log["dataset"]["val"] == 360

    # the paper's renormalisation held all the way
    for name, weight in read_state_dict(out / "epoch-2.pt").items():
        if weight.dim() == 4:
            assert float(weight.pow(2).mean(dim=(1, 2, 3)).sqrt().max()) <= 0.1 + 1e-6, name


def test_a_resumed_run_retraces_an_uninterrupted_one(tmp_path) -> None:
    config = TrainConfig(arch="zfnet-small", data="faces", epochs=2, limit=60, checkpoint_epochs="2")
    straight = train(config, tmp_path / "straight")
    train(TrainConfig(**{**config.__dict__, "epochs": 1}), tmp_path / "resumed")
    resumed = train(config, tmp_path / "resumed")
    assert resumed.resumed_from == 1
    a, b = read_state_dict(tmp_path / "straight" / "epoch-2.pt"), read_state_dict(tmp_path / "resumed" / "epoch-2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.log["epochs"][1]["train_loss"] == resumed.log["epochs"][1]["train_loss"]


def test_a_folder_holding_another_run_is_refused(tmp_path) -> None:
    train(TrainConfig(data="faces", epochs=1, limit=40, checkpoint_epochs="none"), tmp_path)
    with pytest.raises(InvalidRequestError, match="different training run"):
        train(TrainConfig(data="faces", epochs=1, limit=40, lr=0.05, checkpoint_epochs="none"), tmp_path)
    train(TrainConfig(data="faces", epochs=2, limit=40, checkpoint_epochs="none"), tmp_path)
    with pytest.raises(InvalidRequestError, match="already trained for 2 epochs"):  # a smaller budget is no resume
        train(TrainConfig(data="faces", epochs=1, limit=40, checkpoint_epochs="none"), tmp_path)


def test_checkpoint_epoch_lists() -> None:
    assert parse_checkpoint_epochs("all", 3) == [1.0, 2.0, 3.0]
    assert parse_checkpoint_epochs("0.25,0.5,1,2,5,10", 4) == [0.25, 0.5, 1.0, 2.0]
    assert parse_checkpoint_epochs("none", 5) == []
    with pytest.raises(InvalidRequestError):
        parse_checkpoint_epochs("soon", 5)


def test_cli_train_and_ablate(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["--data", "faces", "--limit", "40", "--epochs", "1", "--threads", "1"]
    assert main(["train", *args, "--remove", "3,4", "--checkpoints", "1", "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["architecture"]["remove"] == ["conv3", "conv4"] and meta["classes"] == ["face", "non-face"]

    out = tmp_path / "ablation"
    assert main(["ablate", *args, "--variants", "full;-3,4,6,7;fc=x0.5", "--out", str(out)]) == 0
    document = json.loads((out / "ablation.json").read_text())
    assert [row["variant"] for row in document["variants"]] == ["full", "-3,4,6,7", "fc=x0.5"]
    assert document["variants"][2]["fc_width"] == 256 and not document["top5"]  # 2 classes: no top-5
    assert document["variants"][0]["parameters"] > document["variants"][1]["parameters"]
    table = (out / "ablation.md").read_text()
    assert "Removed layers 3,4,6,7" in table and "Layers 6,7: 256 units" in table
    assert "Val top-1 err %" in capsys.readouterr().out

    assert main(["ablate", *args, "--variants", "full;-2", "--out", str(out)]) == 2
    assert "cannot be removed" in capsys.readouterr().err
