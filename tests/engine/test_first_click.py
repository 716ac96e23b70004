"""A cheap first click: the recorded pass copies only the outputs an in-place op would
rewrite, and predictions/activations come from a no-grad pass that records no graph."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from convscope.engine import Tap
from convscope.samples import load_sample
from fixtures.nets import make_engine

SIZE = 32


def in_place_net() -> nn.Sequential:
    torch.manual_seed(40)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 4, 3, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),  # rewrites conv1's output
                ("conv2", nn.Conv2d(4, 4, 3, padding=1)),
                ("relu2", nn.ReLU()),  # leaves conv2's output alone
                ("conv3", nn.Conv2d(4, 4, 3, padding=1)),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(4, 3)),
            ]
        )
    )


class SometimesInPlace(nn.Module):
    """Rewrites conv1's output in place only for images whose mean is positive (data-dependent)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(41)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = y.relu_() if float(x.detach().mean()) > 0 else y.relu()
        return self.fc(self.conv2(y).mean(dim=(2, 3)))


def test_only_outputs_rewritten_in_place_are_copied() -> None:
    engine = make_engine(in_place_net(), SIZE, classes=3)
    assert engine._copied_layers == {"conv1"}


def test_recorded_outputs_are_the_layers_true_outputs() -> None:
    module = in_place_net()
    engine = make_engine(module, SIZE, classes=3)
    image = engine.prepare(load_sample("chelsea"))
    with torch.no_grad():
        conv1 = module.conv1(image.tensor)
        conv2 = module.conv2(torch.relu(conv1))
    engine.project(image, "conv3", 0)  # records the image
    torch.testing.assert_close(engine.activations(image, "conv1"), conv1[0])
    torch.testing.assert_close(engine.activations(image, "conv2"), conv2[0])


def test_a_pass_that_finds_an_output_rewritten_learns_it_and_is_redone() -> None:
    module = SometimesInPlace().eval()
    engine = make_engine(module, SIZE, classes=3)  # inspected on a zero image: no in-place op
    assert engine._copied_layers == set()
    bright = torch.full((1, 3, SIZE, SIZE), 0.5)
    from convscope.images import PreparedImage

    image = PreparedImage("bright", load_sample("chelsea").resize((SIZE, SIZE)), bright)
    before = engine.stats.forward_passes
    engine.project(image, "conv2", 0)
    assert engine._copied_layers == {"conv1"}
    assert engine.stats.forward_passes == before + 2
    with torch.no_grad():
        expected = module.conv1(bright)[0]
    torch.testing.assert_close(engine.activations(image, "conv1"), expected)
    for mode in ("deconvnet", "guided", "gradient"):
        projection = engine.project(image, "conv2", 1, mode=mode).projection  # type: ignore[arg-type]
        assert torch.isfinite(projection).all()


def test_predictions_and_activations_record_no_graph() -> None:
    engine = make_engine(in_place_net(), SIZE, classes=3)
    image = engine.prepare(load_sample("chelsea"))
    before = engine.stats.forward_passes
    predictions = engine.predict(image, top=3)
    maps = engine.activations(image, "conv2")
    assert engine.stats.forward_passes == before  # no recorded pass
    assert not maps.requires_grad and len(predictions) == 3
    _, tapped = engine.infer(image.tensor, [Tap("conv2")])
    torch.testing.assert_close(maps, tapped[Tap("conv2")][0])
    # after a click, the same answers come from the recorded pass
    engine.project(image, "conv2", 0)
    assert engine.stats.forward_passes == before + 1
    assert [p.index for p in engine.predict(image, top=3)] == [p.index for p in predictions]
    torch.testing.assert_close(engine.activations(image, "conv2"), maps)


def test_a_layers_maps_and_sprite_share_one_no_grad_pass() -> None:
    engine = make_engine(in_place_net(), SIZE, classes=3)
    image = engine.prepare(load_sample("coffee"))
    before = engine.stats.inference_passes
    first = engine.activations(image, "conv1")
    again = engine.activations(image, "conv1")
    assert engine.stats.inference_passes == before + 1
    assert torch.equal(first, again)
    engine.activations(image, "conv2")
    assert engine.stats.inference_passes == before + 2
