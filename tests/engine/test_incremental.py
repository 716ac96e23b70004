"""Incremental occlusion (`method="incremental"`) against plain dense forward passes of the occluded copies.

Exact: for every built-in architecture (random weights, small inputs where the
architecture allows) and the fixture nets, at every occluder position, with the
square at the borders and with a stride that leaves a remainder: probability
within 1e-5 absolute, feature activity within 1e-5 of the map's largest |value|,
top label equal wherever the dense top-2 margin exceeds 1e-5. Also the planner's
geometry, the fallback for a model torch.fx cannot trace, and the approximate
modes (labelled, within stated tolerances of exact on the real default model and
a real photo).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.engine import Engine
from convscope.engine.incremental import Window, _axis_out, plan_incremental
from convscope.engine.occlusion import OcclusionResult, occlude, occlusion_grid
from convscope.engine.tracing import TraceFailed, trace_model
from convscope.images import PreparedImage
from convscope.models import load_model
from convscope.samples import load_sample
from convscope.tasks import CallbackTask
from fixtures.nets import (
    FunctionalReLUNet,
    ReusedReLUNet,
    alexnet_shaped,
    make_engine,
    relu6_sequential,
    zf_shaped,
)


def dense_oracle(engine: Engine, image: PreparedImage, result: OcclusionResult) -> dict[str, np.ndarray]:
    """Every occluded copy through `engine.forward_batch` (one plain pass each): the maps and the top-2 margin."""
    copies = image.tensor.expand(len(result.positions), -1, -1, -1).clone()
    for k, (y, x) in enumerate(result.positions):
        copies[k, :, y : y + result.size, x : x + result.size] = 0.0
    probs, activity = [], []
    for start in range(0, len(copies), 16):
        logits, outputs = engine.forward_batch(copies[start : start + 16], [result.layer])
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        activity.append(outputs[result.layer][:, result.channel].double().sum(dim=(1, 2)).cpu())
    p = torch.cat(probs)
    top2 = p.topk(2, dim=1).values
    shape = (result.rows, result.cols)
    return {
        "probability": p[:, result.target].double().reshape(shape).numpy(),
        "top_label": p.argmax(dim=1).reshape(shape).numpy(),
        "margin": (top2[:, 0] - top2[:, 1]).reshape(shape).numpy(),
        "activity": torch.cat(activity).reshape(shape).numpy(),
    }


def assert_exact(engine: Engine, image: PreparedImage, result: OcclusionResult) -> None:
    assert result.method == "incremental" and result.note is None and not result.approximate
    want = dense_oracle(engine, image, result)
    np.testing.assert_allclose(result.probability, want["probability"], rtol=0, atol=1e-5)
    scale = max(float(np.abs(want["activity"]).max()), 1e-12)
    np.testing.assert_allclose(result.activity, want["activity"], rtol=0, atol=1e-5 * scale)
    clear = want["margin"] > 1e-5
    np.testing.assert_array_equal(result.top_label[clear], want["top_label"][clear])


def covers_borders(image_size: int, size: int, stride: int) -> str:
    _, _, positions = occlusion_grid(image_size, size, stride)
    last = positions[-1][0]
    return "touches the far border" if last + size == image_size else f"leaves {image_size - last - size} px"


# ---- every built-in architecture, random weights ------------------------------------------------------

BUILTIN = [  # name, input side, occluder size, stride
    ("efficientnet_lite0", 64, 24, 20),  # 0, 20, 40: the last square touches the far border
    ("alexnet", 64, 20, 18),  # 0, 18, 36: 8 px left over
    ("vgg16", 32, 12, 10),  # 0, 10, 20: touches
    ("resnet50", 64, 20, 18),  # leaves 8 px
    ("googlenet", 64, 24, 20),  # touches; ceil-mode pools, concatenations, transform_input
    ("zfnet", 224, 96, 60),  # 0, 60: leaves 68 px; LRN, ceil-mode pools, a shape check in forward
    ("zfnet-small", 64, 20, 22),  # touches
]


@pytest.mark.parametrize(("name", "side", "size", "stride"), BUILTIN, ids=[row[0] for row in BUILTIN])
def test_builtin_models_incremental_equals_dense(name: str, side: int, size: int, stride: int) -> None:
    torch.manual_seed(0)
    engine = Engine(load_model(name, pretrained=False, input_size=side), device_name="cpu")
    image = engine.prepare(load_sample("coffee"))
    result = occlude(engine, image, size=size, stride=stride, batch_size=4, method="incremental")
    assert result.rows * result.cols == len(result.positions) >= 4, covers_borders(side, size, stride)
    assert result.planned_ratio is not None and 0 < result.planned_ratio < 1
    assert_exact(engine, image, result)


# ---- the fixture nets ------------------------------------------------------------------------------------


def tiny_residual(classes: int = 10) -> nn.Module:
    """Additions of branches with different projective fields, a channel concatenation and a dilated conv."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.a = nn.Conv2d(8, 8, 5, padding=2)
            self.b = nn.Conv2d(8, 8, 1)
            self.dilated = nn.Conv2d(16, 8, 3, padding=2, dilation=2)
            self.pool = nn.AvgPool2d(3, 2, padding=1)
            self.head = nn.Conv2d(8, 12, 3, padding="same")
            self.fc = nn.Linear(12, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            y = self.a(x) + x  # the union of a 5×5 conv's window and the identity's
            z = torch.cat([y, torch.sigmoid(self.b(x)) * 2.0], dim=1)
            z = self.pool(torch.relu(self.dilated(z)))
            return self.fc(self.head(z).mean(dim=(2, 3)))

    return Net().eval()


def shape_reader(classes: int = 10) -> nn.Module:
    """Reads `x.shape`, `x.device`, `x.size(0)` of feature maps that are patches while it runs."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(8)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            y = y + torch.ones(1, y.shape[1], 1, 1, device=y.device, dtype=y.dtype)
            return self.fc(y.mean(dim=(2, 3)).view(y.size(0), -1))

    return Net().eval()


def lazy_alexnet_shaped(side: int = 96) -> nn.Module:
    net = alexnet_shaped()
    net(torch.zeros(1, 3, side, side))  # materialise the lazy classifier
    return net


FIXTURES = {
    "alexnet_shaped": (lazy_alexnet_shaped, 96, 24, 20),  # 11/4 conv, overlapping pools
    "zf_shaped": (lambda: zf_shaped(size=112), 112, 32, 26),
    "relu6_sequential": (lambda: relu6_sequential(), 64, 16, 14),  # BatchNorm, ReLU6
    "functional_relu": (lambda: FunctionalReLUNet(), 64, 16, 16),  # functional and in-place activations
    "reused_relu": (lambda: ReusedReLUNet(), 32, 8, 5),  # one in-place ReLU module called three times
    "tiny_residual": (tiny_residual, 48, 12, 9),
    "shape_reader": (shape_reader, 32, 8, 6),
}


@pytest.mark.parametrize("name", list(FIXTURES))
@pytest.mark.parametrize("where", ["grid", "whole"])
def test_fixture_nets_incremental_equals_dense(name: str, where: str) -> None:
    build, side, size, stride = FIXTURES[name]
    engine = make_engine(build(), side)
    image = engine.prepare(load_sample("chelsea"))
    if where == "whole":  # one square over the whole input: every window covers its map
        size, stride = side, 1
    result = occlude(engine, image, size=size, stride=stride, batch_size=5, method="incremental")
    assert_exact(engine, image, result)


def test_every_layer_as_the_feature_map() -> None:
    """The activity map is exact for any layer, including ones that stay patches all the way."""
    engine = make_engine(tiny_residual(), 48)
    image = engine.prepare(load_sample("chelsea"))
    for info in engine.layers():
        result = occlude(engine, image, size=10, stride=11, layer=info.name, method="incremental")
        assert result.layer == info.name
        assert_exact(engine, image, result)


def test_a_layer_inside_a_fused_batch_norm_module() -> None:
    """timm's BatchNormAct2d is traced whole, except when the feature map is its activation."""
    torch.manual_seed(0)
    engine = Engine(load_model("efficientnet_lite0", pretrained=False, input_size=64), device_name="cpu")
    image = engine.prepare(load_sample("coffee"))
    result = occlude(engine, image, size=24, stride=20, layer="blocks.2.1.bn2.act", method="incremental")
    assert result.layer == "blocks.2.1.bn2.act"
    assert_exact(engine, image, result)


# ---- the plan -----------------------------------------------------------------------------------------


def test_projective_field_of_a_convolution() -> None:
    """Rows [⌈(t + p − k + 1)/s⌉, ⌊(b − 1 + p)/s⌋], one length for every position, shifted inside at the borders."""
    lo = np.array([0, 5, 10, 27])  # an 8-row box at each, on a 35-row map; 3×3 conv, stride 2, padding 1 -> 18 rows
    out, length = _axis_out(lo, 8, 3, 2, 1, 18, None)
    assert length == (8 + 3 - 2) // 2 + 1 == 5
    for t, start in zip(lo, out, strict=True):
        b = t + 8
        first, last = max(0, -(-(t + 1 - 3 + 1) // 2)), min(17, (b - 1 + 1) // 2)
        assert start <= first and last < start + length <= 18  # the changed rows lie inside the window
    assert out[-1] == 18 - 5  # shifted back inside at the far border
    capped, capped_length = _axis_out(lo, 8, 3, 2, 1, 18, 0.1)
    assert capped_length == 2 and all(0 <= c <= 16 for c in capped)
    assert Window(out, out, length, length, 18, 18).whole is False


def test_functional_pools_are_window_operations() -> None:
    """`F.max_pool2d(x, 3, 2, padding=1)` is recomputed on patches like `nn.MaxPool2d`, not densely."""
    engine = make_engine(FunctionalReLUNet(), 64)
    image = engine.prepare(load_sample("chelsea"))
    module = engine.model.module
    traced = trace_model(module, image.tensor)
    _, _, positions = occlusion_grid(64, 8, 6)
    plan = plan_incremental(traced, module, image.tensor, positions, 8, "conv7")
    pools = [node for node in plan.nodes if node.op == "call_function" and node.target is F.max_pool2d]
    assert len(pools) == 1
    assert (plan.plans[pools[0]].kind, plan.plans[pools[0]].how) == ("patch", "window")
    assert plan.plans[pools[0]].pads[0] == 1  # its padding of 1, as −∞, only where the context crosses the border


def test_planned_ratio_and_auto() -> None:
    engine = make_engine(tiny_residual(), 48)
    image = engine.prepare(load_sample("chelsea"))
    small = occlude(engine, image, size=4, stride=8, method="auto")  # small squares: most of every map is reused
    assert small.method == "incremental" and small.planned_ratio is not None and small.planned_ratio < 0.3
    large = occlude(engine, image, size=40, stride=4, method="auto")  # large squares: nearly everything changes
    assert large.planned_ratio is not None and large.planned_ratio > 2 / 3
    assert large.method == "dense" and large.note is None
    medium = occlude(engine, image, size=20, stride=8, method="incremental")
    assert small.planned_ratio < medium.planned_ratio < large.planned_ratio  # grows with the square
    dense = occlude(engine, image, size=4, stride=8, method="dense")
    assert dense.method == "dense" and dense.planned_ratio is None


# ---- a model torch.fx cannot trace -------------------------------------------------------------------


class ValueBranchNet(nn.Module):
    """Takes a different path depending on the image's values: not traceable exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.features = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 8, 3, padding=1)), ("relu", nn.ReLU())]))
        self.other = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.mean() > 0.5:
            x = self.other(x)
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["incremental", "auto"])
def test_untraceable_model_falls_back_to_dense_with_a_note(method: str) -> None:
    engine = make_engine(ValueBranchNet().eval(), 32)
    image = engine.prepare(load_sample("chelsea"))
    with pytest.raises(TraceFailed, match="data-dependent"):
        trace_model(engine.model.module, image.tensor)
    result = occlude(engine, image, size=8, stride=8, method=method)
    assert result.method == "dense" and result.method_requested == method
    assert result.note is not None and "not available" in result.note and "data-dependent" in result.note
    assert result.planned_ratio is None
    dense = occlude(engine, image, size=8, stride=8, method="dense")
    np.testing.assert_array_equal(result.probability, dense.probability)


class AliasingNet(nn.Module):
    """Rewrites a feature map in place through a view: the traced graph, run op by op, cannot see that."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.view(y.shape[0], -1).relu_()  # y itself is now rectified
        return self.fc(y.mean(dim=(2, 3)))


def test_a_graph_that_does_not_reproduce_the_model_falls_back() -> None:
    engine = make_engine(AliasingNet().eval(), 32)
    image = engine.prepare(load_sample("chelsea"))
    result = occlude(engine, image, size=8, stride=8, method="incremental")
    assert result.method == "dense"
    assert result.note is not None and "does not reproduce the model's own output" in result.note
    dense = occlude(engine, image, size=8, stride=8, method="dense")
    np.testing.assert_array_equal(result.probability, dense.probability)


# ---- approximate modes on the real default model and a real photo ----------------------------------------


@pytest.fixture(scope="module")
def real() -> tuple[Engine, PreparedImage]:
    engine = Engine(load_model("efficientnet_lite0"), device_name="cpu")
    return engine, engine.prepare(load_sample("chelsea"))


@pytest.fixture(scope="module")
def real_exact(real: tuple[Engine, PreparedImage]) -> OcclusionResult:
    engine, image = real
    return occlude(engine, image, size=48, stride=32, method="incremental")  # 6×6 positions


# The stated tolerances (EfficientNet-Lite0, ImageNet weights, chelsea, 48/32 -> 6×6 positions; measured when
# written: tau 0.9 max |ΔP| 0.036, tau 0.5 mean |ΔP| 0.047 with max 0.22 — a coarse cap is a coarse map).
TOLERANCE = {0.9: ("max", 0.05), 0.5: ("mean", 0.06)}


@pytest.mark.parametrize("tau", sorted(TOLERANCE))
def test_projective_field_cap_is_labelled_and_close(
    real: tuple[Engine, PreparedImage], real_exact: OcclusionResult, tau: float
) -> None:
    engine, image = real
    approx = occlude(engine, image, size=48, stride=32, approx=tau)
    assert approx.approximate and approx.approx == tau and approx.method == "incremental"
    assert approx.planned_ratio is not None and real_exact.planned_ratio is not None
    assert approx.planned_ratio < real_exact.planned_ratio  # the cap saves arithmetic
    assert not real_exact.approximate
    assert approx.target == real_exact.target
    how, bound = TOLERANCE[tau]
    error = np.abs(approx.probability - real_exact.probability)
    assert (error.max() if how == "max" else error.mean()) <= bound
    if tau == 0.9:  # where the exact map puts the worst square, the approximate one does too
        assert int(np.argmin(approx.probability)) == int(np.argmin(real_exact.probability))


def test_adaptive_drill_down_is_labelled_and_exact_where_computed(
    real: tuple[Engine, PreparedImage], real_exact: OcclusionResult
) -> None:
    engine, image = real
    reports: list[tuple[int, int]] = []
    task = CallbackTask(progress=lambda done, total: reports.append((done, total)))
    result = occlude(engine, image, size=48, stride=32, adaptive=0.25, batch_size=4, task=task)
    assert result.approximate and result.adaptive == 0.25 and result.approx is None
    dones = [done for done, _ in reports]
    assert dones == sorted(dones) and reports[-1] == (18, 18)  # progress over both passes, ending exact
    assert all(done <= total for done, total in reports)
    rows, cols = result.rows, result.cols
    coarse = np.zeros((rows, cols), dtype=bool)
    coarse[::2, ::2] = True
    assert result.positions_computed == 9 + 3 * 3  # 3×3 coarse cells, then the other 3 positions of 3 of them
    # coarse positions are computed exactly
    np.testing.assert_allclose(result.probability[coarse], real_exact.probability[coarse], atol=1e-5)
    # the cell with the largest drop was refined exactly; the worst square is found
    assert int(np.argmin(result.probability)) == int(np.argmin(real_exact.probability))
    worst = np.unravel_index(int(np.argmin(real_exact.probability)), (rows, cols))
    r, c = (worst[0] // 2) * 2, (worst[1] // 2) * 2
    np.testing.assert_allclose(
        result.probability[r : r + 2, c : c + 2], real_exact.probability[r : r + 2, c : c + 2], atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_incremental_on_cuda_equals_dense_on_cuda() -> None:
    torch.manual_seed(0)
    engine = Engine(load_model("resnet50", pretrained=False, input_size=96), device_name="cuda")
    image = engine.prepare(load_sample("coffee"))
    result = occlude(engine, image, size=24, stride=14, batch_size=8, method="incremental")
    assert_exact(engine, image, result)
