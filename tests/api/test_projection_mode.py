"""`mode=auto` over HTTP and the layer metadata it resolves from (docs/deconvnet.md, docs/api.md)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.helpers import MODEL
from convscope.engine import Engine


def test_layers_carry_switches_and_rule_coverage(client: TestClient, engine: Engine) -> None:
    rows = client.get(f"/api/models/{MODEL}/layers").json()
    assert all(row["has_switches"] is False for row in rows)  # EfficientNet-Lite0 has no max-pool
    block = next(row for row in rows if row["name"] == "blocks.2")
    assert block["rules"] == {"covered": ["relu6"], "uncovered": []}
    assert rows[0]["rules"] == {"covered": [], "uncovered": []}  # conv_stem: nothing below it


def test_auto_projection_is_guided_on_a_switchless_layer_and_says_so(client: TestClient) -> None:
    url = f"/api/models/{MODEL}/images/chelsea/projection"
    params = {"layer": "blocks.2", "channel": 3}
    auto = client.get(url, params={**params, "mode": "auto"})
    guided = client.get(url, params={**params, "mode": "guided"})
    deconvnet = client.get(url, params={**params, "mode": "deconvnet"})
    assert auto.status_code == guided.status_code == deconvnet.status_code == 200
    assert auto.headers["X-Mode"] == "guided"
    assert guided.headers["X-Mode"] == "guided"
    assert deconvnet.headers["X-Mode"] == "deconvnet"
    assert auto.content == guided.content
    assert auto.content != deconvnet.content


def test_unknown_mode_is_422(client: TestClient) -> None:
    response = client.get(
        f"/api/models/{MODEL}/images/chelsea/projection", params={"layer": "blocks.2", "channel": 0, "mode": "nope"}
    )
    assert response.status_code == 422
    assert "detail" in response.json()
