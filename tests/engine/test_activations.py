"""Every listed element-wise activation follows the mode's generalised rule (docs/deconvnet.md),
in module and functional form, in place or not, checked against an explicit
layer-by-layer reference on a tiny net (conv → activation → conv)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.api.schemas import LayerResponse
from convscope.engine import Seed
from convscope.engine.rules import using_rule
from convscope.images import PreparedImage
from fixtures.nets import make_engine

SIZE = 24

# name -> (module, functional form); each is f(x) for the reference
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Tensor], torch.Tensor]]] = {
    "silu": (nn.SiLU, F.silu),
    "gelu": (nn.GELU, F.gelu),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
    "elu": (lambda: nn.ELU(0.7), lambda x: F.elu(x, alpha=0.7)),
    "hardswish": (nn.Hardswish, F.hardswish),
    "mish": (nn.Mish, F.mish),
}
IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": lambda x: F.silu(x, inplace=True),
    "leaky_relu": lambda x: F.leaky_relu_(x, 0.2),
    "elu": lambda x: F.elu(x, 0.7, True),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
    "mish": lambda x: F.mish(x, inplace=True),
}
OP_NAME = {"gelu_tanh": "gelu"}


class Net(nn.Module):
    def __init__(self, act: Callable[[torch.Tensor], torch.Tensor] | nn.Module) -> None:
        super().__init__()
        torch.manual_seed(30)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = act if isinstance(act, nn.Module) else None
        self._fn = None if isinstance(act, nn.Module) else act
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            return self.act(x)
        assert self._fn is not None
        return self._fn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.activate(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def reference(net: Net, f: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: torch.Tensor, mode: str):  # type: ignore[no-untyped-def]
    """The rule written out: conv2ᵀ, then the activation's rule with f' from autograd, then conv1ᵀ."""
    with torch.no_grad():
        pre = net.conv1(image)
    x = pre.clone().requires_grad_(True)
    with torch.enable_grad():
        (derivative,) = torch.autograd.grad(f(x).sum(), x)
    with torch.no_grad():
        signal = torch.nn.grad.conv2d_input(pre.shape, net.conv2.weight, seed, padding=1)
    if mode == "deconvnet":
        signal = signal.clamp(min=0)
    elif mode == "guided":
        signal = signal.clamp(min=0) * derivative.clamp(min=0)
    else:
        signal = signal * derivative
    with torch.no_grad():
        return torch.nn.grad.conv2d_input(image.shape, net.conv1.weight, signal, padding=1)[0]


def _photo() -> PreparedImage:
    from convscope.samples import load_sample

    return make_engine(Net(nn.ReLU()), SIZE, classes=3).prepare(load_sample("chelsea"))


@pytest.fixture(scope="module")
def photo() -> PreparedImage:
    return _photo()


def _check(net: Net, f: Callable[[torch.Tensor], torch.Tensor], photo: PreparedImage, op: str) -> None:
    engine = make_engine(net, SIZE, classes=3)
    assert engine.layer("conv2").rules_covered == (op,)
    assert engine.layer("conv2").rules_uncovered == ()
    with torch.no_grad():
        out = net.conv2(f(net.conv1(photo.tensor)))
    for mode in ("deconvnet", "guided", "gradient"):
        for channel in (0, 3):
            result = engine.project(photo, "conv2", channel, mode=mode)  # type: ignore[arg-type]
            y, x = result.seed_position
            seed = torch.zeros_like(out)
            seed[0, channel, y, x] = out[0, channel, y, x]
            expected = reference(net, f, photo.tensor, seed, mode)
            scale = float(expected.abs().max())
            assert scale > 0
            torch.testing.assert_close(result.projection, expected, atol=1e-5 * scale, rtol=1e-4, msg=f"{op} {mode}")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("form", ["module", "functional"])
def test_activation_rule_matches_the_reference(name: str, form: str, photo: PreparedImage) -> None:
    module, function = ACTIVATIONS[name]
    net = Net(module() if form == "module" else function)
    _check(net, function, photo, OP_NAME.get(name, name))


@pytest.mark.parametrize("name", list(IN_PLACE))
def test_in_place_activation_rule_matches_the_reference(name: str, photo: PreparedImage) -> None:
    _, function = ACTIVATIONS[name]
    _check(Net(IN_PLACE[name]), function, photo, name)


def test_gradient_mode_is_plain_backprop(photo: PreparedImage) -> None:
    """`gradient` through a covered activation equals autograd on the unmodified net."""
    net = Net(nn.Mish())
    engine = make_engine(net, SIZE, classes=3)
    result = engine.project_many(photo, "conv2", [Seed(2)], mode="gradient")[0]
    image = photo.tensor.clone().requires_grad_(True)
    out = net.conv2(net.act(net.conv1(image)))
    y, x = result.seed_position
    (expected,) = torch.autograd.grad(out[0, 2, y, x] * out[0, 2, y, x].detach(), image)
    torch.testing.assert_close(result.projection, expected[0])


def test_guided_keeps_the_signal_only_where_the_derivative_is_positive(photo: PreparedImage) -> None:
    """Hardswish is flat below −3: guided and gradient are zero there, the deconvnet is not."""
    net = Net(nn.Hardswish())
    with torch.no_grad():
        net.conv1.bias.fill_(-100.0)  # every pre-activation far below −3
    engine = make_engine(net, SIZE, classes=3)
    for mode, nonzero in (("deconvnet", True), ("guided", False), ("gradient", False)):
        projection = engine.project(photo, "conv2", 0, select="map", mode=mode).projection  # type: ignore[arg-type]
        assert bool(projection.abs().max() > 0) == nonzero, mode


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_batched_backward_as_on_cuda_equals_one_seed_at_a_time(name: str, photo: PreparedImage) -> None:
    """The rules are vmappable: the batched backward the engine uses on CUDA gives the same."""
    module, _ = ACTIVATIONS[name]
    engine = make_engine(Net(module()), SIZE, classes=3)
    seeds = [Seed(c) for c in range(4)]
    for mode in ("deconvnet", "guided", "gradient"):
        single = engine.project_many(photo, "conv2", seeds, mode=mode)  # type: ignore[arg-type]
        record = engine._record(photo)
        output = record.outputs["conv2"]
        grads, _, _ = engine._seed_tensor(output, seeds)
        with using_rule(mode):  # type: ignore[arg-type]
            (batched,) = torch.autograd.grad(output, record.image, grads, retain_graph=True, is_grads_batched=True)
        for k, projection in enumerate(single):
            torch.testing.assert_close(batched[k, 0], projection.projection, msg=f"{name} {mode}")


def test_an_unknown_activation_is_reported_not_mixed_in(photo: PreparedImage) -> None:
    engine = make_engine(Net(nn.Softplus()), SIZE, classes=3)
    assert engine.layer("conv2").rules_uncovered == ("softplus",)
    assert engine.layer("conv2").rules_covered == ()
    rules = LayerResponse.from_info(engine.layer("conv2")).rules
    assert rules.model_dump() == {"covered": [], "uncovered": ["softplus"]}
