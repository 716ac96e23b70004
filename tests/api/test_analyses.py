"""The analysis endpoints (issue 8) with the real default model: invariance, correspondence, filters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL, decode, run_job
from convscope.analysis.correspondence import demo_annotation, draw_random_boxes, parse_parts
from convscope.analysis.filters import dead_channels, frequency_coverage, measurement_points
from convscope.analysis.invariance import invariance
from convscope.engine import Engine
from convscope.samples import load_sample

BASE = f"/api/models/{MODEL}"


# ---- invariance -------------------------------------------------------------------------------------
def test_invariance_job_matches_the_library(client: TestClient, engine: Engine) -> None:
    body = {"images": ["chelsea"], "transform": "translation", "start": -60, "stop": 60, "steps": 3}
    result = run_job(client, f"{BASE}/analyses/invariance", body)
    assert result["values"] == [-60, 0, 60] and result["unit"] == "px"
    assert result["layers"] == {"low": "conv_stem", "high": "classifier:input"}
    (curve,) = result["images"]
    direct = invariance(engine, [("chelsea", load_sample("chelsea"))], "translation", values=[-60, 0, 60]).curves[0]
    np.testing.assert_allclose(curve["distance"]["low"], direct.low_distance, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(curve["distance"]["high"], direct.high_distance, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(curve["probability"], direct.probability, atol=1e-5)
    assert curve["target"] == direct.target and "cat" in curve["target_label"]
    assert curve["distance"]["low"][1] == pytest.approx(0, abs=1e-4)
    # the paper's finding, loosely: the top layer moves less, relative to its norm, than the bottom one
    low, high = curve["relative_distance"]["low"], curve["relative_distance"]["high"]
    assert high[0] + high[2] < low[0] + low[2]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"images": ["chelsea"], "low_layer": "no.such.layer"}, 404, "no module"),
        ({"images": ["no-such-image"]}, 404, "no-such-image"),
        ({"images": ["chelsea"], "steps": 0}, 422, "steps"),
        ({"images": ["chelsea"], "transform": "rotation", "edge": "wrap"}, 422, "translation only"),
        ({"images": ["chelsea"], "target": 5000}, 422, "out of range"),
        ({"images": ["chelsea"], "transform": "scale", "start": -1}, 422, "scale"),
        ({"images": []}, 422, "images"),
    ],
)
def test_invariance_bad_requests(client: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    response = client.post(f"{BASE}/analyses/invariance", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_invariance_preview_is_the_transformed_model_input(client: TestClient) -> None:
    identity = client.get(f"{BASE}/analyses/invariance/preview.png", params={"image": "grace_hopper"})
    assert identity.status_code == 200 and identity.headers["content-type"] == "image/png"
    model_input = client.get("/api/images/grace_hopper", params={"model": MODEL})
    assert np.array_equal(np.asarray(decode(identity.content)), np.asarray(decode(model_input.content)))
    rotated = client.get(
        f"{BASE}/analyses/invariance/preview.png",
        params={"image": "grace_hopper", "transform": "rotation", "value": 90},
    )
    assert rotated.status_code == 200
    assert decode(rotated.content).size == (224, 224)
    assert not np.array_equal(np.asarray(decode(rotated.content)), np.asarray(decode(identity.content)))


# ---- correspondence ------------------------------------------------------------------------------------
def test_demo_annotation_is_served_in_the_models_frame(client: TestClient) -> None:
    response = client.get(f"{BASE}/analyses/correspondence/demo")
    assert response.status_code == 200
    body = response.json()
    assert body == demo_annotation(224)
    assert {"astronaut", "grace_hopper"} <= set(body["images"])


def test_correspondence_job_gives_a_table(client: TestClient) -> None:
    demo = demo_annotation(224)
    images = ["astronaut", "grace_hopper"]
    parts = {part: [demo["parts"][part][image] for image in images] for part in ("left_eye", "nose")}
    body = {"images": images, "parts": parts, "draws": 1, "seed": 4}
    result = run_job(client, f"{BASE}/analyses/correspondence", body)
    assert result["images"] == images
    assert result["layers"] == ["conv_head", "classifier:input"]
    assert [row["occlusion"] for row in result["table"]] == ["left_eye", "nose", "random"]
    for row in result["table"]:
        for layer in result["layers"]:
            assert 0 < row["delta"][layer]["mean"] < 1
    _, checked = parse_parts({"parts": parts}, images, 224)
    expected = draw_random_boxes(checked, 224, 1, 4)
    assert result["random"]["boxes"] == [{p: [list(b) for b in boxes] for p, boxes in expected[0].items()}]
    # the same request keyed by image id gives the same answer
    keyed = {part: dict(zip(images, boxes, strict=True)) for part, boxes in parts.items()}
    again = run_job(client, f"{BASE}/analyses/correspondence", {**body, "parts": keyed})
    assert again["table"] == result["table"]


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        ({"nose": [[220, 10, 10, 10], [0, 0, 10, 10]]}, "part 'nose' in image 'astronaut'"),
        ({"nose": [[0, 0, 10, 10], [-5, 0, 10, 10]]}, "leaves the 224×224 image"),
        ({"nose": [[0, 0, 10, 10]]}, "1 boxes for 2 images"),
        ({"nose": {"astronaut": [0, 0, 10, 10]}}, "no box for image"),
    ],
)
def test_parts_outside_the_image_are_422(client: TestClient, parts: dict[str, Any], words: str) -> None:
    body = {"images": ["astronaut", "grace_hopper"], "parts": parts}
    response = client.post(f"{BASE}/analyses/correspondence", json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


def test_correspondence_unknown_layer_is_404(client: TestClient) -> None:
    body = {"images": ["astronaut", "grace_hopper"], "parts": {"n": [[0, 0, 5, 5]] * 2}, "layers": ["nope"]}
    assert client.post(f"{BASE}/analyses/correspondence", json=body).status_code == 404


# ---- filters ------------------------------------------------------------------------------------------------
def test_filters_and_mosaic(client: TestClient, engine: Engine) -> None:
    response = client.get(f"{BASE}/filters")
    assert response.status_code == 200
    body = response.json()
    assert body["layer"] == "conv_stem" and body["in_channels"] == 3 and body["out_channels"] == 32
    expected = frequency_coverage(engine).bands
    np.testing.assert_allclose(body["frequency"]["per_filter"], expected, atol=1e-5)
    assert body["frequency"]["stride"] == [2, 2]
    mosaic = client.get(body["mosaic_url"], params={"scale": 4, "gap": 1})
    assert mosaic.status_code == 200
    image = decode(mosaic.content)
    columns = int(np.ceil(np.sqrt(32)))
    assert image.size == (columns * (3 * 4 + 1) + 1, int(np.ceil(32 / columns)) * (3 * 4 + 1) + 1)
    assert client.get(f"{BASE}/filters", params={"layer": "bn1"}).status_code == 422
    assert client.get(f"{BASE}/filters", params={"layer": "nope"}).status_code == 404


def test_dead_channels_job_matches_the_library(client: TestClient, engine: Engine) -> None:
    result = run_job(client, f"{BASE}/analyses/dead-channels", {"images": ["chelsea", "coffee"]})
    assert result["images"] == ["chelsea", "coffee"]
    assert [row["layer"] for row in result["layers"]] == [conv for conv, _, _ in measurement_points(engine)]
    tensors = [engine.prepare(load_sample(s)).tensor for s in ("chelsea", "coffee")]
    direct = {row.layer: row.dead for row in dead_channels(engine, tensors)}
    assert {row["layer"]: row["dead_channels"] for row in result["layers"]} == direct
    assert result["total_dead"] == sum(len(v) for v in direct.values())
    assert client.post(f"{BASE}/analyses/dead-channels", json={"images": ["nope"]}).status_code == 404
