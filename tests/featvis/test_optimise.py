"""Feature visualisation by optimisation: the result excites its unit, and is reproducible."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.engine import Engine
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.featvis import check_target, visualize
from convscope.tasks import CallbackTask, Cancelled
from featvis.conftest import ZF_SIZE, photo_batch


def channel_means(engine: Engine, batch: torch.Tensor, layer: str) -> torch.Tensor:
    _, outputs = engine.forward_batch(batch, [layer])
    return outputs[layer].float().mean(dim=(2, 3)).cpu()  # N×C


def png_as_input(engine: Engine, png: bytes) -> torch.Tensor:
    """The PNG as the model would see it after the user saved and reloaded it."""
    return engine.prepare(Image.open(io.BytesIO(png)).convert("RGB")).tensor


@pytest.mark.parametrize(
    ("engine_name", "layer", "channels", "steps"),
    [("zf_engine", "features.conv2", [0, 2, 3], 32), ("effnet_engine", "blocks.3.0", [0, 7], 24)],
)
def test_optimised_image_activates_its_channel_more_than_every_photo(
    request: pytest.FixtureRequest, engine_name: str, layer: str, channels: list[int], steps: int
) -> None:
    engine: Engine = request.getfixturevalue(engine_name)
    results = visualize(engine, layer, channels, steps=steps, seed=0)
    photos = channel_means(engine, photo_batch(engine), layer)
    for vis in results:
        reloaded = channel_means(engine, png_as_input(engine, vis.png()), layer)[0, vis.channel]
        best_photo = float(photos[:, vis.channel].max())
        assert float(reloaded) > best_photo, (vis.channel, float(reloaded), best_photo)
        # the reported objective is the one the model gives on the returned input
        direct = channel_means(engine, torch.from_numpy(vis.input), layer)[0, vis.channel]
        assert vis.value == pytest.approx(float(direct), rel=1e-4, abs=1e-5)
        assert vis.value > vis.trace[0]  # the optimisation made progress


def test_result_shapes_and_normalised_input(zf_engine: Engine) -> None:
    (vis,) = visualize(zf_engine, "features.conv3", [1], steps=4)
    assert vis.image.shape == (ZF_SIZE, ZF_SIZE, 3) and vis.image.dtype == np.uint8
    assert vis.input.shape == (1, 3, ZF_SIZE, ZF_SIZE) and vis.input.dtype == np.float32
    mean = np.array(zf_engine.model.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.array(zf_engine.model.std, dtype=np.float32).reshape(3, 1, 1)
    rgb = vis.input[0] * std + mean  # back to [0, 1]: the image, up to the uint8 rounding
    assert np.abs(rgb.transpose(1, 2, 0) * 255.0 - vis.image).max() <= 0.51
    assert len(vis.trace) == 4


def test_same_seed_same_image_other_seed_other_image(zf_engine: Engine) -> None:
    first = visualize(zf_engine, "features.conv3", [4], steps=12, seed=7)[0]
    again = visualize(zf_engine, "features.conv3", [4], steps=12, seed=7)[0]
    other = visualize(zf_engine, "features.conv3", [4], steps=12, seed=8)[0]
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.input, again.input)
    assert first.value == again.value
    assert not np.array_equal(first.image, other.image)


def test_a_batch_of_units_equals_separate_runs(zf_engine: Engine) -> None:
    channels = [0, 3, 5, 9]
    together = visualize(zf_engine, "features.conv3", channels, steps=16, seed=3)
    for vis in together:
        (alone,) = visualize(zf_engine, "features.conv3", [vis.channel], steps=16, seed=3)
        assert np.abs(vis.input - alone.input).max() < 1e-3
        assert np.abs(vis.image.astype(int) - alone.image.astype(int)).max() <= 1
        assert vis.value == pytest.approx(alone.value, rel=1e-3, abs=1e-5)
    # and batches of two give the same as one batch of four
    pairs = visualize(zf_engine, "features.conv3", channels, steps=16, seed=3, batch_size=2)
    for a, b in zip(together, pairs, strict=True):
        assert a.channel == b.channel
        assert np.abs(a.input - b.input).max() < 1e-3


def test_unit_objective_defaults_to_the_centre_and_raises_that_unit(zf_engine: Engine) -> None:
    layer = "features.conv2"
    info = zf_engine.layer(layer)
    (vis,) = visualize(zf_engine, layer, [2], objective="unit", steps=24)
    assert vis.position == (info.height // 2, info.width // 2)
    _, outputs = zf_engine.forward_batch(torch.from_numpy(vis.input), [layer])
    y, x = vis.position
    assert vis.value == pytest.approx(float(outputs[layer][0, 2, y, x]), rel=1e-4, abs=1e-5)
    photos = zf_engine.forward_batch(photo_batch(zf_engine), [layer])[1][layer][:, 2, y, x]
    assert vis.value > float(photos.max())


def test_logit_objective_raises_the_class_logit(zf_engine: Engine) -> None:
    (vis,) = visualize(zf_engine, None, [3], objective="logit", steps=24)
    assert vis.layer == "logits"
    logits, _ = zf_engine.forward_batch(torch.from_numpy(vis.input))
    assert vis.value == pytest.approx(float(logits[0, 3]), rel=1e-4, abs=1e-5)
    photos, _ = zf_engine.forward_batch(photo_batch(zf_engine))
    assert vis.value > float(photos[:, 3].max())


def test_cancel_stops_between_steps(zf_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    task = CallbackTask(progress=lambda done, total: seen.append((done, total)), should_stop=lambda: len(seen) >= 3)
    with pytest.raises(Cancelled) as caught:
        visualize(zf_engine, "features.conv3", [0, 1], steps=50, task=task)
    assert caught.value.done == 3 and caught.value.total == 50
    assert seen == [(1, 50), (2, 50), (3, 50)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": [24]}, "channel 24 is out of range for layer 'features.conv3' (0..23)"),
        ({"steps": 0}, "steps must be between 1 and 4096"),
        ({"size": 4096}, "size must be between 16 and 512"),
        ({"objective": "neuron"}, "unknown objective 'neuron'"),
        ({"channels": []}, "no channels"),
        ({"channels": [1, 1]}, "once per request"),
        ({"objective": "unit", "position": (99, 0)}, "position (99, 0) is outside layer"),
        ({"objective": "channel", "position": (1, 1)}, "applies to the unit objective only"),
        ({"objective": "logit", "channels": [10]}, "out of range for the model's classes (0..9)"),
    ],
)
def test_bad_requests_are_clear_errors(zf_engine: Engine, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"layer": "features.conv3", "channels": [0], **kwargs}
    with pytest.raises(InvalidRequestError) as caught:
        check_target(zf_engine, **arguments)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_unknown_layer_is_not_found(zf_engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        check_target(zf_engine, "features.conv9", [0])


def test_a_size_the_model_cannot_take_is_refused_before_any_step(zf_engine: Engine) -> None:
    from collections import OrderedDict

    from torch import nn

    from fixtures.nets import make_engine

    torch.manual_seed(0)
    fixed = nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(3, 4, 3, stride=2, padding=1)),
                ("relu", nn.ReLU()),
                ("flat", nn.Flatten()),
                ("fc", nn.Linear(4 * 16 * 16, 10)),
            ]
        )
    )  # its classifier takes 32-pixel inputs only
    engine = make_engine(fixed, 32)
    with pytest.raises(InvalidRequestError, match="cannot run at size 48"):
        check_target(engine, "conv", [0], size=48)
    assert check_target(engine, "conv", [0], size=32).size == 32
    # ZFNet says why itself
    with pytest.raises(InvalidRequestError, match="built for 112×112 inputs"):
        check_target(zf_engine, "features.conv2", [0], size=96)
