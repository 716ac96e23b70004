"""What the docs claim about the deconvnet on switchless nets, checked.

Without max-pool switches a ReLU net's deconvnet reads nothing from the forward pass
(rectify ignores the forward input; convolutions and batch norm are fixed linear maps),
so the projection of a fixed unit is the same picture for every image up to the seed
value. With max-pools the switches carry the image into the reconstruction."""

from __future__ import annotations

import functools

import torch

from convscope.engine import Engine
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import make_engine, zf_shaped


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@functools.cache
def _default_engine() -> Engine:
    return Engine(load_model("efficientnet_lite0"), device_name="cpu", cache_size=2)


def _two_projections(engine: Engine, layer: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    info = engine.layer(layer)
    position = (info.height // 2, info.width // 2)
    cat, cup = (engine.prepare(load_sample(name)) for name in ("chelsea", "coffee"))
    # the same unit in both images; a channel active at that position in both
    maps_cat, maps_cup = engine.activations(cat, layer), engine.activations(cup, layer)
    both = torch.minimum(maps_cat[:, position[0], position[1]], maps_cup[:, position[0], position[1]])
    channel = int(both.argmax())
    first = engine.project(cat, layer, channel, mode=mode, position=position).projection  # type: ignore[arg-type]
    second = engine.project(cup, layer, channel, mode=mode, position=position).projection  # type: ignore[arg-type]
    assert first.abs().max() > 0 and second.abs().max() > 0
    return first, second


def test_default_model_deconvnet_does_not_depend_on_the_image() -> None:
    engine = _default_engine()
    for layer in ("blocks.2", "blocks.5"):
        first, second = _two_projections(engine, layer, "deconvnet")
        assert _cosine(first, second) > 0.99999, layer


def test_default_model_guided_does_depend_on_the_image() -> None:
    first, second = _two_projections(_default_engine(), "blocks.2", "guided")
    assert _cosine(first, second) < 0.99


def test_deconvnet_depends_on_the_image_where_max_pools_give_switches() -> None:
    torch.manual_seed(0)
    engine = make_engine(zf_shaped(size=112), 112)
    first, second = _two_projections(engine, "features.conv5", "deconvnet")
    assert _cosine(first, second) < 0.99
