"""The engine's projections equal an explicit layer-by-layer deconvnet (docs/deconvnet.md)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from convscope.engine import Engine
from fixtures.nets import (
    FunctionalReLUNet,
    ReusedReLUNet,
    alexnet_shaped,
    make_engine,
    oracle_projection,
    relu6_sequential,
    seed_for,
    sequential_output,
    zf_shaped,
)

MODES = ("deconvnet", "guided", "gradient")
SELECTS = ("max", "map")


def _photo(engine: Engine):
    from convscope.samples import load_sample

    return engine.prepare(load_sample("chelsea"))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "the oracle projection is all zeros: the test would prove nothing"
    assert float((actual - expected).abs().max()) <= 1e-4 * scale


def _check(engine: Engine, stack: torch.nn.Sequential, prefix: str, layer: str, mode: str, select: str) -> None:
    image = _photo(engine)
    output = sequential_output(stack, image.tensor, layer)
    channel = int(output[0].flatten(1).amax(1).argmax())  # a channel that is surely alive
    result = engine.project(image, prefix + layer, channel, mode=mode, select=select)
    expected = oracle_projection(stack, image.tensor, layer, seed_for(output, channel, select), mode)
    assert result.projection.shape == (3, engine.input_size, engine.input_size)
    _assert_close(result.projection, expected[0])


@pytest.fixture(scope="module")
def alexnet_engine() -> tuple[Engine, torch.nn.Sequential]:
    net = alexnet_shaped()
    net(torch.zeros(1, 3, 127, 127))  # materialise the lazy classifier
    return make_engine(net, 127), net


@pytest.fixture(scope="module")
def zf_engine() -> tuple[Engine, torch.nn.Sequential]:
    net = zf_shaped(size=112)
    return make_engine(net, 112), net.features


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("select", SELECTS)
@pytest.mark.parametrize("layer", ["conv1", "pool2", "relu4", "conv5", "pool5"])
def test_alexnet_shaped_matches_oracle(alexnet_engine, layer: str, mode: str, select: str) -> None:
    engine, net = alexnet_engine
    _check(engine, net, "", layer, mode, select)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("select", SELECTS)
@pytest.mark.parametrize("layer", ["relu1", "norm1", "conv2", "norm2", "conv4", "pool5"])
def test_zf_shaped_matches_oracle(zf_engine, layer: str, mode: str, select: str) -> None:
    engine, features = zf_engine
    _check(engine, features, "features.", layer, mode, select)


def test_deconvnet_differs_from_gradient(zf_engine) -> None:
    """The modes really are different rules (otherwise the tests above could pass trivially)."""
    engine, _ = zf_engine
    image = _photo(engine)
    deconv = engine.project(image, "features.conv5", 3, mode="deconvnet").projection
    gradient = engine.project(image, "features.conv5", 3, mode="gradient").projection
    assert float((deconv - gradient).abs().max()) > 1e-3 * float(deconv.abs().max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", ["conv2", "conv4", "conv5", "conv6", "conv7"])
def test_functional_relu_forms_match_module_twin(layer: str, mode: str) -> None:
    """F.relu, torch.relu, Tensor.relu, F.relu(inplace), torch.relu_ and an ignored-result
    Tensor.relu_ all get the same rule as the nn.ReLU modules of an equivalent sequential net."""
    net = FunctionalReLUNet()
    engine = make_engine(net, 96)
    twin = net.functional_twin()
    image = _photo(engine)
    output = sequential_output(twin, image.tensor, layer)
    channel = int(output[0].flatten(1).amax(1).argmax())
    result = engine.project(image, layer, channel, mode=mode, select="max")
    expected = oracle_projection(twin, image.tensor, layer, seed_for(output, channel, "max"), mode)
    _assert_close(result.projection, expected[0])


@pytest.mark.parametrize("mode", MODES)
def test_reused_inplace_relu_module(mode: str) -> None:
    net = ReusedReLUNet()
    engine = make_engine(net, 64)
    twin = net.twin()
    image = _photo(engine)
    output = sequential_output(twin, image.tensor, "conv3")
    channel = int(output[0].flatten(1).amax(1).argmax())
    result = engine.project(image, "conv3", channel, mode=mode)
    expected = oracle_projection(twin, image.tensor, "conv3", seed_for(output, channel, "max"), mode)
    _assert_close(result.projection, expected[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", ["act1", "conv2", "act2"])
def test_relu6_and_batchnorm(layer: str, mode: str) -> None:
    net = relu6_sequential()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
    engine = make_engine(net, 64)
    image = _photo(engine)
    output = sequential_output(net, image.tensor, layer)
    channel = int(output[0].flatten(1).amax(1).argmax())
    result = engine.project(image, layer, channel, mode=mode)
    expected = oracle_projection(net, image.tensor, layer, seed_for(output, channel, "max"), mode)
    _assert_close(result.projection, expected[0])


def test_explicit_position_seed(alexnet_engine) -> None:
    engine, net = alexnet_engine
    image = engine.prepare(Image.new("RGB", (200, 150), (120, 30, 200)))
    output = sequential_output(net, image.tensor, "conv3")
    seed = torch.zeros_like(output)
    seed[0, 5, 2, 4] = output[0, 5, 2, 4]
    result = engine.project(image, "conv3", 5, position=(2, 4))
    assert result.seed_position == (2, 4)
    assert result.seed_value == pytest.approx(float(output[0, 5, 2, 4]), rel=1e-5)
    expected = oracle_projection(net, image.tensor, "conv3", seed, "deconvnet")
    if float(expected.abs().max()) > 0:
        _assert_close(result.projection, expected[0])
    else:
        assert float(result.projection.abs().max()) == 0.0
