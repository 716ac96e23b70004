"""GET /api/models/{model}/labels: the class names, by index (the occlusion panel's target list)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.helpers import tiny_loader, tiny_settings, wait_ready
from convscope.api import create_app
from convscope.models.labels import numbered_labels


def test_labels_list_every_class_by_index() -> None:
    app = create_app(tiny_settings(), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        response = client.get("/api/models/tiny/labels")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == [{"index": i, "label": label} for i, label in enumerate(numbered_labels(10))]
        models = client.get("/api/models").json()
        assert len(body) == models[0]["num_classes"]


def test_labels_of_an_unknown_model_is_404() -> None:
    app = create_app(tiny_settings(), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        response = client.get("/api/models/nope/labels")
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]
