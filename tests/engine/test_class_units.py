"""Projections from 2-D starts (the logits, linear layers) follow the same exact rules (issue 21)."""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import make_engine

SIZE = 16


def _tiny_net() -> nn.Sequential:
    """conv -> relu -> max-pool -> flatten -> linear -> relu -> linear, weights set by hand
    (a fixed pattern, not a training run)."""
    net = nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(3, 4, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("pool", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(4 * 8 * 8, 6)),
                ("relu2", nn.ReLU()),
                ("fc2", nn.Linear(6, 5)),
            ]
        )
    )
    with torch.no_grad():
        for module in (net.conv, net.fc1, net.fc2):
            n = module.weight.numel()
            pattern = torch.sin(torch.arange(n, dtype=torch.float32) * 0.7) * (0.5 + (torch.arange(n) % 3))
            module.weight.copy_(pattern.reshape(module.weight.shape) / module.weight[0].numel() ** 0.5)
            module.bias.copy_(torch.linspace(-0.1, 0.2, module.bias.numel()))
    return net.eval()


@torch.no_grad()
def _explicit_deconvnet(net: nn.Sequential, image: torch.Tensor, unit: int) -> torch.Tensor:
    """Layer by layer: forward, then back from the logit holding its value: transposed
    linear (no bias), relu of the signal, transposed linear, unflatten, unpool to the
    switches, relu of the signal, transposed convolution (no bias)."""
    a1 = F.relu(net.conv(image))
    pooled, switches = F.max_pool2d(a1, 2, return_indices=True)
    h = F.relu(net.fc1(pooled.flatten(1)))
    logits = net.fc2(h)
    signal = torch.zeros_like(logits)
    signal[0, unit] = logits[0, unit]
    signal = F.relu(signal @ net.fc2.weight)
    signal = (signal @ net.fc1.weight).reshape(pooled.shape)
    signal = F.relu(F.max_unpool2d(signal, switches, 2, output_size=a1.shape[-2:]))
    return torch.nn.grad.conv2d_input(image.shape, net.conv.weight, signal, padding=1)


@pytest.fixture(scope="module")
def tiny() -> tuple[Engine, nn.Sequential]:
    net = _tiny_net()
    return make_engine(net, SIZE, classes=5), net


def test_logits_and_linear_layers_are_projection_starts(tiny: tuple[Engine, nn.Sequential]) -> None:
    engine, _ = tiny
    starts = {info.name: info for info in engine.unit_layers()}
    assert list(starts) == ["fc1", "logits"]  # fc2's output is the model's output: one row, `logits`
    logits = engine.start("logits")
    assert (logits.kind, logits.units, logits.channels, logits.height, logits.width) == ("Logits", 5, 5, 1, 1)
    assert starts["fc1"].kind == "Linear" and starts["fc1"].units == 6
    assert logits.has_switches and engine.resolve_mode("logits", "auto") == "deconvnet"
    from convscope.api.schemas import LayerResponse

    assert LayerResponse.from_info(logits).model_dump(exclude_none=True)["units"] == 5
    assert "logits" not in {info.name for info in engine.layers()}  # the 4-D list is unchanged
    assert [info.name for info in engine.projection_starts()][-1] == "logits"


@pytest.mark.parametrize("unit", [0, 3])
def test_deconvnet_from_a_logit_equals_the_explicit_computation(tiny: tuple[Engine, nn.Sequential], unit: int) -> None:
    engine, net = tiny
    image = engine.prepare(load_sample("chelsea"))
    result = engine.project(image, "logits", unit, mode="deconvnet")
    expected = _explicit_deconvnet(net, image.tensor, unit)[0]
    scale = float(expected.abs().max())
    assert scale > 0, "the explicit projection is all zeros: the test would prove nothing"
    assert float((result.projection - expected).abs().max()) <= 1e-5 * scale
    assert result.seed_position == (0, 0) and result.select == "unit"
    assert result.seed_value == pytest.approx(float(net(image.tensor)[0, unit]), rel=1e-5)


