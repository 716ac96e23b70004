"""POST .../projections: many seeds in one response, equal to the single endpoint byte for byte."""

from __future__ import annotations

import base64
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL
from convscope.engine import Engine

URL = f"/api/models/{MODEL}/images/chelsea/projections"
SINGLE = f"/api/models/{MODEL}/images/chelsea/projection"
LAYER = "blocks.2"


def _png(entry: dict[str, object]) -> bytes:
    url = str(entry["png"])
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url.removeprefix(prefix))


def test_batch_equals_single_projections_byte_for_byte(client: TestClient, engine: Engine) -> None:
    seeds = [{"channel": 5}, {"channel": 6, "select": "map"}, {"channel": 7, "y": 3, "x": 4}, {"channel": 5}]
    with mock.patch.object(engine, "project_many", wraps=engine.project_many) as spy:
        response = client.post(URL, json={"layer": LAYER, "mode": "auto", "seeds": seeds})
    assert response.status_code == 200, response.text
    assert spy.call_count == 1  # one recorded forward pass, one call for every seed
    assert len(spy.call_args.args[2]) == 3  # the repeated seed is computed once
    entries = response.json()
    assert [(e["channel"], e["select"]) for e in entries] == [(5, "max"), (6, "map"), (7, "max"), (5, "max")]
    for seed, entry in zip(seeds, entries, strict=True):
        assert entry["mode"] == "guided"  # auto on a switchless layer
        single = client.get(SINGLE, params={"layer": LAYER, "mode": "auto", **seed})
        assert single.status_code == 200
        assert _png(entry) == single.content
        assert entry["etag"] == single.headers["ETag"]
        assert entry["seed_value"] == float(single.headers["X-Seed-Value"])
        assert (entry["seed_y"], entry["seed_x"]) == (int(single.headers["X-Seed-Y"]), int(single.headers["X-Seed-X"]))
    assert (entries[2]["seed_y"], entries[2]["seed_x"]) == (3, 4)
    assert (entries[1]["seed_y"], entries[1]["seed_x"]) == (-1, -1)


def test_a_batch_reuses_projections_the_single_endpoint_rendered(client: TestClient, engine: Engine) -> None:
    single = client.get(SINGLE, params={"layer": LAYER, "channel": 11, "mode": "deconvnet"})
    with mock.patch.object(engine, "project_many", wraps=engine.project_many) as spy:
        entries = client.post(URL, json={"layer": LAYER, "seeds": [{"channel": 11}, {"channel": 12}]}).json()
    assert [len(call.args[2]) for call in spy.call_args_list] == [1]  # only channel 12 computed
    assert _png(entries[0]) == single.content and entries[0]["mode"] == "deconvnet"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"layer": LAYER, "seeds": []}, 422, "seeds"),
        ({"layer": LAYER, "seeds": [{"channel": 0}] * 65}, 422, "limit of 64"),
        ({"layer": "nope", "seeds": [{"channel": 0}]}, 404, "nope"),
        ({"layer": LAYER, "seeds": [{"channel": 100000}]}, 422, "out of range"),
        ({"layer": LAYER, "seeds": [{"channel": 0, "y": 1}]}, 422, "both y and x"),
        ({"layer": LAYER, "seeds": [{"channel": 0, "y": 999, "x": 0}]}, 422, "outside"),
        ({"layer": LAYER, "mode": "nope", "seeds": [{"channel": 0}]}, 422, "mode"),
        ({"layer": LAYER, "seeds": [{"channel": True}]}, 422, "boolean"),
    ],
)
def test_bad_batches_are_clear_4xx(client: TestClient, body: dict[str, object], status: int, words: str) -> None:
    response = client.post(URL, json=body)
    assert response.status_code == status, response.text
    assert words in response.text
    assert isinstance(response.json()["detail"], str)


def test_unknown_image_is_404(client: TestClient) -> None:
    response = client.post(
        f"/api/models/{MODEL}/images/nope/projections", json={"layer": LAYER, "seeds": [{"channel": 0}]}
    )
    assert response.status_code == 404


def test_a_batch_counts_as_interactive_work() -> None:
    """Running jobs yield to a batch as to a single projection (api/priority.py)."""
    from convscope.api.priority import _interactive

    assert _interactive("POST", f"/api/models/{MODEL}/images/chelsea/projections")
    assert _interactive("GET", f"/api/models/{MODEL}/images/chelsea/projection")
    assert not _interactive("GET", f"/api/models/{MODEL}/images/chelsea/projections")
    assert not _interactive("POST", f"/api/models/{MODEL}/images/chelsea/occlusion")
