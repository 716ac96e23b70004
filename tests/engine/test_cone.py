"""The receptive-field ("cone") backward equals the dense backward pass.

Every mode, seeds in the centre, on every border and in every corner, on the built-in
architectures (random weights; EfficientNet-Lite0 with its real weights) and the hand-built
fixture nets. Nodes the cone cannot follow make it fall back to the dense pass; the planned
boxes are the convolution's and the pool's windows worked out by hand; the engine takes the
cone only where it plans at most half the dense work, and never on CUDA.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from convscope.engine import Engine, Seed, cone
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import (
    ActivationZooNet,
    ConeZooNet,
    FunctionalReLUNet,
    LinearStemNet,
    PadCatNet,
    ReusedReLUNet,
    SoftplusNet,
    SqueezeExciteNet,
    alexnet_shaped,
    make_engine,
    relu6_sequential,
    zf_shaped,
)

MODES = ("deconvnet", "guided", "gradient")


def _positions(height: int, width: int) -> list[tuple[int, int]]:
    """The centre, the four corners and the middle of each border."""
    ys, xs = (0, height // 2, height - 1), (0, width // 2, width - 1)
    return sorted({(y, x) for y in ys for x in xs})


def _seeds(engine: Engine, image, layer: str) -> list[Seed]:
    """One seed per position, on the channel most active there (so the masks let it through),
    and one whole map (`select=map`: its cone is the whole field, cropped to one channel)."""
    maps = engine.activations(image, layer)
    seeds = [Seed(int(maps[:, y, x].argmax()), position=(y, x)) for y, x in _positions(*maps.shape[1:])]
    return [*seeds, Seed(int(maps.flatten(1).sum(1).argmax()), "map")]


def _assert_cone_equals_dense(engine: Engine, layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = engine.prepare(load_sample("coffee"))
    seeds = _seeds(engine, image, layer)
    nonzero = 0
    for mode in MODES:
        monkeypatch.setattr(cone, "MAX_RATIO", -1.0)  # dense only
        before = engine.stats.cone_passes
        dense = engine.project_many(image, layer, seeds, mode)
        assert engine.stats.cone_passes == before
        monkeypatch.setattr(cone, "MAX_RATIO", math.inf)  # the cone wherever it can follow the graph
        ours = engine.project_many(image, layer, seeds, mode)
        assert engine.stats.cone_passes == before + len(seeds), f"{layer}: the cone fell back to the dense pass"
        for seed, mine, reference in zip(seeds, ours, dense, strict=True):
            peak = float(reference.projection.abs().max())
            error = float((mine.projection - reference.projection).abs().max())
            assert error <= 1e-5 * peak, (mode, seed.position, error, peak)
            nonzero += peak > 0
    assert nonzero >= len(seeds) * len(MODES) // 2  # the comparison is not between zeros


@functools.cache
def _builtin(name: str, size: int) -> Engine:
    torch.manual_seed(0)
    loaded = load_model(name, pretrained=(name == "efficientnet_lite0"), input_size=size)
    return Engine(loaded, device_name="cpu", cache_size=2)


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [
        ("alexnet", 127, "features.5"),  # overlapping pools, in-place ReLUs
        ("alexnet", 127, "features.10"),
        ("vgg16", 64, "features.16"),
        ("resnet50", 64, "layer2.0"),  # bottlenecks, 1×1 stride-2 downsampling, in-place residual sums
        ("googlenet", 64, "inception3b"),  # functional ReLUs, concatenation, transform_input (select)
        ("efficientnet_lite0", 128, "blocks.3"),  # real weights: depthwise convs, batch norm, ReLU6
        ("zfnet-small", 64, "features.conv3"),  # the ZF net (convscope.models.zfnet): LRN, ceil-mode pools
    ],
)
def test_builtin_models(name: str, size: int, layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_cone_equals_dense(_builtin(name, size), layer, monkeypatch)


def _fixture_engine(build: Callable[[], nn.Module], size: int) -> Engine:
    net = build()
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))  # materialise lazy layers
    return make_engine(net, size)


@functools.cache
def _fixture(name: str) -> Engine:
    builders: dict[str, tuple[Callable[[], nn.Module], int]] = {
        "zoo": (ConeZooNet, 64),
        "alexnet_shaped": (alexnet_shaped, 127),
        "zf_shaped": (zf_shaped, 112),
        "relu6": (relu6_sequential, 48),
        "functional": (FunctionalReLUNet, 48),
        "reused": (ReusedReLUNet, 32),
        "activations": (ActivationZooNet, 48),
        "padcat": (PadCatNet, 40),
    }
    build, size = builders[name]
    return _fixture_engine(build, size)


@pytest.mark.parametrize(
    ("net", "layer"),
    [
        ("zoo", "bn"),  # non-square kernels and strides, batch norm
        ("zoo", "pool"),  # overlapping, padded, ceil-mode pool
        ("zoo", "grouped"),  # dilation, groups
        ("zoo", "lrn"),  # residual sum, depthwise, LRN (identity for the deconvnet, exact otherwise)
        ("zoo", "relu6"),  # concatenation, average pooling, ReLU6
        ("zoo", "head"),
        ("alexnet_shaped", "pool5"),
        ("zf_shaped", "features.norm2"),
        ("relu6", "act2"),
        ("functional", "conv7"),  # every functional and in-place ReLU form
        ("reused", "conv3"),  # one in-place ReLU module called three times
        ("padcat", "conv3"),  # F.pad, scalar arithmetic, concatenation along the width
        ("activations", "convs.6"),  # SiLU, GELU (both), LeakyReLU, ELU, Hardswish, Mish: the engine's rules
    ],
)
def test_fixture_nets(net: str, layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_cone_equals_dense(_fixture(net), layer, monkeypatch)


def _graph(net: nn.Module, size: int, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain recorded forward pass (no engine): the layer's output and the input leaf."""
    outputs: dict[str, torch.Tensor] = {}
    module = dict(net.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: outputs.setdefault("out", o))
    try:
        image = torch.randn(1, 3, size, size, requires_grad=True)
        net.eval()(image)
    finally:
        handle.remove()
    return outputs["out"], image


