"""Real architectures with random weights: agreement with Captum, modern ReLU forms,
batched seeds, the forward cache and thread safety."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

from convscope.engine import Engine, Seed
from convscope.engine.rules import RuleBox, RuleMode
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import make_engine


@functools.cache
def _engine(name: str, size: int) -> Engine:
    """Built once per (architecture, size) for this module: random init of big nets is slow."""
    torch.manual_seed(0)
    return Engine(load_model(name, pretrained=False, input_size=size), device_name="cpu", cache_size=4)


def _strongest(engine: Engine, image, layer: str) -> tuple[int, int, int]:
    maps = engine.activations(image, layer)
    channel = int(maps.flatten(1).amax(1).argmax())
    y, x = divmod(int(maps[channel].argmax()), maps.shape[2])
    return channel, y, x


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [("alexnet", 160, "features.10"), ("alexnet", 160, "features.5"), ("vgg16", 96, "features.21")],
)
@pytest.mark.parametrize("mode", ["deconvnet", "guided"])
def test_agrees_with_captum(name: str, size: int, layer: str, mode: str) -> None:
    """Captum seeds with 1, so its attribution times the activation value is ours."""
    engine = _engine(name, size)
    image = engine.prepare(load_sample("coffee"))
    channel, y, x = _strongest(engine, image, layer)
    ours = engine.project(image, layer, channel, mode=mode)
    module = dict(engine.model.module.named_modules())[layer]
    method = NeuronDeconvolution if mode == "deconvnet" else NeuronGuidedBackprop
    inputs = image.tensor.clone().requires_grad_(True)
    theirs = method(engine.model.module, module).attribute(inputs, neuron_selector=(channel, y, x))[0]
    expected = theirs * ours.seed_value
    assert ours.seed_position == (y, x)
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((ours.projection - expected).abs().max()) <= 1e-4 * scale


def _autograd_projection(engine: Engine, image, layer: str, channel: int) -> torch.Tensor:
    """Plain `torch.autograd.grad` of the seeded activation, outside the engine."""
    outputs = {}
    module = dict(engine.model.module.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: outputs.setdefault("out", o.clone()))
    try:
        x = image.tensor.clone().requires_grad_(True)
        with torch.enable_grad():
            engine.model.module(x)
            out = outputs["out"]
            seed = torch.zeros_like(out)
            cmap = out[0, channel].detach()
            yy, xx = divmod(int(cmap.argmax()), cmap.shape[1])
            seed[0, channel, yy, xx] = cmap[yy, xx]
            (grad,) = torch.autograd.grad(out, x, seed)
    finally:
        handle.remove()
    return grad[0]


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet50", "layer2.1"),  # residual blocks with in-place `out += identity` and in-place ReLUs
        ("resnet50", "layer3.0.conv2"),
        ("googlenet", "inception3b"),  # functional F.relu(inplace=True) and concatenation
        ("googlenet", "inception4a.branch3.1.conv"),
        ("efficientnet_lite0", "blocks.4.1"),  # ReLU6 via hardtanh, batch norm, residuals
    ],
)
def test_modern_nets(name: str, layer: str) -> None:
    engine = _engine(name, 112)
    image = engine.prepare(load_sample("chelsea"))
    channel, _, _ = _strongest(engine, image, layer)
    results = {
        mode: engine.project(image, layer, channel, mode=mode).projection
        for mode in ("deconvnet", "guided", "gradient")
    }
    for mode, projection in results.items():
        assert torch.isfinite(projection).all(), mode
        assert float(projection.abs().max()) > 0, mode
    expected = _autograd_projection(engine, image, layer, channel)
    scale = float(expected.abs().max())
    assert float((results["gradient"] - expected).abs().max()) <= 1e-4 * scale
    # the deconvnet rule really is applied at these nets' activations: ReLUs (module, functional,
    # in-place, ReLU6 as hardtanh) are the only steps where the two rules differ
    assert float((results["deconvnet"] - expected).abs().max()) > 1e-3 * scale


@pytest.fixture(scope="module")
def alexnet() -> Engine:
    torch.manual_seed(5)
    return Engine(load_model("alexnet", pretrained=False, input_size=160), device_name="cpu", cache_size=4)


def test_batched_seeds_equal_one_by_one(alexnet: Engine) -> None:
    image = alexnet.prepare(load_sample("rocket"))
    seeds = [Seed(c) for c in range(0, 64, 7)] + [Seed(3, "map"), Seed(5, position=(1, 2))]
    for mode in ("deconvnet", "guided", "gradient"):
        batched = alexnet.project_many(image, "features.8", seeds, mode=mode)
        for seed, result in zip(seeds, batched, strict=True):
            single = alexnet.project(
                image, "features.8", seed.channel, mode=mode, select=seed.select, position=seed.position
            )
            assert result.seed_position == single.seed_position
            assert result.seed_value == single.seed_value
            assert torch.allclose(result.projection, single.projection, rtol=1e-5, atol=1e-6)


def test_second_click_reuses_the_forward_pass(alexnet: Engine) -> None:
    image = alexnet.prepare(load_sample("astronaut"))
    before = alexnet.stats.forward_passes
    alexnet.project(image, "features.10", 1)
    alexnet.project(image, "features.10", 2, mode="guided")
    alexnet.predict(image)
    alexnet.activations(image, "features.3")
    assert alexnet.stats.forward_passes == before + 1


def test_cache_is_bounded(alexnet: Engine) -> None:
    from PIL import Image

    for shade in range(alexnet.cache_size + 3):
        alexnet.project(alexnet.prepare(Image.new("RGB", (64, 64), (shade * 20, 0, 0))), "features.0", 0)
    assert len(alexnet._cache) == alexnet.cache_size


def test_threads_get_the_same_results(alexnet: Engine) -> None:
    images = [alexnet.prepare(load_sample(name)) for name in ("chelsea", "coffee", "rocket")]
    jobs = [(i, c, m) for i in range(3) for c in (0, 9, 17) for m in ("deconvnet", "gradient")]
    alexnet.clear_cache()
    expected = {job: alexnet.project(images[job[0]], "features.6", job[1], mode=job[2]).projection for job in jobs}
    alexnet.clear_cache()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda job: (job, alexnet.project(images[job[0]], "features.6", job[1], mode=job[2])), jobs * 2)
        )
    for job, result in results:
        assert torch.equal(result.projection, expected[job])


def test_rule_mode_is_local_to_its_thread() -> None:
    """While one thread records under the deconvnet rule, another thread's ReLUs are plain."""
    entered, done = threading.Event(), threading.Event()

    def hold_mode() -> None:
        with RuleMode(RuleBox("deconvnet")):
            entered.set()
            done.wait(timeout=10)

    thread = threading.Thread(target=hold_mode)
    thread.start()
    try:
        assert entered.wait(timeout=10)
        x = torch.tensor([-1.0, 2.0], requires_grad=True)
        (grad,) = torch.autograd.grad(torch.relu(x), x, torch.tensor([-3.0, -4.0]))
        assert grad.tolist() == [0.0, -4.0]  # plain gradient: mask only, no rectification
    finally:
        done.set()
        thread.join()
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    with RuleMode(RuleBox("deconvnet")):
        y = torch.relu(x)
    (grad,) = torch.autograd.grad(y, x, torch.tensor([3.0, -4.0]))
    assert grad.tolist() == [3.0, 0.0]  # deconvnet: relu(signal), forward mask ignored


