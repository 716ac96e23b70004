"""Invariance curves (paper Fig. 5): transformed copies, distances, probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.nets import circular_net, engine_for
from convscope.analysis.invariance import (
    DEFAULT_RANGES,
    InvarianceResult,
    invariance,
    transform_values,
    transformed_image,
)
from convscope.api.schemas import InvarianceResponse
from convscope.engine import Engine
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.images import prepare_image, resize_and_crop
from convscope.samples import load_sample

MEAN_RGB = (124, 116, 104)


def invariance_response(result: InvarianceResult) -> dict[str, Any]:
    """The JSON the API's job and `convscope invariance --json` give for a result."""
    return InvarianceResponse.from_result(result).model_dump(mode="json")


@pytest.fixture(scope="module")
def circular() -> Engine:
    return engine_for(circular_net(), size=64)


@pytest.fixture(scope="module")
def default_engine() -> Engine:
    from convscope.models import load_model

    return Engine(load_model(), device_name="cpu")


def noise_image(seed: int, width: int = 96, height: int = 80) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- transformed copies --------------------------------------------------------------------------
@pytest.mark.parametrize("sample", ["grace_hopper", "chelsea", "astronaut"])
@pytest.mark.parametrize(("transform", "value"), [("translation", 0.0), ("scale", 1.0), ("rotation", 0.0)])
def test_identity_copy_is_the_model_input(sample: str, transform: str, value: float) -> None:
    image = load_sample(sample)
    copy = np.asarray(transformed_image(image, 224, transform, value))
    assert np.array_equal(copy, np.asarray(resize_and_crop(image, 224)))


def test_translation_shows_more_of_a_portrait_photo_before_any_fill() -> None:
    image = load_sample("grace_hopper")  # 512×600: resized to 224×262, 19 px above and below the crop
    resized = np.asarray(image.resize((224, 262), Image.Resampling.BILINEAR, reducing_gap=None))
    down = np.asarray(transformed_image(image, 224, "translation", 16))
    assert np.array_equal(down, resized[19 - 16 : 19 - 16 + 224])  # real photo rows, no fill
    far = np.asarray(transformed_image(image, 224, "translation", 60))
    assert (far[: 60 - 19] == MEAN_RGB).all()  # beyond the photo: the mean colour
    assert np.array_equal(far[60 - 19 :], resized[: 224 - 41])


def test_rotation_and_scale_keep_the_frame_and_fill_with_the_mean_colour() -> None:
    image = load_sample("astronaut")  # square: rotated corners fall outside the photo
    rotated = np.asarray(transformed_image(image, 224, "rotation", 45))
    assert rotated.shape == (224, 224, 3)
    assert (rotated[0, 0] == MEAN_RGB).all() and (rotated[112, 112] != MEAN_RGB).any()
    half_turn = np.asarray(transformed_image(image, 224, "rotation", 180)).astype(int)
    assert np.abs(half_turn[::-1, ::-1] - np.asarray(resize_and_crop(image, 224)).astype(int)).mean() < 2
    zoomed = np.asarray(transformed_image(image, 224, "scale", 2.0))
    assert not (zoomed == MEAN_RGB).all(axis=2).any()  # zooming in never needs a fill
    small = np.asarray(transformed_image(image, 224, "scale", 0.5))
    assert (small[:50] == MEAN_RGB).all() and (small[112, 112] != MEAN_RGB).any()


def test_wrap_is_a_circular_shift_of_the_model_input() -> None:
    image = noise_image(1)
    base = np.asarray(resize_and_crop(image, 64))
    assert np.array_equal(
        np.asarray(transformed_image(image, 64, "translation", 10, edge="wrap")), np.roll(base, 10, 0)
    )
    with pytest.raises(InvalidRequestError, match="translation only"):
        transformed_image(image, 64, "rotation", 10, edge="wrap")


# ---- values and point counts ----------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["translation", "scale", "rotation"])
def test_default_ranges_are_the_papers(transform: str) -> None:
    start, stop, steps = DEFAULT_RANGES[transform]
    values = transform_values(transform)
    assert len(values) == steps and values[0] == start and values[-1] == stop


