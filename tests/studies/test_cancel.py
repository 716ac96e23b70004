"""Cancelling a study mid-way: training leaves the folder as after its last finished epoch
(nothing half-written, no early checkpoint of the unfinished epoch) and resumes to the
same weights as an uninterrupted run; a probe stops with `Cancelled` and leaves no hook."""

from __future__ import annotations

import json
import math

import pytest
import torch

from convscope.engine import Engine
from convscope.models.weights import read_state_dict
from convscope.studies.data import load_dataset, stratified_subset
from convscope.studies.probe import load_probe_model, probe
from convscope.studies.train import TrainConfig, train
from convscope.tasks import CallbackTask, Cancelled


def test_training_cancelled_midway_resumes_to_the_uninterrupted_weights(tmp_path) -> None:
    config = TrainConfig(arch="zfnet-small", data="faces", epochs=2, limit=60, batch_size=8, checkpoint_epochs="1.5,2")
    straight = train(config, tmp_path / "straight")
    steps = math.ceil(straight.log["dataset"]["train"] / config.batch_size)

    out = tmp_path / "cancelled"
    seen: list[tuple[int, int]] = []
    task = CallbackTask(
        lambda done, total: seen.append((done, total)), lambda: bool(seen) and seen[-1][0] >= steps + steps // 2 + 1
    )
    with pytest.raises(Cancelled) as stopped:
        train(config, out, task=task)
    assert stopped.value.total == 2 * steps and steps < stopped.value.done < 2 * steps
    assert seen[0] == (1, 2 * steps)
    log = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in log["epochs"]] == [1] and not log["finished"]
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1
    assert not (out / "epoch-1.5.pt").exists()  # written in the cancelled epoch, then removed
    assert not list(out.glob(".*.tmp"))

    resumed = train(config, out)
    assert resumed.resumed_from == 1
    a, b = read_state_dict(tmp_path / "straight" / "epoch-2.pt"), read_state_dict(out / "epoch-2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["file"] for c in resumed.log["checkpoints"]] == ["epoch-1.5.pt", "epoch-2.pt"]


def test_a_probe_cancelled_during_feature_extraction_leaves_no_hook() -> None:
    digits = load_dataset("digits")
    images = digits.subset(stratified_subset(digits.labels, 40, seed=0))
    engine = Engine(load_probe_model("zfnet-small", input_size=64), device_name="cpu")
    module = engine.model.module
    task = CallbackTask(should_stop=lambda: True)
    with pytest.raises(Cancelled) as stopped:
        probe(engine, images, ["features.conv1", "features.conv2"], folds=2, batch_size=8, task=task)
    assert stopped.value.done == 8 and stopped.value.total == 40
    assert all(not m._forward_hooks for m in module.modules())
    assert engine.lock.acquire(timeout=1)
    engine.lock.release()