def test_hooks_are_removed_even_on_error() -> None:
    class Boom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fail = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            if self.fail:
                raise RuntimeError("boom")
            return x.mean(dim=(2, 3))

    net = Boom()
    engine = make_engine(net, 32, classes=4)
    net.fail = True
    from PIL import Image

    with pytest.raises(RuntimeError, match="boom"):
        engine.predict(engine.prepare(Image.new("RGB", (32, 32))))
    assert not net.conv._forward_hooks


def test_forward_batch_keeps_pre_activation_outputs() -> None:
    """A conv followed by ReLU(inplace=True): the recorded conv output keeps its negative values,
    in plain inference (`forward_batch`) as in the recorded forward pass."""
    from fixtures.nets import alexnet_shaped

    net = alexnet_shaped()
    net(torch.zeros(1, 3, 127, 127))
    engine = make_engine(net, 127)
    image = engine.prepare(load_sample("coffee"))
    with torch.no_grad():
        expected = net.conv1(image.tensor)
    assert float(expected.min()) < 0
    _, outputs = engine.forward_batch(image.tensor, ["conv1", "relu1"])
    assert torch.allclose(outputs["conv1"], expected, atol=1e-5)
    assert float(outputs["relu1"].min()) >= 0
    assert torch.allclose(engine.activations(image, "conv1"), expected[0], atol=1e-5)
