"""Class-level views over the API: `logits` as a projection start (issue 21)."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import MODEL

BASE = f"/api/models/{MODEL}"


def _projection(client: TestClient, unit: int, mode: str = "gradient") -> np.ndarray:
    response = client.get(
        f"{BASE}/images/chelsea/projection", params={"layer": "logits", "channel": unit, "mode": mode}
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Seed-Y"] == "0" and response.headers["X-Seed-X"] == "0"
    assert response.headers["X-Mode"] == mode
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_layers_list_logits_with_their_units_after_the_4d_layers(client: TestClient) -> None:
    rows = client.get(f"{BASE}/layers").json()
    assert rows[-1]["name"] == "logits" and rows[-1]["kind"] == "Logits"
    assert rows[-1]["units"] == rows[-1]["channels"] == 1000
    assert (rows[-1]["height"], rows[-1]["width"]) == (1, 1)
    assert all("units" not in row for row in rows if row["height"] > 1)


def test_the_class_scores_are_one_row_and_classifier_an_alias(client: TestClient) -> None:
    """EfficientNet-Lite0's `classifier` output is the logits: listed once, as `logits`; a URL
    naming `classifier` still gets the same projection."""
    names = [row["name"] for row in client.get(f"{BASE}/layers").json()]
    assert names.count("logits") == 1 and "classifier" not in names
    params = {"channel": 281, "mode": "gradient"}
    logits = client.get(f"{BASE}/images/chelsea/projection", params={"layer": "logits", **params})
    alias = client.get(f"{BASE}/images/chelsea/projection", params={"layer": "classifier", **params})
    assert logits.status_code == alias.status_code == 200, alias.text
    assert logits.content == alias.content


def test_projection_from_two_classes_differs(client: TestClient) -> None:
    tabby = _projection(client, 281)
    espresso = _projection(client, 967)
    assert tabby.shape == espresso.shape == (224, 224, 3)
    assert not np.array_equal(tabby, espresso)


def test_auto_mode_resolves_on_logits(client: TestClient) -> None:
    response = client.get(
        f"{BASE}/images/chelsea/projection", params={"layer": "logits", "channel": 281, "mode": "auto"}
    )
    assert response.status_code == 200
    assert response.headers["X-Mode"] == "guided"  # no max-pool below in EfficientNet-Lite0


def test_unit_out_of_range_is_422_with_the_range(client: TestClient) -> None:
    response = client.get(f"{BASE}/images/chelsea/projection", params={"layer": "logits", "channel": 1000})
    assert response.status_code == 422
    assert "0..999" in response.json()["detail"]


def test_logits_have_no_feature_maps(client: TestClient) -> None:
    response = client.get(f"{BASE}/images/chelsea/activations", params={"layer": "logits"})
    assert response.status_code == 404
    assert "detail" in response.json()
