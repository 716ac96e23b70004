"""The scan routes on the bundled scan (the sample photos, scanned at start-up) and on folders
under the configured roots; refusals for folders outside them."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import app_engine, poll_job, ready_client, tiny_loader, tiny_settings
from convscope.engine import Engine
from convscope.scan import ScanStore, folder_source, run_scan, samples_source
from convscope.scan.render import crop_box

MODEL = "tiny"
BASE = f"/api/models/{MODEL}/scans"


poll = poll_job


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("roots")
    photos = base / "photos"
    for folder, count in (("set1", 5), ("set1/deeper", 2)):
        (photos / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (40 + 7 * i, 36), (40 * i, 255 - 30 * i, 90)).save(photos / folder / f"p{i}.png")
    (base / "outside").mkdir()
    Image.new("RGB", (40, 40), "red").save(base / "outside" / "secret.png")
    os.symlink(base / "outside", photos / "escape")
    return photos


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, roots: Path) -> Iterator[TestClient]:
    settings = tiny_settings(
        scan_dir=str(tmp_path_factory.mktemp("scans")), scan_roots=str(roots), scan_on_startup=True
    )
    with ready_client(settings, loader=tiny_loader()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def engine(client: TestClient) -> Engine:
    return app_engine(client, MODEL)


@pytest.fixture(scope="module")
def bundled(client: TestClient) -> dict[str, Any]:
    """The sample scan the server started on its own, once finished."""
    jobs = [job for job in client.get("/api/jobs").json() if job["kind"] == "scan"]
    assert len(jobs) == 1
    job = poll(client, jobs[0]["url"])
    assert job["state"] == "succeeded", job
    assert job["result"]["scan"] == "samples" and job["result"]["images"] == len(samples_source().paths)
    return job


def test_the_server_scans_the_samples_at_start_up(client: TestClient, bundled: dict[str, Any]) -> None:
    scans = client.get(BASE).json()
    assert scans[0]["id"] == "samples"
    info = scans[0]
    assert info["status"] == "complete" and info["source"] == "samples" and info["weights_match"]
    assert info["images"] == len(samples_source().paths) and info["progress"]["images_done"] == info["images"]
    assert info["top"] == 9 and info["job"] is None
    assert [layer["name"] for layer in info["layers"]] == ["relu1", "relu2"]
    assert client.get(info["url"]).json() == info


def test_top_k_of_a_channel_equals_a_direct_scan(
    client: TestClient, engine: Engine, bundled: dict[str, Any], tmp_path: Path
) -> None:
    run_scan(engine, samples_source(), tmp_path / "direct", top=9, batch_size=16)
    direct = ScanStore(tmp_path / "direct")
    ids = samples_source().ids
    for layer, channel in (("relu1", 0), ("relu2", 5)):
        body = client.get(f"{BASE}/samples/top", params={"layer": layer, "channel": channel}).json()
        assert body["top"] == 9 and body["layer"] == layer and body["channel"] == channel
        want = direct.top(layer, channel)
        got = [(e["value"], e["image"]["index"], e["y"], e["x"]) for e in body["entries"]]
        assert got == [(w.value, w.image, w.y, w.x) for w in want]
        assert [e["image"]["id"] for e in body["entries"]] == [ids[w.image] for w in want]
        assert all(e["image"]["sample"] for e in body["entries"])
        spec = direct.manifest().layer(layer)
        assert [e["box"] for e in body["entries"]] == [list(crop_box(spec, w.y, w.x, 32)) for w in want]


def test_crop_projection_and_image_pngs(client: TestClient, bundled: dict[str, Any]) -> None:
    entry = client.get(f"{BASE}/samples/top", params={"layer": "relu2", "channel": 2}).json()["entries"][0]
    top, left, bottom, right = entry["box"]
    for url in (entry["crop_url"], entry["projection_url"]):
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert image_of(response.content).size == (right - left, bottom - top)
        again = client.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    picture = client.get(entry["image"]["url"])
    assert picture.status_code == 200 and image_of(picture.content).size == (32, 32)


def test_the_montage_is_rendered_by_a_job(client: TestClient, bundled: dict[str, Any]) -> None:
    params = {"layer": "relu2", "channels": "0-2", "tile": 16}
    first = client.get(f"{BASE}/samples/montage.png", params=params)
    assert first.status_code == 202, first.text  # not rendered yet: a job, never a long request
    job = first.json()
    assert first.headers["location"] == job["url"] and job["kind"] == "montage" and job["total"] == 3
    again = client.get(f"{BASE}/samples/montage.png", params=params)
    assert again.status_code == 200 or again.json()["id"] == job["id"]  # the same job, not a second one
    done = poll(client, job["url"])
    assert done["state"] == "succeeded" and done["done"] == 3, done
    assert done["result"]["url"] == f"{BASE}/samples/montage.png?layer=relu2&channels=0-2&tile=16"
    montage = client.get(done["result"]["url"])
    assert montage.status_code == 200 and image_of(montage.content).mode == "RGB"
    assert client.get(done["result"]["url"], headers={"If-None-Match": montage.headers["etag"]}).status_code == 304


def test_top_k_projections_follow_the_mode(client: TestClient, bundled: dict[str, Any]) -> None:
    """The top-k API, its PNGs and the montage take `mode`; `auto` is guided below the first
    max-pool (relu1) and the deconvnet above it (relu2), and the PNG says which in X-Mode."""
    pngs: dict[str, bytes] = {}
    for mode in ("deconvnet", "guided"):
        body = client.get(f"{BASE}/samples/top", params={"layer": "relu2", "channel": 1, "mode": mode}).json()
        assert body["mode"] == mode
        entry = body["entries"][0]
        assert f"mode={mode}" in entry["projection_url"]
        response = client.get(entry["projection_url"])
        assert response.status_code == 200 and response.headers["x-mode"] == mode
        pngs[mode] = response.content
    assert pngs["deconvnet"] != pngs["guided"]
    auto = {
        layer: client.get(f"{BASE}/samples/top", params={"layer": layer, "channel": 0, "mode": "auto"}).json()["mode"]
        for layer in ("relu1", "relu2")
    }
    assert auto == {"relu1": "guided", "relu2": "deconvnet"}
    params = {"layer": "relu2", "channels": "0-1", "tile": 16, "mode": "guided"}
    job = client.get(f"{BASE}/samples/montage.png", params=params).json()  # 202: rendered by a job
    assert poll(client, job["url"])["result"]["mode"] == "guided"
    montage = client.get(f"{BASE}/samples/montage.png", params=params)
    assert montage.status_code == 200 and montage.headers["x-mode"] == "guided"
    assert client.get(f"{BASE}/samples/top", params={"layer": "relu2", "channel": 0, "mode": "nope"}).status_code == 422


def test_the_top_k_projections_in_one_answer_are_the_pngs(client: TestClient, bundled: dict[str, Any]) -> None:
    """GET .../top/projections (the dashboard's Top 9 in one request): each rank's data URL holds the bytes of
    its projection_url, in the requested mode."""
    params = {"layer": "relu2", "channel": 3, "mode": "guided"}
    entries = client.get(f"{BASE}/samples/top", params=params).json()["entries"]
    answer = client.get(f"{BASE}/samples/top/projections", params=params)
    assert answer.status_code == 200, answer.text
    items = answer.json()
    assert [item["rank"] for item in items] == [entry["rank"] for entry in entries] and len(items) == 9
    for entry, item in zip(entries, items, strict=True):
        single = client.get(entry["projection_url"])
        assert item["mode"] == "guided" == single.headers["x-mode"]
        assert base64.b64decode(item["png"].removeprefix("data:image/png;base64,")) == single.content
        assert item["etag"] == single.headers["etag"]
    bad = client.get(f"{BASE}/samples/top/projections", params={**params, "channel": 999})
    assert bad.status_code == 422 and "out of range" in bad.json()["detail"]
    assert client.get(f"{BASE}/nope/top/projections", params=params).status_code == 404


def test_scan_roots_lists_the_folders_a_client_may_scan(client: TestClient, roots: Path) -> None:
    listed = client.get("/api/scan-roots").json()
    # the symlink out of the root is not offered (a scan of it is refused)
    assert listed == [{"name": roots.name, "folders": [roots.name, f"{roots.name}/set1"]}]


def test_bad_scan_requests(client: TestClient, bundled: dict[str, Any]) -> None:
    assert client.get(f"{BASE}/nope").status_code == 404
    assert client.get(f"{BASE}/.hidden").status_code == 404
    assert client.get("/api/models/other/scans").status_code == 404
    top = f"{BASE}/samples/top"
    assert client.get(top, params={"layer": "conv1", "channel": 0}).status_code == 404  # not scanned
    assert client.get(top, params={"layer": "relu1", "channel": 4}).status_code == 422  # 4 channels
    assert client.get(f"{BASE}/samples/top/9/crop.png", params={"layer": "relu1", "channel": 0}).status_code == 404
    assert client.get(f"{BASE}/samples/top/0/other.png", params={"layer": "relu1", "channel": 0}).status_code == 422
    assert client.get(f"{BASE}/samples/images/99.png").status_code == 404
    bad_montage = client.get(f"{BASE}/samples/montage.png", params={"layer": "relu1", "channels": "0-99"})
    assert bad_montage.status_code == 422


def test_scanning_a_folder_under_a_root(client: TestClient, engine: Engine, bundled: dict[str, Any]) -> None:
    response = client.post(BASE, json={"folder": "photos/set1", "layers": ["relu2"], "top": 3})
    assert response.status_code == 202 and response.headers["location"] == response.json()["url"]
    job = poll(client, response.json()["url"])
    assert job["state"] == "succeeded", job
    assert job["result"]["images"] == 7 and job["result"]["status"] == "complete"
    scan_id = job["result"]["scan"]
    info = client.get(f"{BASE}/{scan_id}").json()
    assert info["label"] == "photos/set1" and info["source"] == "folder" and info["top"] == 3
    assert scan_id in [scan["id"] for scan in client.get(BASE).json()]
    body = client.get(f"{BASE}/{scan_id}/top", params={"layer": "relu2", "channel": 0}).json()
    assert {e["image"]["id"] for e in body["entries"]} <= {f"p{i}.png" for i in range(5)} | {
        f"deeper/p{i}.png" for i in range(2)
    }
    assert not any(e["image"]["sample"] for e in body["entries"])
    assert client.get(body["entries"][0]["image"]["url"]).status_code == 200

    direct = folder_source(Path(client.app.state.scans.library.roots["photos"]) / "set1")  # type: ignore[attr-defined]
    assert len(direct.paths) == 7
    again = poll(
        client, client.post(BASE, json={"folder": "photos/set1/", "layers": ["relu2"], "top": 3}).json()["url"]
    )
    assert again["result"]["status"] == "unchanged" and again["result"]["scan"] == scan_id

    # the folder changed: the same request scans it anew
    Image.new("RGB", (50, 50), "blue").save(Path(str(direct.root)) / "p9.png")
    try:
        body = {"folder": "photos/set1", "layers": ["relu2"], "top": 3}
        changed = poll(client, client.post(BASE, json=body).json()["url"])
        assert changed["state"] == "succeeded", changed
        assert (changed["result"]["scan"], changed["result"]["images"]) == (scan_id, 8)
    finally:
        (Path(str(direct.root)) / "p9.png").unlink()


@pytest.mark.parametrize(
    ("folder", "status"),
    [
        ("photos/../outside", 403),
        ("photos/escape", 403),  # a symbolic link to a folder outside the root
        ("/etc", 403),
        ("elsewhere/x", 403),  # not a root
        ("photos/missing", 404),
    ],
)
def test_folders_outside_the_roots_are_refused(client: TestClient, folder: str, status: int) -> None:
    response = client.post(BASE, json={"folder": folder})
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_scanning_the_samples_for_another_layer(client: TestClient, engine: Engine, bundled: dict[str, Any]) -> None:
    response = client.post(BASE, json={"samples": True, "layers": ["conv1"]})
    assert response.status_code == 202
    job = poll(client, response.json()["url"])
    assert job["state"] == "succeeded", job
    scan_id = job["result"]["scan"]
    assert scan_id.startswith("samples-") and job["result"]["layers"] == ["conv1"]
    ids = [scan["id"] for scan in client.get(BASE).json()]
    assert ids.index("samples") == 0 and scan_id in ids
    body = client.get(f"{BASE}/{scan_id}/top", params={"layer": "conv1", "channel": 3}).json()
    assert len(body["entries"]) == 9 and all(e["image"]["sample"] for e in body["entries"])


def test_bad_scan_bodies(client: TestClient) -> None:
    assert client.post(BASE, json={"folder": "photos/set1", "layers": ["nope"]}).status_code == 404
    assert client.post(BASE, json={"samples": True, "layers": ["nope"]}).status_code == 404
    assert client.post(BASE, json={"folder": "photos/set1", "samples": True}).status_code == 422
    assert client.post(BASE, json={}).status_code == 422
    assert client.post(BASE, json={"folder": "photos/set1", "top": 0}).status_code == 422
    assert client.post(BASE, json={"folder": "photos/set1", "path": "/"}).status_code == 422


def test_no_roots_and_no_start_up_scan(tmp_path: Path) -> None:
    settings = tiny_settings(scan_dir=str(tmp_path), scan_on_startup=False)
    with ready_client(settings, loader=tiny_loader()) as client:
        assert client.get(BASE).json() == []
        assert client.get("/api/jobs").json() == []
        response = client.post(BASE, json={"folder": "photos/set1"})
        assert response.status_code == 403 and "no scan roots" in response.json()["detail"]


def test_resuming_a_scan_made_with_another_decoder_fails_naming_both(
    client: TestClient, engine: Engine, roots: Path, bundled: dict[str, Any]
) -> None:
    import json

    from convscope.tasks import CallbackTask, Cancelled

    store = client.app.state.scans.library.store(MODEL, "made-on-a-gpu")  # type: ignore[attr-defined]
    with pytest.raises(Cancelled):  # an interrupted folder scan, as the server would have begun it
        run_scan(
            engine,
            folder_source(roots / "set1", confine=True),
            store.directory,
            layers=["relu2"],
            top=3,
            batch_size=2,
            checkpoint_images=2,
            extra={"label": "photos/set1", "folder": "photos/set1"},
            task=CallbackTask(should_stop=lambda: True),
        )
    manifest = json.loads(store.manifest_path.read_text())
    manifest["settings"]["decoder"] = "nvjpeg"  # begun with the GPU decoder (the CLI's --decoder nvjpeg)
    store.manifest_path.write_text(json.dumps(manifest))
    info = client.get(f"{BASE}/made-on-a-gpu").json()
    assert info["status"] == "interrupted" and info["resume_url"]
    job = poll(client, client.post(info["resume_url"]).json()["url"])
    assert job["state"] == "failed" and job["error"]["status"] == 409, job
    assert "the 'nvjpeg' decoder, not 'pil'" in job["error"]["detail"]
