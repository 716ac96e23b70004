"""Layer metadata read from the recorded graph: max-pool switches below a layer, which
activations follow the mode's rule, and `mode="auto"` resolving from it (docs/deconvnet.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.api.schemas import LayerResponse
from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.images import PreparedImage
from convscope.samples import load_sample
from fixtures.nets import ReusedReLUNet, make_engine, pool_gate_net

SIZE = 48


class SigmoidGated(nn.Module):
    """A switchless net whose only non-linearity besides ReLU is a functional sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.conv2(x * torch.sigmoid(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def photo() -> PreparedImage:
    engine = make_engine(pool_gate_net(), SIZE, classes=4)
    return engine.prepare(load_sample("chelsea"))


def test_switches_lie_below_a_pool_and_only_there() -> None:
    engine = make_engine(pool_gate_net(), SIZE, classes=4)
    switches = {info.name: info.has_switches for info in engine.layers()}
    assert switches == {
        "conv1": False,
        "relu1": False,
        "pool1": True,
        "conv2": True,
        "gate": True,
        "conv3": True,
        "pool": True,
    }


def test_functional_max_pool_counts_as_switches() -> None:
    engine = make_engine(ReusedReLUNet(), SIZE)
    switches = {info.name: info.has_switches for info in engine.layers()}
    assert switches == {"conv1": False, "act": False, "conv2": True, "conv3": True}


def test_rule_coverage_names_covered_and_uncovered_ops_per_layer() -> None:
    engine = make_engine(pool_gate_net(), SIZE, classes=4)
    rules = {info.name: (info.rules_covered, info.rules_uncovered) for info in engine.layers()}
    assert rules["conv1"] == ((), ())
    assert rules["relu1"] == (("relu",), ())  # the layer's own activation counts
    assert rules["conv2"] == (("relu",), ())
    assert rules["gate"] == (("relu",), ("tanh",))
    assert rules["conv3"] == (("relu",), ("tanh",))
    row = LayerResponse.from_info(engine.layer("gate")).model_dump(mode="json")  # its JSON
    assert row["has_switches"] is True
    assert row["rules"] == {"covered": ["relu"], "uncovered": ["tanh"]}


def test_functional_uncovered_op_is_reported() -> None:
    engine = make_engine(SigmoidGated(), SIZE, classes=4)
    assert engine.layer("conv2").rules_uncovered == ("sigmoid",)
    assert engine.layer("conv2").rules_covered == ("relu",)
    assert engine.layer("conv1").rules_uncovered == ()


def test_lrn_is_covered_and_its_inner_arithmetic_is_not_reported() -> None:
    from fixtures.nets import zf_shaped

    engine = make_engine(zf_shaped(size=64), 64)
    info = engine.layer("features.conv3")
    assert info.rules_covered == ("local_response_norm", "relu")
    assert info.rules_uncovered == ()


def test_auto_resolves_per_layer_and_the_projection_says_which(photo: PreparedImage) -> None:
    engine = make_engine(pool_gate_net(), SIZE, classes=4)
    assert engine.resolve_mode("relu1", "auto") == "guided"
    assert engine.resolve_mode("conv3", "auto") == "deconvnet"
    assert engine.resolve_mode("conv3", "gradient") == "gradient"
    for layer, expected in (("relu1", "guided"), ("conv3", "deconvnet")):
        auto = engine.project(photo, layer, 1, mode="auto")
        explicit = engine.project(photo, layer, 1, mode=expected)  # type: ignore[arg-type]
        assert auto.mode == expected
        assert torch.equal(auto.projection, explicit.projection)
    many = engine.project_many(photo, "relu1", [engine_seed(0), engine_seed(2)], mode="auto")
    assert [p.mode for p in many] == ["guided", "guided"]


def engine_seed(channel: int):  # type: ignore[no-untyped-def]
    from convscope.engine import Seed

    return Seed(channel)


def test_unknown_mode_is_a_clear_error(photo: PreparedImage) -> None:
    engine = make_engine(pool_gate_net(), SIZE, classes=4)
    with pytest.raises(InvalidRequestError, match=r"unknown mode 'nope'.*auto"):
        engine.project(photo, "conv1", 0, mode="nope")  # type: ignore[arg-type]


def test_default_model_has_no_switches_and_every_activation_covered() -> None:
    from convscope.models import load_model

    engine = Engine(load_model("efficientnet_lite0", pretrained=False, input_size=64), device_name="cpu")
    layers = engine.layers()
    assert not any(info.has_switches for info in layers)
    assert all(info.rules_uncovered == () for info in layers)
    assert engine.layer("blocks.2").rules_covered == ("relu6",)
