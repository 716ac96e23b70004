"""Health, start-up states, models and layers."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from api.helpers import MODEL, tiny_loader, tiny_model, tiny_settings, wait_ready
from convscope.api import create_app
from convscope.api.schemas import LayerResponse
from convscope.engine import Engine
from convscope.errors import WeightsUnavailableError


def test_health_is_ok_once_loaded(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and set(body) == {"status", "engines"}
    (engine,) = body["engines"]
    assert engine["model"] == MODEL and engine["device"] == "cpu"
    assert 0 <= engine["bytes"] <= engine["limit_bytes"] == 1024 * 1024 * 1024


def test_health_reports_the_bytes_recorded_passes_hold(client: TestClient) -> None:
    # an image's first click records the pass up to its layer only; a click on a deeper layer records
    # the whole pass, whatever other tests did with the image before
    for layer in ("blocks.1", "conv_head"):
        response = client.get(f"/api/models/{MODEL}/images/coffee/projection", params={"layer": layer, "channel": 2})
        assert response.status_code == 200
    (engine,) = client.get("/api/health").json()["engines"]
    assert engine["records"] >= 1
    assert engine["bytes"] >= 50 * 1024 * 1024  # an EfficientNet-Lite0 record at 224 px holds ~100 MiB


def test_health_is_503_while_loading_then_200() -> None:
    release = threading.Event()
    app = create_app(tiny_settings(), loader=tiny_loader(gate=lambda: release.wait(30)))
    with TestClient(app) as client:
        loading = client.get("/api/health")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        assert loading.headers["retry-after"]
        # Model endpoints say 503 too, with a JSON detail; model-free ones work already.
        models = client.get("/api/models")
        assert models.status_code == 503
        assert "loading" in models.json()["detail"]
        assert client.get("/api/samples").status_code == 200
        release.set()
        wait_ready(client)
        assert client.get("/api/health").json()["status"] == "ok"
        assert [m["name"] for m in client.get("/api/models").json()] == ["tiny"]


def test_health_reports_a_failed_load() -> None:
    def failing(name: str, settings: object) -> object:
        raise WeightsUnavailableError("no weights for tiny here")

    app = create_app(tiny_settings(), loader=failing)  # type: ignore[arg-type]
    state = app.state.convscope
    with TestClient(app) as client:
        assert state.pool.wait(30)
        response = client.get("/api/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "failed"
        assert "no weights for tiny here" in body["detail"]
        layers = client.get("/api/models/tiny/layers")
        assert layers.status_code == 503
        assert "no weights for tiny here" in layers.json()["detail"]


def test_models_lists_the_loaded_model(client: TestClient) -> None:
    response = client.get("/api/models")
    assert response.status_code == 200
    (model,) = response.json()
    assert model["name"] == MODEL
    assert model["default"] is True
    assert model["num_classes"] == 1000
    assert model["pretrained"] is True
    assert model["input_size"] == 224
    assert model["preprocessing"] == {
        "input_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": 1.0,
    }


def test_layers_are_the_engine_layers_in_module_order(client: TestClient, engine: Engine) -> None:
    response = client.get(f"/api/models/{MODEL}/layers")
    assert response.status_code == 200
    rows = response.json()
    # the 4-D layers in module order, then the 2-D projection starts (linear layers, logits)
    assert rows == [
        LayerResponse.from_info(info).model_dump(mode="json", exclude_none=True)
        for info in [*engine.layers(), *engine.unit_layers()]
    ]
    # `classifier` is the model's output: one row for the class scores, `logits`
    assert rows[-1]["name"] == "logits" and "classifier" not in [row["name"] for row in rows]
    # EfficientNet-Lite0's stem: 32 channels, stride 2, 3×3 field; the head: 1280 channels at 7×7.
    first = rows[0]
    assert (first["name"], first["channels"], first["height"], first["width"]) == ("conv_stem", 32, 112, 112)
    assert first["receptive_field"] == {"size": 3.0, "stride": 2.0, "offset": 0.0}
    head = next(row for row in rows if row["name"] == "conv_head")
    assert (head["channels"], head["height"], head["width"]) == (1280, 7, 7)
    assert head["receptive_field"]["stride"] == 32.0
    order = [name for name, _ in engine.model.module.named_modules()]
    positions = [order.index(row["name"]) for row in rows[:-1]]  # all but `logits`, the model output
    assert positions == sorted(positions), "layers come in module order"
    assert all(set(row["receptive_field"]) == {"size", "stride", "offset"} for row in rows)


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.get("/api/models/alexnet/layers")
    assert response.status_code == 404
    assert "alexnet" in response.json()["detail"]


def test_a_model_name_never_imports_code(client: TestClient) -> None:
    for name in ("os:getcwd", "convscope.api.server:run_server", "subprocess:run"):
        response = client.get(f"/api/models/{name}/layers")
        assert response.status_code == 404, name
        assert "unknown model" in response.json()["detail"]


def test_start_up_waits_only_for_the_default_model_and_others_load_on_first_use() -> None:
    """Health is OK once the default model is loaded; another listed model loads behind it, and an
    offered one (torchvision weights available) is listed as not loaded until a request needs it."""
    import time

    from convscope.api.pool import ModelPool

    release = threading.Event()
    loads: list[str] = []

    def loader(name: str, settings: object) -> object:
        if name != "tiny":
            release.wait(30)
        loads.append(name)
        return tiny_model(name)

    pool = ModelPool(tiny_settings(models=["tiny", "second"]), loader, offer=lambda settings: ["offered"])  # type: ignore[arg-type]
    thread = threading.Thread(target=pool.load)
    thread.start()
    assert pool.wait(30) and pool.state == "ready"
    assert loads == ["tiny"]  # "second" is still on its way: start-up did not wait for it
    release.set()
    thread.join(30)
    deadline = time.monotonic() + 30
    while "offered" not in pool.available() and time.monotonic() < deadline:
        time.sleep(0.02)
    rows = {row.name: row.loaded for row in pool.summaries()}
    assert rows == {"tiny": True, "second": True, "offered": False}
    assert pool.get("offered").name == "offered" and loads == ["tiny", "second", "offered"]
    assert {row.name: row.loaded for row in pool.summaries()}["offered"] is True
    pool.get("offered")
    assert loads.count("offered") == 1


def test_models_says_which_are_loaded(client: TestClient) -> None:
    assert [m["loaded"] for m in client.get("/api/models").json()] == [True]
