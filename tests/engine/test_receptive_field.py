"""Receptive fields read from the autograd graph, against hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.api.schemas import LayerResponse
from convscope.engine import Engine
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import make_engine, zf_shaped

# ZF net, paper geometry (conv1 7/2 pad 1, pools 3/2, conv2 5/2, conv3-5 3/1 pad 1):
# r' = r + (k-1)·j, j' = j·s, centre' = centre + ((k-1)/2 - p)·j
ZF_FIELDS = {
    "features.conv1": (7, 2, 2),
    "features.pool1": (11, 4, 4),
    "features.conv2": (27, 8, 12),
    "features.pool2": (43, 16, 20),
    "features.conv3": (75, 16, 20),
    "features.conv4": (107, 16, 20),
    "features.conv5": (139, 16, 20),
    "features.pool5": (171, 32, 36),
}


@pytest.fixture(scope="module")
def zf() -> Engine:
    return make_engine(zf_shaped(size=224), 224)


@pytest.mark.parametrize("layer", sorted(ZF_FIELDS))
def test_zf_fields_match_hand_computation(zf: Engine, layer: str) -> None:
    field = zf.layer(layer).receptive_field
    assert (field.size, field.stride, field.offset) == ZF_FIELDS[layer]
    assert not field.global_


def test_zf_crop_boxes(zf: Engine) -> None:
    field = zf.layer("features.conv2").receptive_field
    assert field.box(0, 0, 224) == (-1, -1, 26, 26)  # zero-padded at the border
    assert field.box(3, 5, 224) == (23, 39, 50, 66)  # centre (12 + 3·8, 12 + 5·8), side 27
    assert zf.layer("features.norm1").receptive_field == zf.layer("features.pool1").receptive_field


def test_residual_and_global_layers() -> None:
    engine = Engine(load_model("resnet50", pretrained=False, input_size=224), device_name="cpu")
    stem = engine.layer("maxpool").receptive_field
    assert (stem.size, stem.stride) == (11, 4)  # 7/2 conv then 3/2 pool
    block = engine.layer("layer1.0").receptive_field  # the widest branch of the residual sum
    assert (block.size, block.stride) == (19, 4)
    assert engine.layer("avgpool").receptive_field.global_
    layers = [info.name for info in engine.layers()]
    assert layers.index("layer1") < layers.index("layer1.0") < layers.index("layer1.0.conv1") < layers.index("layer2")
    assert engine.last_conv_layer() == "layer4.2.conv3"


class NonSquare(nn.Module):
    """3×7 and 7×1 kernels with different strides per axis, and an asymmetric F.pad, no
    non-linearity: every input pixel inside a unit's field reaches it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(70)
        self.conv1 = nn.Conv2d(3, 4, (3, 7), stride=(2, 1), padding=(1, 3))
        self.conv2 = nn.Conv2d(4, 4, (7, 1), stride=(1, 2), padding=(3, 0))
        self.conv3 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.conv3(F.pad(x, (1, 0, 2, 0)))  # left 1, right 0, top 2, bottom 0
        return self.fc(x.mean(dim=(2, 3)))


# By hand, per axis (size, stride, offset), r' = r + (k-1)·j, j' = j·s, c' = c + ((k-1)/2 - p)·j:
#   conv1 (3×7, stride 2×1, pad 1×3):  y (3, 2, (1-1)·1 = 0)    x (7, 1, (3-3)·1 = 0)
#   conv2 (7×1, stride 1×2, pad 3×0):  y (3+6·2 = 15, 2, 0)      x (7, 2, 0)
#   pad (top 2, left 1) shifts c by −p·j: y c = −2·2 = −4, x c = −1·2 = −2
#   conv3 (3×3, no pad):               y (15+2·2 = 19, 2, −4+1·2 = −2)   x (7+2·2 = 11, 2, −2+1·2 = 0)
NON_SQUARE = {
    "conv1": ((3, 2, 0), (7, 1, 0)),
    "conv2": ((15, 2, 0), (7, 2, 0)),
    "conv3": ((19, 2, -2), (11, 2, 0)),
}


