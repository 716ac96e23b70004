"""Filter diagnostics (paper Fig. 6): mosaic, frequency bands, dead channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.nets import SmallConvNet, engine_for
from convscope.analysis.filters import (
    band_energies,
    conv_weight,
    dead_channels,
    filter_mosaic,
    filters_report,
    frequency_coverage,
    measurement_points,
    normalised_filters,
    white_reference,
)
from convscope.api.schemas import FiltersReportResponse, FrequencyResponse
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.tasks import CallbackTask

K = 7


def hand_set_filters() -> torch.Tensor:
    """Three 7×7 RGB filters: constant (pure DC), a grating of 0.25 cycles/px, a checkerboard (Nyquist)."""
    y, x = np.mgrid[0:K, 0:K]
    low = np.ones((K, K))
    mid = np.cos(2 * np.pi * 0.25 * x)
    high = (-1.0) ** (x + y)
    weight = np.stack([np.stack([f, 0.5 * f, -f]) for f in (low, mid, high)])
    return torch.tensor(weight, dtype=torch.float32)


def test_hand_set_filters_land_in_the_right_bands() -> None:
    net = SmallConvNet()
    with torch.no_grad():
        net.conv1 = torch.nn.Conv2d(3, 3, K, stride=2, padding=3)
        net.conv1.weight.copy_(hand_set_filters())
        net.conv2 = torch.nn.Conv2d(3, 6, 3, padding=1)
    engine = engine_for(net, size=32)
    coverage = frequency_coverage(engine)
    assert coverage.layer == "conv1" and coverage.kernel_size == (K, K) and coverage.stride == (2, 2)
    bands = coverage.bands
    np.testing.assert_allclose(bands.sum(axis=1), 1.0)
    assert list(bands.argmax(axis=1)) == [0, 1, 2]
    assert bands[0, 0] > 0.8 and bands[2, 2] > 0.8 and bands[1, 1] > 0.6
    assert coverage.dominant_counts == [1, 1, 1]
    body = FrequencyResponse.from_coverage(coverage).model_dump(mode="json")  # the API's JSON of it
    assert body["dominant_counts"] == [1, 1, 1] and body["bands"] == ["low", "mid", "high"]
    assert body["kernel_size"] == [K, K] and body["channels"] == 3


def test_band_energies_follow_parseval_and_white_noise_matches_the_reference() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((400, 3, 7, 7))
    np.testing.assert_allclose(band_energies(noise).mean(axis=0), white_reference(), atol=0.02)
    assert sum(white_reference()) == pytest.approx(1.0)
    # Parseval: the total spectral energy over the padded grid is grid_size × the sum of squared weights
    weight = rng.standard_normal((1, 1, 5, 5))
    power = np.abs(np.fft.fft2(weight[0, 0], s=(64, 64))) ** 2
    assert power.sum() == pytest.approx(64 * 64 * (weight**2).sum())


def test_mosaic_tiles_are_contrast_normalised_per_filter() -> None:
    weight = hand_set_filters() * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1, 1)  # very different scales
    tiles = normalised_filters(weight)
    assert tiles.shape == (3, K, K, 3)
    for tile in tiles[1:]:  # the constant-per-channel filter still spans its channels
        assert tile.min() == 0 and tile.max() == 255
    mosaic = filter_mosaic(weight, scale=4, gap=1, columns=2)
    assert mosaic.size == (2 * (K * 4 + 1) + 1, 2 * (K * 4 + 1) + 1)
    pixels = np.asarray(mosaic)
    assert np.array_equal(pixels[1 : 1 + 4, 1 : 1 + 4].reshape(-1, 3), np.repeat(tiles[0, :1, 0], 16, axis=0))
    flat = normalised_filters(torch.zeros(1, 3, 3, 3))
    assert (flat == 128).all()  # a constant filter is mid grey, not a division by zero


def test_forced_dead_channel_is_counted() -> None:
    net = SmallConvNet()
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.bias.copy_(torch.tensor([1.0, 0.5, -1.0, 2.0]))  # channel 2: never positive
        net.conv2.weight.abs_()
        net.conv2.bias.fill_(0.1)  # every conv2 channel positive on positive inputs
    engine = engine_for(net, size=32)
    assert measurement_points(engine) == [("conv1", "relu1", True), ("conv2", "relu2", True), ("conv3", "conv3", False)]
    images = [torch.randn(1, 3, 32, 32) for _ in range(5)]
    calls: list[tuple[int, int]] = []
    layers = {
        row.layer: row
        for row in dead_channels(
            engine, images, total=5, batch_size=2, task=CallbackTask(lambda d, t: calls.append((d, t)))
        )
    }
    assert layers["conv1"].dead == [2]
    assert layers["conv1"].measured_at == "relu1"
    assert layers["conv2"].dead == []
    assert calls == [(2, 5), (4, 5), (5, 5)]
    report = filters_report(engine, [(f"img{i}", t) for i, t in enumerate(images)])
    assert report.dead is not None and report.dead.total_dead >= 1
    body = FiltersReportResponse.from_report(report).model_dump(mode="json")
    row = body["dead"]["layers"][0]
    assert (row["layer"], row["dead"], row["dead_channels"], row["channels"]) == ("conv1", 1, [2], 4)
    assert body["dead"]["images"] == [f"img{i}" for i in range(5)] and body["dead"]["conv_layers"] == 3


def test_a_conv_without_activation_is_measured_at_its_own_output() -> None:
    net = SmallConvNet()
    with torch.no_grad():
        net.conv3.weight.zero_()
        net.conv3.bias.copy_(torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0, 1.0]))
    engine = engine_for(net, size=32)
    layers = {row.layer: row for row in dead_channels(engine, [torch.randn(1, 3, 32, 32)])}
    assert layers["conv3"].dead == [0, 2] and not layers["conv3"].rectified


def test_bad_layers_are_refused() -> None:
    engine = engine_for(SmallConvNet(), size=32)
    assert conv_weight(engine)[0] == "conv1"
    with pytest.raises(NotFoundError):
        conv_weight(engine, "nope")
    with pytest.raises(InvalidRequestError, match="not a Conv2d"):
        conv_weight(engine, "relu1")
    with pytest.raises(InvalidRequestError, match="no images"):
        dead_channels(engine, [])