@pytest.mark.parametrize(
    ("build", "size", "layer", "node"),
    [
        (SqueezeExciteNet, 24, "conv2", "SigmoidBackward"),  # global pooling inside the path down
        (LinearStemNet, 16, "conv", "Backward"),  # a fully connected layer below the seed
        (SoftplusNet, 16, "conv2", "SoftplusBackward"),  # an activation without an engine rule
    ],
)
def test_unknown_nodes_fall_back_to_dense(
    build: Callable[[], nn.Module], size: int, layer: str, node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, image = _graph(build(), size, layer)
    grad = torch.zeros_like(output)
    grad[0, 0, 2, 2] = 1.0
    seed_plan = cone.plan(output, image, grad, "gradient")
    assert seed_plan.unsupported is not None and node in seed_plan.unsupported
    assert cone.backward_if_cheaper(output, image, grad, "gradient", max_ratio=math.inf) is None
    with pytest.raises(cone.ConeUnsupported):
        cone.cone_backward(output, image, grad, "gradient")

    engine = _fixture_engine(build, size)
    picture = engine.prepare(load_sample("coffee"))
    seeds = _seeds(engine, picture, layer)[:3]
    monkeypatch.setattr(cone, "MAX_RATIO", math.inf)
    before = engine.stats.cone_passes
    results = engine.project_many(picture, layer, seeds, "gradient")
    assert engine.stats.cone_passes == before
    monkeypatch.setattr(cone, "MAX_RATIO", -1.0)
    dense = engine.project_many(picture, layer, seeds, "gradient")
    for mine, reference in zip(results, dense, strict=True):
        assert torch.equal(mine.projection, reference.projection)


class _TaggedSiLU(torch.autograd.Function):
    """An element-wise rule function as the engine writes them (tagged `ctx.convscope_op`, the
    rule read from `ctx.box`): the cone calls its own backward over the box."""

    @staticmethod
    def forward(x: torch.Tensor, box: SimpleNamespace) -> torch.Tensor:  # type: ignore[override]
        return nn.functional.silu(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])
        ctx.box, ctx.convscope_op = inputs[1], "silu"

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        if ctx.box.rule == "deconvnet":
            return grad.clamp(min=0), None
        if ctx.box.rule == "guided":
            return torch.ops.aten.silu_backward(grad.clamp(min=0), x).clamp(min=0), None
        return torch.ops.aten.silu_backward(grad, x), None


@pytest.mark.parametrize("rule", MODES)
def test_tagged_rule_functions_run_over_the_box(rule: str) -> None:
    torch.manual_seed(0)
    box = SimpleNamespace(rule="deconvnet")
    conv1, conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, stride=2, padding=1)
    image = torch.randn(1, 3, 32, 32, requires_grad=True)
    output = conv2(_TaggedSiLU.apply(conv1(image), box))
    for y, x in _positions(*output.shape[2:]):
        grad = torch.zeros_like(output)
        grad[0, 2, y, x] = 1.0
        box.rule = rule  # the dense pass reads the rule from the recorded box; the cone gets it per call
        (dense,) = torch.autograd.grad(output, image, grad, retain_graph=True)
        box.rule = "gradient" if rule != "gradient" else "deconvnet"  # a different rule on the record
        mine = cone.backward_if_cheaper(output, image, grad, rule, max_ratio=math.inf)
        assert mine is not None
        assert float((mine - dense).abs().max()) <= 1e-5 * float(dense.abs().max())
        assert float(dense.abs().max()) > 0


