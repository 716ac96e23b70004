"""Linear probe (Table 7) with the real pretrained default model on the real `digits`."""

from __future__ import annotations

import statistics

import pytest

from convscope.engine import Engine
from convscope.errors import NotFoundError
from convscope.models import DEFAULT_MODEL
from convscope.studies.data import ImageSet, load_dataset, stratified_subset
from convscope.studies.probe import load_probe_model, probe


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_probe_model(DEFAULT_MODEL, input_size=96), device_name="cpu")


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    data = load_dataset("digits")
    return data.subset(stratified_subset(data.labels, 200, seed=0))


def test_deeper_layers_are_at_least_as_separable_as_the_first(engine: Engine, digits: ImageSet) -> None:
    # global average pooling (1×1): the spatial layout of a centred digit, which pooling to
    # 2×2 keeps, already makes the first layer's features quite separable
    result = probe(engine, digits, folds=3, seed=0, pool=1)
    rows = result.document["layers"]
    assert engine.model.pretrained and len(rows) >= 5
    assert rows[0]["layer"] == "bn1" and rows[-1]["layer"] == "bn2"  # stem ... head of EfficientNet-Lite0
    for kind in ("svm", "softmax"):
        accuracy = [row[kind]["mean"] for row in rows]
        assert all(row[kind]["n"] == 3 and len(row[kind]["folds"]) == 3 for row in rows)
        first, deeper = accuracy[0], accuracy[1:]
        assert first > 0.5  # 10 classes: chance is 0.1
        # loosely: the best deeper layer beats the first, the typical one is not worse
        assert max(deeper) >= first, (kind, accuracy)
        assert statistics.median(deeper) >= first - 0.03, (kind, accuracy)
    assert "| bn1 |" in result.markdown and "Linear SVM acc %" in result.markdown

    # the same seed gives the same numbers (features, folds and fits are deterministic)
    again = probe(engine, digits, layers=["bn1", "blocks.3"], folds=3, seed=0, pool=1)
    for before, after in zip(
        rows[:1] + [r for r in rows if r["layer"] == "blocks.3"], again.document["layers"], strict=True
    ):
        assert before["svm"]["folds"] == after["svm"]["folds"]
        assert before["softmax"]["folds"] == after["softmax"]["folds"]


def test_unknown_layers_are_named(engine: Engine, digits: ImageSet) -> None:
    with pytest.raises(NotFoundError, match="no module 'nope'"):
        probe(engine, digits.subset(range(20)), layers=["nope"], folds=2)