def test_linear_layer_start_equals_its_logit_route(tiny: tuple[Engine, nn.Sequential]) -> None:
    """A fc1 unit's gradient projection equals value × ∂fc1[u]/∂input from plain autograd."""
    engine, net = tiny
    image = engine.prepare(load_sample("chelsea"))
    x = image.tensor.clone().requires_grad_(True)
    fc1 = net.fc1(net.pool(F.relu(net.conv(x))).flatten(1))
    (grad,) = torch.autograd.grad(fc1[0, 2], x)
    expected = float(fc1[0, 2]) * grad[0]
    result = engine.project(image, "fc1", 2, mode="gradient")
    assert float(expected.abs().max()) > 0
    assert float((result.projection - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_unit_out_of_range_names_the_range(tiny: tuple[Engine, nn.Sequential]) -> None:
    engine, _ = tiny
    image = engine.prepare(load_sample("chelsea"))
    with pytest.raises(InvalidRequestError, match=r"unit 5 is out of range .*'logits' \(0\.\.4\)"):
        engine.project(image, "logits", 5)
    with pytest.raises(InvalidRequestError, match="no spatial map"):
        engine.project(image, "logits", 1, position=(1, 0))
    assert engine.project(image, "logits", 1, position=(0, 0)).seed_position == (0, 0)


def test_the_layer_that_is_the_output_is_one_start_named_logits(tiny: tuple[Engine, nn.Sequential]) -> None:
    """fc2 produces the logits: listed once (as `logits`), and `fc2` still projects (an alias)
    to the same picture."""
    engine, _ = tiny
    listed = [info.name for info in engine.projection_starts()]
    assert listed.count("logits") == 1 and "fc2" not in listed
    alias = engine.start("fc2")
    assert (alias.units, alias.channels) == (5, 5)
    image = engine.prepare(load_sample("chelsea"))
    for mode in ("deconvnet", "gradient"):
        one = engine.project(image, "logits", 3, mode=mode)
        other = engine.project(image, "fc2", 3, mode=mode)
        assert float(one.projection.abs().max()) > 0
        assert torch.equal(one.projection, other.projection) and one.seed_value == other.seed_value


def test_a_linear_layer_below_a_final_op_stays_its_own_start() -> None:
    """When something follows the last linear layer (here a ReLU), its output is not the
    logits: both are listed."""
    net = _tiny_net()
    net.add_module("relu3", nn.ReLU())
    engine = make_engine(net, SIZE, classes=5)
    assert [info.name for info in engine.unit_layers()] == ["fc1", "fc2", "logits"]


@functools.cache
def _default_engine() -> Engine:
    return Engine(load_model("efficientnet_lite0"), device_name="cpu", cache_size=2)


def test_default_model_lists_one_row_for_the_class_scores() -> None:
    """EfficientNet-Lite0's `classifier` is its output: the layer list has `logits` once and no
    `classifier` row; `classifier` is still accepted (old links, CLI calls) and is the same start."""
    engine = _default_engine()
    names = [info.name for info in engine.projection_starts()]
    assert names[-1] == "logits" and names.count("logits") == 1 and "classifier" not in names
    assert [info.name for info in engine.unit_layers()] == ["logits"]
    image = engine.prepare(load_sample("chelsea"))
    one = engine.project(image, "logits", 281, mode="gradient")
    other = engine.project(image, "classifier", 281, mode="gradient")
    assert torch.equal(one.projection, other.projection)


def test_default_model_gradient_from_a_logit_equals_plain_autograd() -> None:
    engine = _default_engine()
    info = engine.start("logits")
    assert info.units == len(engine.labels)
    image = engine.prepare(load_sample("chelsea"))
    cls = engine.predict(image, 1)[0].index
    result = engine.project(image, "logits", cls, mode="gradient")
    x = image.tensor.clone().requires_grad_(True)
    logit = engine.model.module(x)[0, cls]
    (grad,) = torch.autograd.grad(logit, x)
    expected = float(logit) * grad[0]
    peak = float(expected.abs().max())
    assert peak > 0
    assert result.seed_value == pytest.approx(float(logit), rel=1e-5)
    assert float((result.projection - expected).abs().max()) <= 1e-5 * peak
