"""Occlusion sensitivity (paper Fig. 7, docs/architecture.md "Occlusion"): geometry, exactness, bounds, errors, a real photo."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.engine import Engine
from convscope.engine.occlusion import (
    OcclusionCancelled,
    OcclusionResult,
    occlude,
    occlusion_grid,
    occlusion_response,
)
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.images import PreparedImage
from convscope.models.spec import LoadedModel
from convscope.samples import load_sample
from convscope.tasks import Cancelled


@contextmanager
def batches_seen(engine: Engine) -> Iterator[list[torch.Tensor]]:
    """Every batch the engine's `infer` is given inside the block (copied: the engine reuses its buffer)."""
    seen: list[torch.Tensor] = []
    original = engine.infer

    def recording(batch: torch.Tensor, taps=()):  # type: ignore[no-untyped-def]
        seen.append(batch.detach().clone())
        return original(batch, taps)

    engine.infer = recording  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del engine.infer


TINY_SIZE = 32
TINY_CLASSES = 10


def tiny_vgg(inplace_last: bool = False, seed: int = 0) -> nn.Module:
    """A small VGG-like net: three conv/ReLU stages, max-pooling, a linear classifier."""
    torch.manual_seed(seed)
    features = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(8, 16, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(16, 16, 3, padding=1)),
                ("relu3", nn.ReLU(inplace=inplace_last)),
            ]
        )
    )
    model = nn.Sequential(
        OrderedDict(
            [
                ("features", features),
                ("pool", nn.AdaptiveAvgPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(64, TINY_CLASSES)),
            ]
        )
    )
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)
    with torch.no_grad():  # spread the logits: a random net is otherwise near uniform
        fc.weight.mul_(8.0)
    return model.eval()


def tiny_engine(inplace_last: bool = False) -> Engine:
    loaded = LoadedModel(
        name="tiny_vgg",
        module=tiny_vgg(inplace_last),
        labels=[f"class {i}" for i in range(TINY_CLASSES)],
        input_size=TINY_SIZE,
    )
    return Engine(loaded, device_name="cpu")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return tiny_engine()


@pytest.fixture(scope="module")
def image(engine: Engine) -> PreparedImage:
    return engine.prepare(load_sample("chelsea"))


# ---- an independent oracle: one plain forward pass per position ------------------------------


def _single_pass(module: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and the layer's per-channel spatial sums, from the module alone."""
    seen: list[torch.Tensor] = []
    hook = module.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = module(x)
    finally:
        hook.remove()
    return torch.softmax(logits.float(), dim=1)[0], seen[0][0].double().sum(dim=(1, 2))


def _oracle(engine: Engine, image: PreparedImage, size: int, stride: int, layer: str, target: int | None):
    module = engine.model.module
    probs0, sums0 = _single_pass(module, layer, image.tensor)
    channel = int(torch.argmax(sums0))
    target = int(torch.argmax(probs0)) if target is None else target
    image_size = image.tensor.shape[-1]
    starts = [p for p in range(image_size) if p % stride == 0 and p + size <= image_size]
    probability = np.zeros((len(starts), len(starts)))
    top_label = np.zeros((len(starts), len(starts)), dtype=np.int64)
    activity = np.zeros((len(starts), len(starts)))
    for r, y in enumerate(starts):
        for c, x in enumerate(starts):
            occluded = image.tensor.clone()
            occluded[0, :, y : y + size, x : x + size] = 0.0
            probs, sums = _single_pass(module, layer, occluded)
            probability[r, c] = float(probs[target])
            top_label[r, c] = int(torch.argmax(probs))
            activity[r, c] = float(sums[channel])
    return target, channel, float(probs0[target]), float(sums0[channel]), probability, top_label, activity


def _assert_matches_oracle(engine: Engine, image: PreparedImage, result: OcclusionResult, target: int | None) -> None:
    target_, channel, p0, a0, probability, top_label, activity = _oracle(
        engine, image, result.size, result.stride, result.layer, target
    )
    assert result.target == target_
    assert result.channel == channel
    assert result.probability.shape == probability.shape == (result.rows, result.cols)
    np.testing.assert_allclose(result.probability, probability, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.top_label, top_label)
    scale = max(1.0, float(np.abs(activity).max()))
    np.testing.assert_allclose(result.activity, activity, rtol=1e-4, atol=1e-4 * scale)
    assert result.unoccluded_probability == pytest.approx(p0, abs=1e-5)
    assert result.unoccluded_activity == pytest.approx(a0, rel=1e-4, abs=1e-4)


# ---- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_size", "size", "stride", "expected"),
    [
        (224, 32, 16, 13),  # (224 - 32) / 16 + 1
        (224, 16, 8, 27),
        (224, 50, 30, 6),  # 174 / 30 = 5.8: the last square starts at 150, 24 px stay unoccluded
        (224, 224, 1, 1),
        (224, 100, 500, 1),  # a stride longer than the image: only the corner
        (32, 1, 1, 32),
        (32, 8, 3, 9),  # 24 / 3 = 8 -> 9, the last square ends exactly at the edge
        (33, 8, 3, 9),  # one more pixel does not give room for another step
    ],
)
def test_grid_follows_design(image_size: int, size: int, stride: int, expected: int) -> None:
    rows, cols, positions = occlusion_grid(image_size, size, stride)
    assert (rows, cols) == (expected, expected)
    starts = [p for p in range(image_size) if p % stride == 0 and p + size <= image_size]
    assert positions == [(y, x) for y in starts for x in starts]  # row-major (y, x)
    last = positions[-1][0]
    assert last + size <= image_size < last + stride + size  # fits; the next one would not


