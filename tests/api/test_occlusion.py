"""POST .../occlusion: small requests answer directly, large ones run as jobs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.conftest import JOB_THRESHOLD
from api.helpers import MODEL
from convscope.engine import Engine
from convscope.samples import load_sample

occlusion = pytest.importorskip("convscope.engine.occlusion")

URL = f"/api/models/{MODEL}/images/chelsea/occlusion"


def poll(client: TestClient, url: str, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def expected(engine: Engine, size: int, stride: int) -> dict:  # type: ignore[type-arg]
    result = occlusion.occlude(engine, engine.prepare(load_sample("chelsea")), size=size, stride=stride)
    return occlusion.occlusion_response(result)  # type: ignore[no-any-return]


def assert_same_maps(got: dict, want: dict) -> None:  # type: ignore[type-arg]
    for key in ("target", "target_label", "size", "stride", "rows", "cols", "top_label"):
        assert got[key] == want[key], key
    np.testing.assert_allclose(got["probability"], want["probability"], atol=1e-5)
    assert got["feature"]["layer"] == want["feature"]["layer"]
    assert got["feature"]["channel"] == want["feature"]["channel"]
    np.testing.assert_allclose(got["feature"]["activity"], want["feature"]["activity"], rtol=1e-4, atol=1e-3)


def test_small_request_answers_directly(client: TestClient, engine: Engine) -> None:
    response = client.post(URL, json={"size": 112, "stride": 56})  # 3×3 = 9 positions
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["rows"], body["cols"], body["size"], body["stride"]) == (3, 3, 112, 56)
    assert np.asarray(body["probability"]).shape == (3, 3)
    assert np.asarray(body["top_label"]).shape == (3, 3)
    assert np.asarray(body["feature"]["activity"]).shape == (3, 3)
    assert body["target"] in range(281, 286)  # the unoccluded top-1 is a cat
    assert body["feature"]["layer"] == engine.last_conv_layer()
    assert_same_maps(body, expected(engine, 112, 56))


def test_target_and_layer_are_honoured(client: TestClient) -> None:
    response = client.post(URL, json={"size": 224, "stride": 1, "target": 7, "layer": "blocks.5.0.conv_pw"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["rows"], body["cols"], body["target"]) == (1, 1, 7)
    assert body["feature"]["layer"] == "blocks.5.0.conv_pw"


@pytest.mark.parametrize("method", ["dense", "incremental"])
def test_method_is_honoured_and_reported(client: TestClient, engine: Engine, method: str) -> None:
    response = client.post(URL, json={"size": 112, "stride": 56, "method": method})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == body["method_requested"] == method
    assert body["approximate"] is False and body["note"] is None
    assert body["positions_computed"] == 9 and body["seconds"] > 0
    if method == "incremental":
        assert 0 < body["planned_ratio"] < 1
    else:
        assert body["planned_ratio"] is None
    assert_same_maps(body, expected(engine, 112, 56))


def test_approximate_and_adaptive_are_labelled(client: TestClient, engine: Engine) -> None:
    response = client.post(URL, json={"size": 112, "stride": 56, "approx": 0.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "incremental" and body["approximate"] is True and body["approx"] == 0.5
    response = client.post(URL, json={"size": 128, "stride": 32, "adaptive": 0.25, "method": "dense"})
    assert response.status_code == 200, response.text  # 4×4 positions on the grid
    body = response.json()
    assert body["approximate"] is True and body["adaptive"] == 0.25 and body["approx"] is None
    assert body["method"] == "dense" and (body["rows"], body["cols"]) == (4, 4)
    assert body["positions_computed"] == 4 + 3  # the 2×2 coarse grid, then the rest of one cell


def test_large_request_runs_as_a_job(client: TestClient, engine: Engine) -> None:
    size, stride = 64, 32  # 6×6 = 36 positions > the threshold
    assert JOB_THRESHOLD < 36
    response = client.post(URL, json={"size": size, "stride": stride})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "occlusion" and job["total"] == 36
    assert job["state"] in ("queued", "running")
    assert response.headers["location"] == job["url"] == f"/api/jobs/{job['id']}"
    final = poll(client, job["url"])
    assert final["state"] == "succeeded", final
    assert final["progress"] == 1.0 and final["done"] == 36
    assert_same_maps(final["result"], expected(engine, size, stride))
    assert job["id"] in {row["id"] for row in client.get("/api/jobs").json()}


def test_a_job_can_be_cancelled(client: TestClient) -> None:
    response = client.post(URL)  # no body: the defaults, 32/16 -> 13×13 = 169 positions
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["total"] == 169
    cancelled = client.delete(job["url"])
    assert cancelled.status_code == 200
    assert cancelled.json()["cancel_requested"] is True
    final = poll(client, job["url"], timeout=60)
    assert final["state"] == "cancelled"
    assert final["result"] is None
    assert final["done"] < 169


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        ({"size": 225}, 422, "larger"),
        ({"size": 0}, 422, "size"),
        ({"stride": 0}, 422, "stride"),
        ({"size": 8, "stride": 1}, 422, "limit"),
        ({"target": 1000}, 422, "target"),
        ({"target": -3}, 422, "target"),
        ({"layer": "no.such.layer"}, 404, "no.such.layer"),
        ({"size": "big"}, 422, "size"),
        ({"unknown": 1}, 422, "unknown"),
        ({"method": "fast"}, 422, "method"),
        ({"approx": 0}, 422, "approx"),
        ({"approx": 1.5}, 422, "approx"),
        ({"approx": "half"}, 422, "approx"),
        ({"approx": 0.5, "method": "dense"}, 422, "approx needs the incremental method"),
        ({"adaptive": 0}, 422, "adaptive"),
        ({"adaptive": 2}, 422, "adaptive"),
        ({"approx": True}, 422, "boolean"),
        ({"adaptive": True}, 422, "boolean"),
    ],
)
def test_bad_requests(client: TestClient, body: dict, status: int, word: str) -> None:  # type: ignore[type-arg]
    response = client.post(URL, json=body)
    assert response.status_code == status, response.text
    assert word in response.json()["detail"]
