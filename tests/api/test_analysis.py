"""Predictions, activations (with the sprite), projections, and HTTP caching of PNGs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.helpers import MODEL, decode, jpeg
from convscope.engine import Engine
from convscope.engine.render import projection_image
from convscope.samples import load_sample

BASE = f"/api/models/{MODEL}/images"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def hooked_output(engine: Engine, sample: str, layer: str) -> torch.Tensor:
    """The layer's output from a plain forward pass with a hook: independent of the engine's cache."""
    prepared = engine.prepare(load_sample(sample))
    module = dict(engine.model.module.named_modules())[layer]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    try:
        with engine.lock, torch.no_grad():
            engine.model.module(prepared.tensor.to(engine.device))
    finally:
        handle.remove()
    return captured[0][0].float().cpu()


# ---- predictions ------------------------------------------------------------------------
def test_predictions_on_a_real_photo(client: TestClient) -> None:
    response = client.get(f"{BASE}/chelsea/predictions", params={"top": 5})
    assert response.status_code == 200
    rows = response.json()
    assert len(rows) == 5
    assert rows[0]["index"] in CAT_CLASSES, rows[0]
    assert "cat" in rows[0]["label"]
    probabilities = [row["probability"] for row in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    assert len(client.get(f"{BASE}/chelsea/predictions").json()) == 5  # default top
    assert len(client.get(f"{BASE}/coffee/predictions", params={"top": 1000}).json()) == 1000


@pytest.mark.parametrize("top", ["0", "-1", "1001", "five"])
def test_predictions_bad_top_is_422(client: TestClient, top: str) -> None:
    response = client.get(f"{BASE}/chelsea/predictions", params={"top": top})
    assert response.status_code == 422
    assert "top" in response.json()["detail"]


# ---- activations --------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["conv_stem", "blocks.2.0.conv_pw", "conv_head"])
def test_activations_match_a_hooked_forward_pass(client: TestClient, engine: Engine, layer: str) -> None:
    response = client.get(f"{BASE}/coffee/activations", params={"layer": layer})
    assert response.status_code == 200, response.text
    body = response.json()
    info = engine.layer(layer)
    assert (body["layer"], body["channels"], body["height"], body["width"]) == (
        layer,
        info.channels,
        info.height,
        info.width,
    )
    maps = hooked_output(engine, "coffee", layer)
    assert maps.shape == (info.channels, info.height, info.width)
    np.testing.assert_allclose(body["max"], maps.amax(dim=(1, 2)).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(body["sum"], maps.sum(dim=(1, 2)).numpy(), rtol=1e-3, atol=1e-2)
    assert len(body["argmax"]) == info.channels
    for channel, (y, x) in enumerate(body["argmax"]):
        assert abs(float(maps[channel, y, x]) - body["max"][channel]) < 1e-4

    sprite = body["sprite"]
    assert sprite["columns"] * sprite["rows"] >= info.channels > (sprite["rows"] - 1) * sprite["columns"]
    assert sprite["tile"] == max(info.height, info.width)
    assert sprite["url"] == f"{BASE}/coffee/activations/sprite.png?layer={layer}"


def test_sprite_tiles_hold_each_channel(client: TestClient) -> None:
    layer = "blocks.1.0.conv_pw"
    body = client.get(f"{BASE}/chelsea/activations", params={"layer": layer}).json()
    response = client.get(body["sprite"]["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    sprite = decode(response.content)
    columns, rows, tile = body["sprite"]["columns"], body["sprite"]["rows"], body["sprite"]["tile"]
    assert sprite.mode == "L"
    assert sprite.size == (columns * tile, rows * tile)
    pixels = np.asarray(sprite)
    peak = max(body["max"])
    for channel in (0, 1, body["max"].index(peak), body["channels"] - 1):
        row, column = divmod(channel, columns)
        y, x = body["argmax"][channel]  # the tile is the map itself here (H = W = tile)
        value = int(pixels[row * tile + y, column * tile + x])
        expected = round(max(body["max"][channel], 0) / peak * 255)
        assert abs(value - expected) <= 1, (channel, value, expected)
    assert int(pixels.max()) == 255


def test_signed_sprite_keeps_negative_activations(client: TestClient) -> None:
    """A layer with negative values (a conv output): `min` per channel, and a signed sprite where
    128 is zero and 0 / 255 the layer's largest magnitude."""
    layer = "blocks.1.0.conv_pw"
    body = client.get(f"{BASE}/chelsea/activations", params={"layer": layer}).json()
    assert len(body["min"]) == body["channels"] and min(body["min"]) < 0
    assert all(low <= high for low, high in zip(body["min"], body["max"], strict=True))
    pixels = np.asarray(decode(client.get(body["sprite"]["url"] + "&signed=true").content))
    bound = max(max(body["max"]), -min(body["min"]))
    columns, tile = body["sprite"]["columns"], body["sprite"]["tile"]
    lowest = body["min"].index(min(body["min"]))
    row, column = divmod(lowest, columns)
    block = pixels[row * tile : (row + 1) * tile, column * tile : (column + 1) * tile]
    assert abs(int(block.min()) - round(body["min"][lowest] / bound * 127.5 + 127.5)) <= 1
    assert int(pixels.min()) == 0 or int(pixels.max()) == 255  # the largest magnitude reaches an end


def test_sprite_url_encodes_the_layer_name(client: TestClient) -> None:
    body = client.get(f"{BASE}/chelsea/activations", params={"layer": "blocks.0.0.bn1.act"}).json()
    assert body["sprite"]["url"].endswith("?layer=blocks.0.0.bn1.act")
    assert client.get(body["sprite"]["url"]).status_code == 200


