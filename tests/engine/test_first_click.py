"""A cheap first click: the recorded pass stops at the clicked layer and copies nothing
(the whole pass copies only the outputs an in-place op would rewrite), in-place rectifiers
stay in place and keep no mask, and predictions/activations come from a no-grad pass that
records no graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.engine import Tap
from convscope.samples import load_sample
from fixtures.nets import FunctionalReLUNet, in_place_net, make_engine

SIZE = 32


class TwoConvs(nn.Module):
    """conv1 (3→4), conv2 (4→4) and a 3-class head, seeded; subclasses say how they connect."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)


class SometimesInPlace(TwoConvs):
    """Rewrites conv1's output in place only for images whose mean is positive (data-dependent)."""

    def __init__(self) -> None:
        super().__init__(41)

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
    engine.project(image, "conv1", 0)  # records conv1 alone
    engine.project(image, "conv3", 0)  # then the whole pass, conv1 through a copy
    assert "conv1" in engine._record(image).outputs
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
    engine.project(image, "conv2", 0)  # a click's pass holds conv2 alone: nothing to rewrite
    assert engine._copied_layers == set() and engine.stats.forward_passes == before + 1
    engine.project(image, "conv1", 0)  # the whole pass finds conv1 rewritten: learns it, is redone
    assert engine._copied_layers == {"conv1"}
    assert engine.stats.forward_passes == before + 3
    with torch.no_grad():
        expected = module.conv1(bright)[0]
    assert "conv1" in engine._record(image).outputs
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


def test_a_clicks_record_stops_at_its_layer() -> None:
    module = in_place_net()
    engine = make_engine(module, SIZE, classes=3)
    image = engine.prepare(load_sample("chelsea"))
    calls: list[str] = []
    handle = module.conv3.register_forward_hook(lambda *_: calls.append("conv3"))
    try:
        before = engine.stats.forward_passes
        first = engine.project(image, "conv2", 1)
        assert calls == [] and engine.stats.forward_passes == before + 1  # nothing above conv2 ran
        record = engine._record(image, "conv2")
        assert record.logits is None and "conv3" not in record.outputs
        assert record.outputs.keys() == {"conv2"}  # the clicked layer alone: nothing copied
        # other layers: the whole pass, once, then everything comes from it
        engine.project(image, "conv3", 0)
        engine.project(image, "conv1", 0)
        engine.predict(image)
        assert engine.stats.forward_passes == before + 2 and calls == ["conv3"]
        whole = engine._record(image)
        assert whole.logits is not None and {"conv1", "conv2", "conv3"} <= whole.outputs.keys()
        for mode in ("deconvnet", "guided", "gradient"):
            again = engine.project(image, "conv2", 1, mode=mode)  # type: ignore[arg-type]
            engine.clear_cache()
            alone = engine.project(image, "conv2", 1, mode=mode)  # type: ignore[arg-type]
            assert torch.equal(again.projection, alone.projection), mode
            engine.project(image, "conv3", 0)  # the whole pass again
        assert torch.equal(first.projection, engine.project(image, "conv2", 1).projection)
    finally:
        handle.remove()


def test_in_place_rectifiers_stay_in_place_and_keep_only_their_output() -> None:
    """`y.relu_()` with its value ignored still rewrites `y` (the logits are the model's), and
    every rectifier saved its output, not a mask: the very tensor the next layer saved."""
    module = FunctionalReLUNet(classes=3)
    engine = make_engine(module, SIZE, classes=3)
    image = engine.prepare(load_sample("coffee"))
    record = engine._record(image)
    assert record.logits is not None
    with torch.no_grad():
        expected = module(image.tensor)
    torch.testing.assert_close(record.logits, expected)
    seen, stack, rectifiers = set(), [record.outputs["conv7"].grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if getattr(node, "convscope_op", None) == "relu":
            rectifiers.append(node)
        stack.extend(child for child, _ in node.next_functions)
    assert len(rectifiers) == 6
    for node in rectifiers:
        (saved,) = node.saved_tensors
        assert saved.dtype == torch.float32 and float(saved.detach().min()) >= 0
    conv7 = record.outputs["conv7"].grad_fn
    relu6 = next(child for child, _ in conv7.next_functions if child is not None)
    assert getattr(relu6, "convscope_op", None) == "relu"  # y.relu_() straight below conv7
    storage = relu6.saved_tensors[0].untyped_storage().data_ptr()
    assert conv7._saved_input.untyped_storage().data_ptr() == storage


class HalvesInPlace(TwoConvs):
    """In-place ReLUs on two views of one map (its channel halves), then a convolution."""

    def __init__(self) -> None:
        super().__init__(42)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        F.relu(y[:, :2], inplace=True)
        y[:, 2:].relu_()  # bumps the version the first half's view shares
        return self.fc(self.conv2(y).mean(dim=(2, 3)))


def test_in_place_rectifiers_on_views_still_go_back() -> None:
    module = HalvesInPlace().eval()
    engine = make_engine(module, SIZE, classes=3)
    image = engine.prepare(load_sample("rocket"))
    x = image.tensor.clone().requires_grad_(True)
    conv2 = module.conv2(torch.relu(module.conv1(x)))  # the same function, out of place
    value = conv2[0, 1].amax()
    (expected,) = torch.autograd.grad(value, x)
    seed = float(value.detach())
    result = engine.project(image, "conv2", 1, mode="gradient")
    assert result.seed_value == pytest.approx(seed, rel=1e-6)
    torch.testing.assert_close(result.projection, seed * expected[0], rtol=1e-5, atol=1e-7)