def _support(tensor: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    nonzero = tensor[0].abs().sum(0).nonzero()
    low, high = nonzero.amin(0).tolist(), nonzero.amax(0).tolist()
    return (low[0], high[0] + 1), (low[1], high[1] + 1)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(5, 2, 1, 1), ((1, 7), (1, 2), (0, 3), 1), ((7, 1), (2, 1), (3, 0), 1), (3, 1, 2, 2), (1, 2, 0, 1)],
)
def test_convolution_window_by_hand(kernel, stride, padding, dilation) -> None:
    """`[t·s − p, (b−1)·s − p + d·(k−1) + 1)` clipped, per axis, and the dense gradient's support."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, stride, padding, dilation)
    image = torch.randn(1, 2, 20, 23, requires_grad=True)
    output = conv(image)
    k, s, p, d = (nn.modules.utils._pair(v) for v in (kernel, stride, padding, dilation))
    height, width = output.shape[2:]
    for y, x in _positions(height, width):
        grad = torch.zeros_like(output)
        grad[0, 1, y, x] = 1.0
        seed_plan = cone.plan(output, image, grad, "gradient")
        expected = tuple(
            (max(t * s[a] - p[a], 0), min(t * s[a] - p[a] + d[a] * (k[a] - 1) + 1, image.shape[2 + a]))
            for a, t in enumerate((y, x))
        )
        assert seed_plan.image_box == ((0, 1), (0, 2), *expected)
        (dense,) = torch.autograd.grad(output, image, grad, retain_graph=True)
        assert _support(dense) == expected
        assert torch.allclose(cone.run(seed_plan, output, image, grad, "gradient"), dense, atol=1e-7)


def test_pool_and_sum_windows_by_hand() -> None:
    """A ceil-mode pool over a convolution, and a residual sum: the union of both branches."""
    torch.manual_seed(0)
    conv_a, conv_b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 5, padding=2)
    image = torch.randn(1, 1, 11, 11, requires_grad=True)
    pooled = nn.functional.max_pool2d(conv_a(image), 3, 2, ceil_mode=True)  # 11 -> 5 (ceil)
    assert pooled.shape[-1] == 5
    grad = torch.zeros_like(pooled)
    grad[0, 0, 4, 0] = 1.0  # the last row: its window [8, 11) is clipped at 11 rows
    assert cone.plan(pooled, image, grad, "gradient").image_box == ((0, 1), (0, 1), (7, 11), (0, 4))
    summed = conv_a(image) + conv_b(image)
    grad = torch.zeros_like(summed)
    grad[0, 0, 5, 1] = 1.0
    assert cone.plan(summed, image, grad, "gradient").image_box == ((0, 1), (0, 1), (3, 8), (0, 4))


def test_a_unit_that_sees_only_padding() -> None:
    """A 1×1 convolution padded by 1: its border units see no input, their projection is zero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1, padding=1))
    output, image = _graph(net, 8, "1")
    for y, x in ((0, 0), (0, 5), (9, 9), (5, 5)):
        grad = torch.zeros_like(output)
        grad[0, 1, y, x] = 1.0
        (dense,) = torch.autograd.grad(output, image, grad, retain_graph=True)
        mine = cone.cone_backward(output, image, grad, "gradient")
        assert torch.allclose(mine, dense, atol=1e-7)
        assert (float(dense.abs().max()) > 0) == ((y, x) == (5, 5))


def test_engine_takes_the_cone_only_where_it_halves_the_work() -> None:
    """AlexNet `features.5` (a 67-pixel field in 127): the cone. EfficientNet-Lite0 `blocks.5`
    (a field wider than the image): nothing to crop, the dense pass."""
    alexnet = _builtin("alexnet", 127)
    image = alexnet.prepare(load_sample("chelsea"))
    before = alexnet.stats.cone_passes
    alexnet.project(image, "features.5", 3)
    assert alexnet.stats.cone_passes == before + 1
    lite = _builtin("efficientnet_lite0", 128)
    image = lite.prepare(load_sample("chelsea"))
    before = lite.stats.cone_passes
    lite.project(image, "blocks.5", 3)
    assert lite.stats.cone_passes == before