def test_each_copy_is_occluded_exactly_in_its_square(engine: Engine, image: PreparedImage) -> None:
    size, stride = 10, 7  # 22 / 7 is not whole: columns 0, 7, 14, 21
    with batches_seen(engine) as seen:
        result = occlude(engine, image, size=size, stride=stride, batch_size=5, method="dense")
    copies = torch.cat(seen[1:])  # the first pass is the unoccluded reference
    assert torch.equal(seen[0], image.tensor)
    assert (result.rows, result.cols) == (4, 4) and len(copies) == 16
    base = image.tensor[0]
    for copy, (y, x) in zip(copies, result.positions, strict=True):
        mask = torch.zeros(TINY_SIZE, TINY_SIZE, dtype=torch.bool)
        mask[y : y + size, x : x + size] = True
        assert torch.all(copy[:, mask] == 0)  # the model's mean colour
        assert torch.equal(copy[:, ~mask], base[:, ~mask])


# ---- exactness against single forward passes ----------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "incremental"])
@pytest.mark.parametrize(("size", "stride", "batch_size"), [(8, 4, 7), (5, 3, 64), (12, 12, 1)])
def test_batched_maps_equal_single_passes(
    engine: Engine, image: PreparedImage, size: int, stride: int, batch_size: int, method: str
) -> None:
    result = occlude(engine, image, size=size, stride=stride, batch_size=batch_size, method=method)
    assert result.method == method
    assert result.layer == "features.conv3" == engine.last_conv_layer()
    _assert_matches_oracle(engine, image, result, target=None)


def test_explicit_target_and_layer(engine: Engine, image: PreparedImage) -> None:
    baseline = engine.probabilities(image)
    target = int(torch.argsort(baseline)[2])  # neither the top-1 nor the default
    result = occlude(engine, image, size=8, stride=8, target=target, layer="features.conv2")
    assert result.target == target and result.target_label == f"class {target}"
    assert result.layer == "features.conv2"
    _assert_matches_oracle(engine, image, result, target=target)


@pytest.mark.parametrize("method", ["dense", "incremental"])
def test_real_architecture_random_weights(method: str) -> None:
    """BatchNorm, ReLU6, depthwise convolutions and residual blocks (EfficientNet-Lite0, random weights)."""
    from convscope.models import load_model

    torch.manual_seed(0)
    engine = Engine(load_model("efficientnet_lite0", pretrained=False, input_size=64), device_name="cpu")
    image = engine.prepare(load_sample("coffee"))
    result = occlude(engine, image, size=24, stride=20, batch_size=3, method=method)  # 3×3 positions, batches 3
    assert result.method == method
    _assert_matches_oracle(engine, image, result, target=None)


