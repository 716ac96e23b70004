"""Every client mistake is a 4xx with a JSON detail that names the problem."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL

GETS = [
    ("/api/models/{model}/layers", {}),
    ("/api/models/{model}/images/{image}/predictions", {}),
    ("/api/models/{model}/images/{image}/activations", {"layer": "conv_stem"}),
    ("/api/models/{model}/images/{image}/activations/sprite.png", {"layer": "conv_stem"}),
    ("/api/models/{model}/images/{image}/projection", {"layer": "conv_stem", "channel": 0}),
]


@pytest.mark.parametrize(("path", "params"), GETS)
def test_unknown_model_is_404(client: TestClient, path: str, params: dict[str, Any]) -> None:
    response = client.get(path.format(model="resnet50", image="chelsea"), params=params)
    assert response.status_code == 404
    assert "resnet50" in response.json()["detail"]


@pytest.mark.parametrize(("path", "params"), GETS[1:])
def test_unknown_image_is_404(client: TestClient, path: str, params: dict[str, Any]) -> None:
    response = client.get(path.format(model=MODEL, image="no-such-photo"), params=params)
    assert response.status_code == 404
    assert "no-such-photo" in response.json()["detail"]


@pytest.mark.parametrize(("path", "params"), GETS[2:])
def test_unknown_layer_is_404(client: TestClient, path: str, params: dict[str, Any]) -> None:
    response = client.get(path.format(model=MODEL, image="chelsea"), params={**params, "layer": "fc9"})
    assert response.status_code == 404
    assert "fc9" in response.json()["detail"]


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_wrong_method_is_405_json(client: TestClient) -> None:
    response = client.delete("/api/samples")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_validation_errors_are_json_with_a_readable_detail(client: TestClient) -> None:
    response = client.get(f"/api/models/{MODEL}/images/chelsea/projection", params={"layer": "conv_stem"})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "query parameter 'channel': Field required"
    assert body["errors"][0]["loc"] == ["query", "channel"]


def test_malformed_json_body_is_422(client: TestClient) -> None:
    response = client.post(
        f"/api/models/{MODEL}/images/chelsea/occlusion",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


def test_every_endpoint_is_in_the_openapi_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    expected = {
        "/api/health": {"get"},
        "/api/models": {"get"},
        "/api/models/{model}/layers": {"get"},
        "/api/samples": {"get"},
        "/api/samples/{sample_id}/thumbnail.png": {"get"},
        "/api/images": {"post"},
        "/api/images/{image_id}": {"get"},
        "/api/models/{model}/images/{image_id}/predictions": {"get"},
        "/api/models/{model}/images/{image_id}/activations": {"get"},
        "/api/models/{model}/images/{image_id}/activations/sprite.png": {"get"},
        "/api/models/{model}/images/{image_id}/projection": {"get"},
        "/api/models/{model}/images/{image_id}/occlusion": {"post"},
        "/api/jobs": {"get"},
        "/api/jobs/{job_id}": {"get", "delete"},
    }
    documented = {path: set(operations) for path, operations in paths.items()}
    for path, operations in expected.items():
        assert operations <= documented.get(path, set()), path
    projection = paths["/api/models/{model}/images/{image_id}/projection"]["get"]
    # image/png, and the same bytes as application/octet-stream for client generators (api/openapi.py)
    assert set(projection["responses"]["200"]["content"]) == {"image/png", "application/octet-stream"}
    assert {"X-Seed-Value", "X-Seed-Y", "X-Seed-X", "ETag"} <= set(projection["responses"]["200"]["headers"])
    assert projection["responses"]["404"]["content"]["application/json"]
    activations = paths["/api/models/{model}/images/{image_id}/activations"]["get"]
    schema = activations["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/ActivationsResponse")
    assert client.get("/docs").status_code == 200
