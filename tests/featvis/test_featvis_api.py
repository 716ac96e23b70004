"""The feature-visualisation routes with the real app, its real job manager and the ZF-shaped
fixture net (the real ZFNet class, narrow, fixed random weights) loaded as `module:callable`."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import poll_job, ready_client
from convscope.api import Settings
from convscope.featvis.atlas import build_atlas
from featvis.conftest import ZF_SIZE

MODEL = "fixtures.nets:zf_shaped"
BASE = f"/api/models/{MODEL}/visualizations"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("featvis-api")
    return {"cache": root / "cache", "atlas": root / "atlas"}


@pytest.fixture(scope="module")
def client(dirs: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings.model_validate(
        {
            "models": [MODEL],
            "input_size": ZF_SIZE,
            "device": "cpu",
            "frontend_dir": None,
            "scan_on_startup": False,
            "featvis_dir": str(dirs["cache"]),
            "atlas_dir": str(dirs["atlas"]),
            "max_active_jobs": 4,
        }
    )
    with ready_client(settings) as test_client:
        yield test_client


def test_a_job_computes_the_units_then_the_cache_serves_them(client: TestClient) -> None:
    body = {"layer": "features.conv3", "channels": [1, 4], "steps": 6, "seed": 5}
    response = client.post(BASE, json=body)
    assert response.status_code == 202, response.text
    started = response.json()
    assert response.headers["location"] == started["url"] and started["kind"] == "visualization"
    job = poll_job(client, started["url"])
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"] == 6
    result = job["result"]
    assert (result["layer"], result["objective"], result["steps"], result["size"]) == (
        "features.conv3",
        "channel",
        6,
        ZF_SIZE,
    )
    assert [u["channel"] for u in result["units"]] == [1, 4]
    assert [u["cached"] for u in result["units"]] == [False, False]
    for unit in result["units"]:
        png = client.get(unit["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.content))
        assert image.size == (ZF_SIZE, ZF_SIZE)
        assert np.asarray(image).std() > 0  # not a blank image
        stored = client.get(BASE, params={"layer": "features.conv3", "channel": unit["channel"], "steps": 6, "seed": 5})
        assert stored.status_code == 200
        assert stored.json() == {"channel": unit["channel"], "cached": True, "value": unit["value"], "url": unit["url"]}
    # the same request again: every unit from the cache
    again = poll_job(client, client.post(BASE, json=body).json()["url"])
    assert [u["cached"] for u in again["result"]["units"]] == [True, True]
    assert [u["value"] for u in again["result"]["units"]] == [u["value"] for u in result["units"]]


def test_not_computed_yet(client: TestClient) -> None:
    params = {"layer": "features.conv3", "channel": 2, "steps": 7}
    assert client.get(BASE, params=params).json()["cached"] is False
    missing = client.get(f"{BASE}/image.png", params=params)
    assert missing.status_code == 404 and "not computed yet" in missing.json()["detail"]


def test_logit_and_unit_objectives(client: TestClient) -> None:
    job = poll_job(client, client.post(BASE, json={"objective": "logit", "channels": [2], "steps": 4}).json()["url"])
    assert job["state"] == "succeeded" and job["result"]["layer"] == "logits"
    body = {"layer": "features.conv2", "channels": [0], "objective": "unit", "steps": 4, "position": [3, 4]}
    job = poll_job(client, client.post(BASE, json=body).json()["url"])
    assert job["result"]["position"] == [3, 4]
    assert "y=3" in job["result"]["units"][0]["url"] and client.get(job["result"]["units"][0]["url"]).status_code == 200


def test_cancel_a_running_job(client: TestClient) -> None:
    started = client.post(BASE, json={"layer": "features.conv3", "channels": [7], "steps": 2000}).json()
    deadline = time.monotonic() + 60
    while client.get(started["url"]).json()["done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.delete(started["url"]).status_code == 200
    job = poll_job(client, started["url"])
    assert job["state"] == "cancelled" and job["done"] < 2000


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"layer": "features.conv3", "channels": [24]},
            422,
            "channel 24 is out of range for layer 'features.conv3' (0..23)",
        ),
        ({"layer": "features.conv3", "channels": [0], "steps": 0}, 422, "body field 'steps'"),
        ({"layer": "features.conv3", "channels": [0], "size": 4096}, 422, "body field 'size'"),
        ({"layer": "features.conv3", "channels": []}, 422, "body field 'channels'"),
        ({"layer": "features.conv3", "channels": list(range(20)), "steps": 2000}, 422, "unit-steps"),
        ({"layer": "features.conv3", "channels": [0], "objective": "neuron"}, 422, "body field 'objective'"),
        ({"channels": [0]}, 422, "needs a layer"),
        ({"layer": "nope", "channels": [0]}, 404, "has no layer 'nope'"),
    ],
)
def test_bad_requests(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    response = client.post(BASE, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_bad_lookups(client: TestClient) -> None:
    assert client.get(f"{BASE}/image.png", params={"layer": "features.conv3", "channel": 99}).status_code == 422
    assert client.get(f"{BASE}/image.png", params={"layer": "features.conv3", "channel": 0, "y": 1}).status_code == 422
    assert client.get("/api/models/nope/visualizations", params={"channel": 0}).status_code == 404


def test_atlas_folder_is_served_read_only(client: TestClient, dirs: dict[str, Path]) -> None:
    assert client.get("/api/atlas").json() == {"available": False, "url": None, "model": None}
    engine = client.app.state.convscope.pool.get(MODEL)  # type: ignore[attr-defined]
    build_atlas(engine, dirs["atlas"], layers=["features.conv2"], channels="0", steps=2)
    info = client.get("/api/atlas").json()
    assert info == {"available": True, "url": "/api/atlas/index.html", "model": MODEL}
    page = client.get(info["url"])
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get("/api/atlas/data.js").status_code == 200
    assert client.get("/api/atlas/units/features.conv2/0/vis.png").headers["content-type"] == "image/png"
    for bad in ("_scan/manifest.json", "..%2F..%2Fetc%2Fpasswd", "nope.html"):
        assert client.get(f"/api/atlas/{bad}").status_code == 404, bad
    assert client.post("/api/atlas/index.html").status_code == 405