@pytest.mark.parametrize("method", ["dense", "incremental"])
def test_activity_is_the_layer_output_even_before_an_inplace_relu(method: str) -> None:
    engine = tiny_engine(inplace_last=True)
    conv3 = engine.model.module.get_submodule("features.conv3")
    assert isinstance(conv3, nn.Conv2d) and conv3.bias is not None
    with torch.no_grad():  # channel 0 has mixed signs and the largest sum, before and after the ReLU
        conv3.bias.fill_(-100.0)
        conv3.bias[0] = 0.0
    image = engine.prepare(load_sample("chelsea"))
    maps = engine.activations(image, "features.conv3")
    assert int(maps.sum(dim=(1, 2)).argmax()) == 0 and maps[0].min() < 0 < maps[0].max()
    result = occlude(engine, image, size=8, stride=8, method=method)
    assert result.method == method
    _assert_matches_oracle(engine, image, result, target=None)


def test_matches_captum_occlusion(engine: Engine, image: PreparedImage) -> None:
    """Captum's per-pixel attribution is the mean probability drop over the windows covering a pixel."""
    from captum.attr import Occlusion

    size, stride = 8, 4
    result = occlude(engine, image, size=size, stride=stride)
    module = engine.model.module
    attribution = Occlusion(lambda x: torch.softmax(module(x), dim=1)).attribute(
        image.tensor,
        sliding_window_shapes=(3, size, size),
        strides=(3, stride, stride),
        baselines=0.0,
        target=result.target,
        perturbations_per_eval=16,
    )
    drops = np.zeros((TINY_SIZE, TINY_SIZE))
    counts = np.zeros((TINY_SIZE, TINY_SIZE))
    for (y, x), p in zip(result.positions, result.probability.flat, strict=True):
        drops[y : y + size, x : x + size] += result.unoccluded_probability - p
        counts[y : y + size, x : x + size] += 1
    assert counts.min() >= 1
    for channel in range(3):
        np.testing.assert_allclose(attribution[0, channel].double().numpy(), drops / counts, atol=1e-5)


# ---- memory bound, progress and cancellation -------------------------------------------------


def test_batches_never_exceed_batch_size(engine: Engine, image: PreparedImage) -> None:
    with batches_seen(engine) as seen:
        result = occlude(engine, image, size=4, stride=2, batch_size=16, method="dense")  # 15×15 = 225 positions
    sizes = [len(batch) for batch in seen]
    assert result.rows * result.cols == 225
    assert sizes[0] == 1  # the unoccluded reference
    assert max(sizes[1:]) == 16 and sizes[1:] == [16] * 14 + [1]
    assert result.forward_batches == len(sizes)