def test_plan_compares_cone_and_dense_arithmetic() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.MaxPool2d(3, 2), nn.Conv2d(8, 16, 3, padding=1))
    output, image = _graph(net, 127, "2")
    grad = torch.zeros_like(output)
    grad[0, 5, 14, 14] = 1.0
    centre = cone.plan(output, image, grad, "deconvnet")
    assert centre.supported and 0 < centre.cone_work < centre.dense_work and centre.ratio < 0.5
    whole = cone.plan(output, image, torch.ones_like(output), "deconvnet")
    assert whole.ratio > 1.0  # the whole map: the cone's extra per-node cost and nothing saved
    assert cone.plan(output, image, torch.zeros_like(output), "deconvnet").seed_box is None
    assert torch.equal(
        cone.cone_backward(output, image, torch.zeros_like(output), "deconvnet"), torch.zeros(1, 3, 127, 127)
    )


def test_threads_share_one_recorded_graph() -> None:
    """Eight threads running cones over one recorded graph (its program built once, shared)
    get exactly the sequential results."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),
        nn.BatchNorm2d(8).eval(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
    )
    output, image = _graph(net, 48, "3")
    grads = []
    for y, x in _positions(*output.shape[2:]) * 2:
        grad = torch.zeros_like(output)
        grad[0, (y + x) % 8, y, x] = 1.0
        grads.append(grad)
    expected = [cone.cone_backward(output, image, grad, "gradient") for grad in grads]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda grad: cone.cone_backward(output, image, grad, "gradient"), grads))
    for mine, reference in zip(results, expected, strict=True):
        assert torch.equal(mine, reference)


def test_only_on_the_cpu() -> None:
    """Off the CPU (here the meta device, standing in for CUDA) the engine keeps its dense pass."""
    conv = nn.Conv2d(3, 4, 3, device="meta")
    image = torch.empty(1, 3, 8, 8, device="meta", requires_grad=True)
    output = conv(image)
    assert cone.backward_if_cheaper(output, image, torch.ones_like(output), "gradient", max_ratio=math.inf) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the cone is a CPU-only route")
def test_never_on_cuda() -> None:
    net = alexnet_shaped()
    with torch.no_grad():
        net(torch.zeros(1, 3, 127, 127))
    engine = make_engine(net, 127)
    engine = Engine(engine.model, device_name="cuda", cache_size=2)
    image = engine.prepare(load_sample("coffee"))
    engine.project_many(image, "conv2", [Seed(1), Seed(2)])
    assert engine.stats.cone_passes == 0


@pytest.mark.parametrize(
    ("net", "layer"), [("zoo", "lrn"), ("zoo", "head"), ("functional", "conv7"), ("padcat", "conv3")]
)
def test_a_programs_structure_plans_as_the_program_does(net: str, layer: str) -> None:
    """The planner plans a new pass's seeds on an earlier pass's program without its tensors:
    the same boxes, hand-offs and work as the pass's own program, seed by seed, rule by rule."""
    engine = _fixture(net)
    image = engine.prepare(load_sample("rocket"))
    record = engine._record(image, layer)
    output = record.outputs[layer]
    program = cone._program(output, record.image)
    structure = program.structure()
    assert len(structure.steps) == len(program.steps) > 0
    assert all(getattr(step, name) is None for step in structure.steps for name in step.per_record)
    for seed in _seeds(engine, image, layer):
        grads, _, _ = engine._seed_tensor(output, [seed])
        for rule in MODES:
            real = cone.plan(output, record.image, grads[0], rule)
            planned = cone._plan_on(structure, tuple(output.shape), cone._seed_box(grads[0]), rule)
            assert (planned.boxes, planned.below, planned.cone_work, planned.dense_work) == (
                real.boxes,
                real.below,
                real.cone_work,
                real.dense_work,
            )


def test_a_new_images_dense_click_reads_nothing_of_its_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a layer's first pass is planned, a seed that goes dense on another image builds no
    program of that image's pass; a seed that takes the cone builds it and runs on it."""
    engine = _fixture_engine(ConeZooNet, 64)
    first, second = (engine.prepare(load_sample(name)) for name in ("chelsea", "coffee"))
    monkeypatch.setattr(cone, "MAX_RATIO", -1.0)  # every seed dense
    engine.project(first, "lrn", 2, position=(4, 3))
    dense = engine.project(second, "lrn", 2, position=(4, 3))
    output = engine._record(second, "lrn").outputs["lrn"]
    assert output not in cone._PROGRAMS
    monkeypatch.setattr(cone, "MAX_RATIO", math.inf)
    before = engine.stats.cone_passes
    cropped = engine.project(second, "lrn", 2, position=(4, 3))
    assert engine.stats.cone_passes == before + 1 and output in cone._PROGRAMS
    peak = float(dense.projection.abs().max())
    assert peak > 0 and float((cropped.projection - dense.projection).abs().max()) <= 1e-5 * peak
