"""The read-only studies endpoints over a folder of real finished studies (issue 9)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.api import Settings, create_app
from studies.helpers import ABLATION_VARIANTS, EVOLUTION_COLS, EVOLUTION_ROWS, make_studies


def _app(studies_dir: Path | None) -> TestClient:
    settings = Settings.model_validate(
        {
            "models": ["fixtures.custom_models:small_zfnet"],  # a tiny model: these tests need none
            "device": "cpu",
            "frontend_dir": None,
            "scan_on_startup": False,
            "studies_dir": studies_dir,
        }
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_studies(tmp_path_factory.mktemp("api-studies") / "studies")


@pytest.fixture(scope="module")
def client(folder: Path) -> Iterator[TestClient]:
    with _app(folder) as test_client:
        yield test_client


def test_list_has_the_finished_studies_only(client: TestClient, folder: Path) -> None:
    body = client.get("/api/studies").json()
    assert body["studies_dir"] == folder.name  # the name only: no absolute server path (issue 19)
    assert str(folder) not in client.get("/api/studies").text
    by_id = {study["id"]: study for study in body["studies"]}
    # the ablation's own runs/ are part of it; unfinished, foreign and broken JSON files are skipped
    assert set(by_id) == {"digits-run~log", "digits-evolution", "faces-ablation~ablation", "digits-probe"}
    assert {s["kind"] for s in body["studies"]} == {"training", "evolution", "ablation", "probe"}
    assert by_id["digits-evolution"]["image_url"] == "/api/studies/digits-evolution/image.png"
    assert by_id["faces-ablation~ablation"]["table_url"] == "/api/studies/faces-ablation~ablation/table.md"
    assert by_id["digits-run~log"]["image_url"] is None and by_id["digits-run~log"]["table_url"] is None
    modified = [s["modified"] for s in body["studies"]]
    assert modified == sorted(modified, reverse=True)
    only = client.get("/api/studies", params={"kind": "probe"}).json()["studies"]
    assert [s["id"] for s in only] == ["digits-probe"]
    assert client.get("/api/studies", params={"kind": "nonsense"}).status_code == 422


def test_ablation_table(client: TestClient, folder: Path) -> None:
    doc = client.get("/api/studies/faces-ablation~ablation").json()
    on_disk = json.loads((folder / "faces-ablation" / "ablation.json").read_text())
    assert doc["variants"] == on_disk["variants"]
    assert [v["variant"] for v in doc["variants"]] == ABLATION_VARIANTS.split(";")
    for row in doc["variants"]:
        assert 0.0 <= row["val_top1"]["mean"] <= 1.0 and row["parameters"] > 0
    table = client.get(doc["table_url"])
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/markdown")
    assert table.text == (folder / "faces-ablation" / "ablation.md").read_text()


def test_probe_table(client: TestClient) -> None:
    doc = client.get("/api/studies/digits-probe").json()
    assert doc["study"] == "probe" and doc["model"].startswith("zfnet-small") and doc["input_size"] == 64
    assert [row["short"] for row in doc["layers"]] == [*(f"relu{i}" for i in range(1, 8))]
    assert "Linear SVM acc %" in client.get(doc["table_url"]).text


def test_evolution_document_and_montage(client: TestClient) -> None:
    doc = client.get("/api/studies/digits-evolution").json()
    assert doc["shape"] == {"rows": EVOLUTION_ROWS, "cols": EVOLUTION_COLS} and doc["epochs"] == [0.5, 1.0, 2.0]
    response = client.get(doc["image_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    montage = Image.open(io.BytesIO(response.content))
    assert montage.size == (doc["geometry"]["width"], doc["geometry"]["height"])
    assert client.get(doc["image_url"], headers={"If-None-Match": response.headers["etag"]}).status_code == 304


def test_training_log(client: TestClient) -> None:
    doc = client.get("/api/studies/digits-run~log").json()
    assert [row["epoch"] for row in doc["epochs"]] == [1, 2] and doc["config"]["arch"] == "zfnet-small"


def test_unknown_and_missing(client: TestClient, folder: Path) -> None:
    for path in (
        "/api/studies/nope",
        "/api/studies/unfinished",
        "/api/studies/faces-ablation~runs~full~seed-0~log",  # a part of the ablation, not listed
        "/api/studies/digits-probe/image.png",
        "/api/studies/digits-evolution/table.md",
        "/api/studies/..~..~etc~passwd",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "detail" in response.json()


def test_a_study_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    root = tmp_path / "studies"
    root.mkdir()
    doc = {"study": "evolution", "version": 1, "finished": True, "title": "sneaky", "image": "../secret.png"}
    (root / "sneaky.json").write_text(json.dumps(doc))
    os.symlink(secret, root / "link.png")
    (root / "linked.json").write_text(json.dumps({**doc, "image": "link.png"}))
    with _app(root) as client:
        studies = {s["id"]: s for s in client.get("/api/studies").json()["studies"]}
        assert studies["sneaky"]["image_url"] is None and studies["linked"]["image_url"] is None
        assert client.get("/api/studies/sneaky/image.png").status_code == 404
        assert client.get("/api/studies/linked/image.png").status_code == 404


def test_no_studies_folder(tmp_path: Path) -> None:
    with _app(tmp_path / "missing") as client:
        assert client.get("/api/studies").json()["studies"] == []
    with _app(None) as client:
        assert client.get("/api/studies").json() == {"studies_dir": None, "studies": []}


def test_a_fresh_install_runs_the_digits_study_as_a_job(tmp_path: Path) -> None:
    """POST /api/studies/digits trains zfnet-small on the digits for a few epochs as a job with
    per-epoch progress; the finished run is then listed. No studies folder: 403."""
    import time

    with _app(tmp_path / "studies") as client:
        assert client.get("/api/studies").json()["studies"] == []
        started = client.post("/api/studies/digits", json={"epochs": 1})
        assert started.status_code == 202 and started.json()["total"] == 1
        url = started.headers["location"]
        deadline = time.monotonic() + 300
        job = started.json()
        while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = client.get(url).json()
        assert job["state"] == "succeeded", job
        assert (job["done"], job["total"]) == (1, 1) and job["result"]["run"] == "digits-run"
        kinds = [study["kind"] for study in client.get("/api/studies").json()["studies"]]
        assert "training" in kinds
        assert client.post("/api/studies/digits", json={"epochs": 0}).status_code == 422
    with _app(None) as client:
        refused = client.post("/api/studies/digits", json={})
        assert refused.status_code == 403 and "CONVSCOPE_STUDIES_DIR" in refused.json()["detail"]
