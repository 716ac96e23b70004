"""Feature vectors of any module: names, the penultimate default, hooks always removed."""

from __future__ import annotations

import pytest
import torch

from analysis.nets import SmallConvNet, circular_net, engine_for
from convscope.analysis.features import (
    extract_features,
    first_conv_layer,
    penultimate_feature,
    resolve_feature,
)
from convscope.errors import InvalidRequestError, NotFoundError


def test_names_resolve_to_outputs_inputs_and_the_penultimate() -> None:
    engine = engine_for(circular_net(), size=32)
    assert penultimate_feature(engine) == "fc2:input"
    assert first_conv_layer(engine) == "features.conv1"
    assert resolve_feature(engine, None).name == "fc2:input"
    assert resolve_feature(engine, "pool").name == "pool"
    assert resolve_feature(engine, "fc1:input").use_input
    with pytest.raises(NotFoundError, match="no module 'fc9'"):
        resolve_feature(engine, "fc9")
    with pytest.raises(InvalidRequestError, match="NAME:input"):
        resolve_feature(engine, "fc1:output")


def test_features_match_a_manual_forward_pass_and_hooks_are_removed() -> None:
    net = circular_net()
    engine = engine_for(net, size=32)
    x = torch.randn(3, 3, 32, 32)
    specs = [resolve_feature(engine, name) for name in ("features.conv2", "penultimate", "pool")]
    logits, feats = extract_features(engine, x, specs)
    with torch.no_grad():
        conv2 = net.features.conv2(net.features.relu1(net.features.conv1(x)))
        pooled = net.pool(net.features.relu2(conv2)).flatten(1)
        hidden = net.relu3(net.fc1(pooled))
        expected_logits = net.fc2(hidden)
    torch.testing.assert_close(feats["features.conv2"], conv2.reshape(3, -1))
    torch.testing.assert_close(feats["pool"], pooled)
    torch.testing.assert_close(feats["fc2:input"], hidden)
    torch.testing.assert_close(logits, expected_logits)
    assert all(not module._forward_hooks for module in net.modules())


def test_a_map_rewritten_by_an_in_place_relu_is_captured_before_it() -> None:
    engine = engine_for(SmallConvNet(), size=32)  # conv1 -> ReLU(inplace=True)
    x = torch.randn(2, 3, 32, 32)
    _, feats = extract_features(engine, x, [resolve_feature(engine, "conv1")])
    with torch.no_grad():
        expected = engine.model.module.conv1(x)
    assert expected.min() < 0
    torch.testing.assert_close(feats["conv1"], expected.reshape(2, -1))


def test_hooks_are_removed_when_the_pass_fails() -> None:
    net = circular_net()
    engine = engine_for(net, size=32)
    with pytest.raises(RuntimeError):
        extract_features(engine, torch.randn(1, 5, 32, 32), [resolve_feature(engine, "pool")])
    assert all(not module._forward_hooks for module in net.modules())