@pytest.mark.parametrize(("transform", "steps"), [("translation", 5), ("scale", 3), ("rotation", 7), ("rotation", 1)])
def test_curves_have_the_requested_number_of_points(circular: Engine, transform: str, steps: int) -> None:
    images = [("a", noise_image(2)), ("b", noise_image(3))]
    result = invariance(circular, images, transform, steps=steps, batch_size=4)
    body = invariance_response(result)
    assert len(body["values"]) == steps
    assert [image["image"] for image in body["images"]] == ["a", "b"]
    for image in body["images"]:
        for key in ("low", "high"):
            assert len(image["distance"][key]) == steps
            assert len(image["relative_distance"][key]) == steps
        assert len(image["probability"]) == len(image["top_label"]) == steps
    assert result.forward_passes == 2 * (steps + 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transform": "shear"}, "unknown transform"),
        ({"steps": 0}, "steps"),
        ({"steps": 10_000}, "steps"),
        ({"transform": "scale", "start": 0.0}, "scale factors"),
        ({"transform": "rotation", "edge": "wrap"}, "translation only"),
        ({"target": 99}, "out of range"),
    ],
)
def test_bad_requests_are_refused(circular: Engine, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        invariance(circular, [("a", noise_image(4))], **kwargs)  # type: ignore[arg-type]


def test_unknown_layer_is_not_found(circular: Engine) -> None:
    with pytest.raises(NotFoundError, match="no module"):
        invariance(circular, [("a", noise_image(4))], low_layer="nope")


# ---- the distances ------------------------------------------------------------------------------------------
def test_circular_shift_changes_nothing_for_a_translation_invariant_net(circular: Engine) -> None:
    images = [("noise", noise_image(5)), ("cat", load_sample("chelsea"))]
    result = invariance(
        circular,
        images,
        "translation",
        values=[-30, -7, 0, 13, 64],
        edge="wrap",
        low_layer="pool",
        high_layer="penultimate",
    )
    assert result.high_layer == "fc2:input"
    for curve in result.curves:
        assert curve.low_norm > 0 and curve.high_norm > 0
        np.testing.assert_allclose(curve.low_distance, 0, atol=1e-5 * curve.low_norm)
        np.testing.assert_allclose(curve.high_distance, 0, atol=1e-5 * curve.high_norm)
        np.testing.assert_allclose(curve.probability, curve.probability[2], atol=1e-6)
    # the equivariant conv maps themselves do move: the shift really happened
    moved = invariance(circular, images[:1], "translation", values=[13], edge="wrap", low_layer="features.conv1")
    assert moved.curves[0].low_distance[0] > 0.1 * moved.curves[0].low_norm


def test_identity_gives_distance_zero_and_the_original_probability(default_engine: Engine) -> None:
    image = load_sample("coffee")
    prepared = prepare_image(image, 224, default_engine.model.mean, default_engine.model.std)
    probabilities = default_engine.probabilities(prepared)
    top = int(probabilities.argmax())
    for transform, value in (("rotation", 0.0), ("scale", 1.0)):
        result = invariance(default_engine, [("coffee", image)], transform, values=[value])
        curve = result.curves[0]
        assert curve.target == top
        assert curve.low_distance[0] <= 1e-5 * curve.low_norm
        assert curve.high_distance[0] <= 1e-5 * curve.high_norm
        assert curve.probability[0] == pytest.approx(float(probabilities[top]), abs=1e-5)


def test_penultimate_layer_moves_less_than_the_low_layer_under_translation(default_engine: Engine) -> None:
    """The paper's finding (Fig. 5): small effect at the top of the network, large at the bottom."""
    result = invariance(default_engine, [("chelsea", load_sample("chelsea"))], "translation", values=[-60, 60])
    assert result.low_layer == "conv_stem" and result.high_layer == "classifier:input"
    curve = result.curves[0]
    low = np.asarray(curve.low_distance) / curve.low_norm
    high = np.asarray(curve.high_distance) / curve.high_norm
    assert (low > 0.2).all() and (high > 0).all()
    assert high.mean() < 0.8 * low.mean(), (low, high)


def test_cancelled_between_batches(circular: Engine) -> None:
    from convscope.tasks import CallbackTask, Cancelled

    with pytest.raises(Cancelled):
        invariance(
            circular, [("a", noise_image(6))], steps=9, batch_size=2, task=CallbackTask(should_stop=lambda: True)
        )


def test_penultimate_feature_of_a_net_without_linear_is_its_last_map() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    engine = engine_for(net, size=32)
    result = invariance(engine, [("a", noise_image(7))], "rotation", values=[0, 90])
    assert result.high_layer == "1"


def test_summary_gives_n_and_the_spread_across_images(circular: Engine) -> None:
    images = [("a", noise_image(4)), ("b", noise_image(5)), ("c", noise_image(6))]
    body = invariance_response(invariance(circular, images, "rotation", steps=4, batch_size=4))
    summary = body["summary"]
    assert summary["n"] == 3
    for step in range(4):
        column = [image["probability"][step] for image in body["images"]]
        assert summary["probability"]["mean"][step] == pytest.approx(np.mean(column))
        assert summary["probability"]["std"][step] == pytest.approx(np.std(column, ddof=1))
        assert summary["probability"]["min"][step] == min(column)
        highs = [image["relative_distance"]["high"][step] for image in body["images"]]
        assert summary["relative_distance"]["high"]["max"][step] == pytest.approx(max(highs))
    one = invariance_response(invariance(circular, images[:1], "rotation", steps=2))
    assert one["summary"]["n"] == 1 and one["summary"]["probability"]["std"] == [None, None]