@pytest.mark.parametrize("layer", sorted(NON_SQUARE))
def test_non_square_fields_match_hand_computation(layer: str) -> None:
    engine = make_engine(NonSquare(), 48, classes=3)
    field = engine.layer(layer).receptive_field
    assert (field.axis(0), field.axis(1)) == NON_SQUARE[layer]
    assert not field.square
    row = LayerResponse.from_info(engine.layer(layer)).model_dump(mode="json", exclude_none=True)["receptive_field"]
    (size, stride, offset), (size_x, stride_x, offset_x) = NON_SQUARE[layer]
    assert row["size"] == size and row["stride"] == stride and row["offset"] == offset
    assert row.get("size_x", size) == size_x and row.get("stride_x", stride) == stride_x
    assert row.get("offset_x", offset) == offset_x


def test_non_square_box_by_hand() -> None:
    engine = make_engine(NonSquare(), 48, classes=3)
    # unit (3, 5) of conv3: centre y −2 + 3·2 = 4, side 19 -> rows −5..14; centre x 0 + 5·2 = 10, side 11 -> 5..16
    assert engine.layer("conv3").receptive_field.box(3, 5, 48) == (-5, 5, 14, 16)


def _support(projection: torch.Tensor) -> tuple[int, int, int, int] | None:
    mass = projection.abs().sum(dim=0)
    rows = torch.nonzero(mass.sum(dim=1) > 0).flatten()
    cols = torch.nonzero(mass.sum(dim=0) > 0).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _clipped(box: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size), min(right, size)


@pytest.mark.parametrize("layer", sorted(NON_SQUARE))
def test_the_field_is_the_support_of_a_gradient_projection_on_a_linear_net(layer: str) -> None:
    engine = make_engine(NonSquare(), 48, classes=3)
    image = engine.prepare(load_sample("chelsea"))
    info = engine.layer(layer)
    for y, x in ((info.height // 2, info.width // 2), (0, 0), (info.height - 1, info.width - 1)):
        projection = engine.project(image, layer, 1, mode="gradient", position=(y, x)).projection
        assert _support(projection) == _clipped(info.receptive_field.box(y, x, 48), 48), (y, x)


BUILT_IN = [
    ("zfnet", 224),
    ("alexnet", 128),
    ("vgg16", 64),
    ("resnet50", 96),
    ("googlenet", 96),
    ("efficientnet_lite0", 96),
]


@pytest.mark.parametrize(("name", "size"), BUILT_IN)
def test_fields_contain_the_support_of_a_centre_unit_on_built_in_models(name: str, size: int) -> None:
    """Random weights; a centre unit's gradient-mode projection never reaches outside its field."""
    engine = Engine(load_model(name, pretrained=False, input_size=size), device_name="cpu")
    image = engine.prepare(load_sample("chelsea"))
    # convolutions (an activation's output can be saturated at a random init: no gradient to look at)
    local = [info for info in engine.layers() if not info.receptive_field.global_ and info.height > 1]
    local = [info for info in local if info.kind == "Conv2d"]
    for info in (local[len(local) // 3], local[(2 * len(local)) // 3], local[-1]):
        y, x = info.height // 2, info.width // 2
        maps = engine.activations(image, info.name)
        support = None
        for channel in torch.argsort(maps[:, y, x].abs(), descending=True)[:8].tolist():  # a saturated unit has none
            projection = engine.project(image, info.name, channel, mode="gradient", position=(y, x)).projection
            if (support := _support(projection)) is not None:
                break
        assert support is not None, info.name
        top, left, bottom, right = _clipped(info.receptive_field.box(y, x, size), size)
        s_top, s_left, s_bottom, s_right = support
        assert top <= s_top and left <= s_left and s_bottom <= bottom and s_right <= right, (info.name, support)