# ---- projections ------------------------------------------------------------------------------
def test_projection_is_the_engine_projection_as_png(client: TestClient, engine: Engine) -> None:
    params: dict[str, Any] = {"layer": "blocks.3.0.conv_pw", "channel": 7}
    response = client.get(f"{BASE}/chelsea/projection", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = decode(response.content)
    assert (image.size, image.mode) == ((224, 224), "RGB")

    activations = client.get(f"{BASE}/chelsea/activations", params={"layer": "blocks.3.0.conv_pw"}).json()
    assert [int(response.headers["x-seed-y"]), int(response.headers["x-seed-x"])] == activations["argmax"][7]
    assert abs(float(response.headers["x-seed-value"]) - activations["max"][7]) < 1e-4

    result = engine.project(engine.prepare(load_sample("chelsea")), "blocks.3.0.conv_pw", 7)
    assert image.tobytes() == projection_image(result.projection).tobytes()

    # A single unit's projection lives inside that unit's receptive field (and is not blank).
    field = engine.layer("blocks.3.0.conv_pw").receptive_field
    seed_y, seed_x = int(response.headers["x-seed-y"]), int(response.headers["x-seed-x"])
    pixels = np.asarray(image).astype(int)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(pixels - background).sum(axis=2) > 3)
    assert len(ys) > 50
    half = field.size / 2 + 1
    centre_y, centre_x = field.offset + seed_y * field.stride, field.offset + seed_x * field.stride
    assert centre_y - half <= ys.min() and ys.max() <= centre_y + half
    assert centre_x - half <= xs.min() and xs.max() <= centre_x + half


def test_projection_modes_and_selects_differ(client: TestClient) -> None:
    bodies = {}
    for mode in ("deconvnet", "guided", "gradient"):
        for select in ("max", "map"):
            params: dict[str, Any] = {"layer": "blocks.4.0.conv_pw", "channel": 3, "mode": mode, "select": select}
            response = client.get(f"{BASE}/coffee/projection", params=params)
            assert response.status_code == 200, response.text
            bodies[mode, select] = response.content
            if select == "map":
                assert (response.headers["x-seed-y"], response.headers["x-seed-x"]) == ("-1", "-1")
            else:
                assert int(response.headers["x-seed-y"]) >= 0
    assert len(set(bodies.values())) == 6


def test_projection_at_an_explicit_position(client: TestClient) -> None:
    params: dict[str, Any] = {"layer": "conv_head", "channel": 5, "y": 2, "x": 6}
    response = client.get(f"{BASE}/chelsea/projection", params=params)
    assert response.status_code == 200
    assert (response.headers["x-seed-y"], response.headers["x-seed-x"]) == ("2", "6")
    outside = client.get(f"{BASE}/chelsea/projection", params={**params, "y": 7})
    assert outside.status_code == 422
    assert "outside" in outside.json()["detail"]
    half = client.get(f"{BASE}/chelsea/projection", params={"layer": "conv_head", "channel": 5, "y": 2})
    assert half.status_code == 422


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"layer": "conv_head", "channel": 1280}, "out of range"),
        ({"layer": "conv_head", "channel": -1}, "channel"),
        ({"layer": "conv_head", "channel": "x"}, "channel"),
        ({"layer": "conv_head"}, "channel"),
        ({"layer": "conv_head", "channel": 0, "mode": "lrp"}, "mode"),
        ({"layer": "conv_head", "channel": 0, "select": "mean"}, "select"),
        ({"channel": 0}, "layer"),
    ],
)
def test_projection_bad_parameters_are_422(client: TestClient, params: dict[str, Any], word: str) -> None:
    response = client.get(f"{BASE}/chelsea/projection", params=params)
    assert response.status_code == 422, response.text
    assert word in response.json()["detail"]


# ---- HTTP caching ----------------------------------------------------------------------------
def test_png_responses_carry_etag_and_honour_if_none_match(client: TestClient) -> None:
    url = f"{BASE}/chelsea/projection"
    params: dict[str, Any] = {"layer": "blocks.2.1.conv_pwl", "channel": 2}
    first = client.get(url, params=params)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert first.headers["cache-control"] == "public, max-age=3600"

    again = client.get(url, params=params)
    assert again.headers["etag"] == etag and again.content == first.content

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        revalidated = client.get(url, params=params, headers={"If-None-Match": header})
        assert revalidated.status_code == 304, header
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == etag

    stale = client.get(url, params=params, headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200 and stale.content == first.content

    other = client.get(url, params={**params, "channel": 3})
    assert other.headers["etag"] != etag
    for path in ("/api/images/chelsea", f"{BASE}/chelsea/activations/sprite.png?layer=conv_stem"):
        response = client.get(path)
        assert response.headers["etag"]
        assert client.get(path, headers={"If-None-Match": response.headers["etag"]}).status_code == 304


def test_upload_backed_pngs_are_private(client: TestClient) -> None:
    image_id = client.post("/api/images", files={"file": ("g.jpg", jpeg(load_sample("grace_hopper")), "image/jpeg")})
    image_id = image_id.json()["id"]
    response = client.get(f"{BASE}/{image_id}/projection", params={"layer": "conv_stem", "channel": 0})
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("private")
    assert (
        client.get(
            f"{BASE}/{image_id}/projection",
            params={"layer": "conv_stem", "channel": 0},
            headers={"If-None-Match": response.headers["etag"]},
        ).status_code
        == 304
    )
