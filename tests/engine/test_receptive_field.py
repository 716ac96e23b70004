"""Receptive fields read from the autograd graph, against hand computation."""

from __future__ import annotations

import pytest

from convscope.engine import Engine
from convscope.models import load_model
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