class RecordingTask:
    """A `convscope.tasks.Task` that records progress and asks to stop after `stop_after` questions."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.asked = 0
        self.stop_after = stop_after

    def report(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def should_stop(self) -> bool:
        self.asked += 1
        return self.stop_after is not None and self.asked > self.stop_after


@pytest.mark.parametrize("method", ["dense", "incremental"])
def test_progress_and_cancellation(engine: Engine, image: PreparedImage, method: str) -> None:
    task = RecordingTask()
    occlude(engine, image, size=8, stride=4, batch_size=10, method=method, task=task)
    assert task.calls == [(10, 49), (20, 49), (30, 49), (40, 49), (49, 49)]

    task = RecordingTask(stop_after=2)
    with pytest.raises(OcclusionCancelled) as info:
        occlude(engine, image, size=8, stride=4, batch_size=10, method=method, task=task)
    assert isinstance(info.value, Cancelled)
    assert (info.value.done, info.value.total) == (20, 49)
    assert task.calls == [(10, 49), (20, 49)]


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"size": 0}, InvalidRequestError, "occluder size"),
        ({"size": -3}, InvalidRequestError, "occluder size"),
        ({"size": TINY_SIZE + 1}, InvalidRequestError, "larger than"),
        ({"stride": 0}, InvalidRequestError, "stride"),
        ({"size": 2.5}, InvalidRequestError, "integer"),
        ({"target": TINY_CLASSES}, InvalidRequestError, "target class 10 is out of range"),
        ({"target": -1}, InvalidRequestError, "out of range"),
        ({"batch_size": 0}, InvalidRequestError, "batch size"),
        ({"layer": "features.nope"}, NotFoundError, "features.nope"),
    ],
)
def test_bad_input(engine: Engine, image: PreparedImage, kwargs: dict, error: type, words: str) -> None:
    with batches_seen(engine) as seen, pytest.raises(error, match=words):
        occlude(engine, image, **kwargs)
    assert seen == []  # rejected before any forward pass


def test_grid_bad_input() -> None:
    for size, stride in [(0, 1), (1, 0), (225, 16)]:
        with pytest.raises(InvalidRequestError):
            occlusion_grid(224, size, stride)


def test_image_prepared_for_another_size(engine: Engine) -> None:
    other = PreparedImage("x", Image.new("RGB", (64, 64)), torch.zeros(1, 3, 64, 64))
    with pytest.raises(InvalidRequestError, match="64×64"):
        occlude(engine, other)


# ---- the response shape (docs/api.md) ---------------------------------------------------------------


def test_response_shape(engine: Engine, image: PreparedImage) -> None:
    result = occlude(engine, image, size=10, stride=6)  # 22 / 6 is not whole: 4×4
    response = json.loads(json.dumps(occlusion_response(result)))
    contract = {"target", "target_label", "size", "stride", "rows", "cols", "probability", "top_label", "feature"}
    how = {"method", "method_requested", "planned_ratio", "approximate", "approx", "adaptive", "positions_computed"}
    assert set(response) == contract | {"top_label_names", "unoccluded", "seconds", "note"} | how
    assert response["method_requested"] == "auto" and response["method"] in ("dense", "incremental")
    assert response["method"] == result.method and response["planned_ratio"] == result.planned_ratio
    assert 0 < response["planned_ratio"] <= 1  # auto plans before choosing
    assert response["approximate"] is False and response["approx"] is None and response["adaptive"] is None
    assert response["positions_computed"] == 16 and response["note"] is None
    assert response["seconds"] == pytest.approx(result.seconds, abs=1e-3)
    assert set(response["feature"]) == {"layer", "channel", "activity"}
    assert set(response["unoccluded"]) == {"probability", "top_label", "activity"}
    assert (response["size"], response["stride"], response["rows"], response["cols"]) == (10, 6, 4, 4)
    for key in ("probability", "top_label"):
        assert len(response[key]) == 4 and all(len(row) == 4 for row in response[key])
    assert np.asarray(response["feature"]["activity"]).shape == (4, 4)
    assert response["target_label"] == engine.labels[response["target"]]
    assert response["feature"] == {
        "layer": result.layer,
        "channel": result.channel,
        "activity": result.activity.tolist(),
    }
    np.testing.assert_array_equal(response["probability"], result.probability)
    occurring = {v for row in response["top_label"] for v in row}
    names = response["top_label_names"]
    assert occurring <= {int(k) for k in names}
    assert all(names[k] == engine.labels[int(k)] for k in names)
    top1 = int(torch.argmax(engine.probabilities(image)))
    assert response["unoccluded"]["top_label"] == top1 == response["target"]
    assert response["unoccluded"]["probability"] == pytest.approx(float(engine.probabilities(image)[top1]), abs=1e-5)


# ---- a real model on a real photo ------------------------------------------------------------------

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def real_engine() -> Engine:
    from convscope.models import load_model

    return Engine(load_model("efficientnet_lite0"), device_name="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("corner", [(8, 8), (104, 96)])
def test_cat_pasted_on_grass_is_found(real_engine: Engine, corner: tuple[int, int]) -> None:
    """Fig. 7: the occluder hurts the cat's probability most where the cat is."""
    cat = load_sample("chelsea")
    width = 112
    height = round(width * cat.height / cat.width)
    scene = load_sample("grass").resize((224, 224))
    scene.paste(cat.resize((width, height)), corner)  # corner is (x, y)
    image = real_engine.prepare(scene)  # already 224×224: the model sees it as is
    top1 = real_engine.predict(image, top=1)[0]
    assert top1.index in CAT_CLASSES, top1

    size = 48
    result = occlude(real_engine, image, size=size, stride=32)  # 6×6 positions
    assert result.target == top1.index
    y, x = result.positions[int(np.argmin(result.probability))]
    cy, cx = y + size / 2, x + size / 2
    left, top = corner
    assert left <= cx < left + width and top <= cy < top + height, ((y, x), corner)
    assert result.probability.min() < 0.5 * result.unoccluded_probability
    # squares that miss the cat altogether barely matter
    outside = [
        p
        for (py, px), p in zip(result.positions, result.probability.flat, strict=True)
        if px + size <= left or px >= left + width or py + size <= top or py >= top + height
    ]
    assert outside and np.median(outside) > 0.5 * result.unoccluded_probability
