"""Issue 19 in process (the real app on a tiny model): clients isolated, Host and token checks,
per-client job caps in a fair order, bad input as 4xx, interrupted scans that resume."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import png, tiny_loader, tiny_settings, wait_ready
from convscope.api import create_app
from convscope.engine import Engine
from convscope.scan import ScanStore, run_scan, samples_source
from convscope.tasks import CallbackTask, Cancelled

MODEL = "tiny"
OCCLUDE = f"/api/models/{MODEL}/images/chelsea/occlusion"
JOB_BODY = {"size": 4, "stride": 4}  # 8×8 = 64 positions: a job (threshold 0)


def finish(client: TestClient, url: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {url} did not finish")


def other_client(client: TestClient) -> TestClient:
    """A second client of the same running app, with its own cookie jar (no lifespan of its own)."""
    return TestClient(client.app)


def _app(**overrides: object) -> TestClient:
    settings = tiny_settings(occlusion_job_threshold=0, **overrides)
    return TestClient(create_app(settings, loader=tiny_loader()))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _app(scan_dir=str(tmp_path_factory.mktemp("scans")), client_max_jobs=2, max_active_jobs=8) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def engine(client: TestClient) -> Engine:
    engine: Engine = client.app.state.convscope.pool.get(MODEL)  # type: ignore[attr-defined]
    return engine


# ---- defect 4: isolation -------------------------------------------------------------------------------
def test_a_client_gets_an_http_only_same_site_cookie_on_first_contact(client: TestClient) -> None:
    fresh = other_client(client)
    response = fresh.get("/api/models")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("convscope_client=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "set-cookie" not in fresh.get("/api/models").headers  # known from now on


def test_client_b_cannot_list_read_or_cancel_a_job_or_use_an_upload(client: TestClient) -> None:
    alice, bob = client, other_client(client)
    upload = alice.post("/api/images", files={"file": ("a.png", png(Image.new("RGB", (40, 30), "teal")))})
    assert upload.status_code == 201, upload.text
    image_id = upload.json()["id"]
    started = alice.post(f"/api/models/{MODEL}/images/{image_id}/occlusion", json=JOB_BODY)
    assert started.status_code == 202, started.text
    job = started.json()

    assert bob.get("/api/jobs").json() == []
    assert bob.get(job["url"]).status_code == 404
    assert bob.delete(job["url"]).status_code == 404
    assert bob.get(f"/api/images/{image_id}").status_code == 404
    assert bob.get(f"/api/models/{MODEL}/images/{image_id}/predictions").status_code == 404
    assert bob.post(f"/api/models/{MODEL}/images/{image_id}/occlusion", json=JOB_BODY).status_code == 404

    assert [j["id"] for j in alice.get("/api/jobs").json()] == [job["id"]]
    assert finish(alice, job["url"])["state"] == "succeeded"
    assert alice.get(f"/api/images/{image_id}").status_code == 200
    assert bob.get(f"/api/models/{MODEL}/images/chelsea/predictions").status_code == 200  # samples are shared


# ---- defect 5: per-client caps and a fair order ----------------------------------------------------------
def test_a_client_at_its_cap_gets_429_while_another_is_accepted_and_served_in_turn(
    client: TestClient, engine: Engine
) -> None:
    alice, bob = client, other_client(client)
    with engine.lock:  # the worker blocks on the model until the test lets go: nothing finishes early
        first = alice.post(OCCLUDE, json=JOB_BODY)
        second = alice.post(OCCLUDE, json=JOB_BODY)
        third = alice.post(OCCLUDE, json=JOB_BODY)
        bobs = bob.post(OCCLUDE, json=JOB_BODY)
        assert [first.status_code, second.status_code, third.status_code] == [202, 202, 429]
        assert "per client" in third.json()["detail"] and third.headers["retry-after"]
        assert bobs.status_code == 202, bobs.text
    jobs = [finish(alice, first.json()["url"]), finish(alice, second.json()["url"]), finish(bob, bobs.json()["url"])]
    assert all(job["state"] == "succeeded" for job in jobs)
    a1, a2, b1 = (job["started_at"] for job in jobs)
    assert a1 < b1 < a2, "round-robin: Bob's job runs before Alice's second"


# ---- defect 3: Host and token -------------------------------------------------------------------------------
def test_a_foreign_host_gets_400_and_loopback_names_are_served(client: TestClient) -> None:
    response = client.get("/api/models", headers={"host": "attacker.example"})
    assert response.status_code == 400 and "attacker.example" in response.json()["detail"]
    assert client.get("/", headers={"host": "attacker.example:8000"}).status_code == 400
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/models", headers={"host": host}).status_code == 200, host


def test_trusted_hosts_are_configurable() -> None:
    with _app(trusted_hosts="convscope.example.org") as client:
        assert client.get("/api/health", headers={"host": "convscope.example.org"}).status_code != 400
        assert client.get("/api/health", headers={"host": "localhost"}).status_code == 400


def test_with_a_token_every_api_request_needs_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    with _app(token_file=str(token_file)) as client:
        wait_ready(client)  # /api/health needs no token (the container's health check)
        refused = client.get("/api/models")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/api/models", headers={"authorization": "Bearer wrong-token"}).status_code == 401
        accepted = client.get("/api/models", headers={"authorization": "Bearer s3cret-token-value"})
        assert accepted.status_code == 200
        assert "convscope_auth=" in accepted.headers["set-cookie"] and "s3cret" not in accepted.headers["set-cookie"]
        # the cookie lets the dashboard's <img> requests through without the header
        assert client.get(f"/api/models/{MODEL}/images/chelsea/predictions").status_code == 200
        assert other_client(client).get(f"/api/models/{MODEL}/images/chelsea/predictions").status_code == 401


# ---- defect 10: methods, bad bodies ------------------------------------------------------------------------
def test_unsupported_methods_on_api_routes_get_405_with_the_routes_allow(client: TestClient) -> None:
    response = client.options("/api/models")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    response = client.patch("/api/jobs/abc")
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert response.json()["detail"]


def test_bad_bodies_are_refused(client: TestClient) -> None:
    assert client.post(OCCLUDE, json={"size": True}).status_code == 422
    assert client.post(OCCLUDE, json={"target": False}).status_code == 422
    assert client.post(OCCLUDE, json={"stride": 2.5}).status_code == 422
    assert client.post(OCCLUDE, json={"size": 4.0, "stride": 4.0}).status_code == 202  # JSON Schema: integers
    response = client.post(f"/api/models/{MODEL}/analyses/dead-channels", json={"images": []})
    assert response.status_code == 422, response.text


def test_elongated_images_are_refused_at_upload(client: TestClient) -> None:
    for size, status in (((40, 1_000_000), 422), ((4, 9_000_000), 422), ((1, 39_000_000), 422)):
        data = png(Image.new("L", size))
        response = client.post("/api/images", files={"file": ("long.png", data)})
        assert response.status_code == status, (size, response.text)
        assert "aspect ratio" in response.json()["detail"]
    assert client.post("/api/images", files={"file": ("ok.png", png(Image.new("RGB", (400, 40))))}).status_code == 201


# ---- defects 9 and 10: scans -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    photos = tmp_path_factory.mktemp("roots") / "photos"
    (photos / "small").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 36), (60 * i, 90, 200)).save(photos / "small" / f"p{i}.png")
    (photos / "many").mkdir()
    for i in range(60):
        Image.new("RGB", (40, 36), (4 * i, 90, 200)).save(photos / "many" / f"p{i:02}.png")
    return photos


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, roots: Path) -> Iterator[tuple[TestClient, Path]]:
    scan_dir = tmp_path_factory.mktemp("scan-dir")
    with _app(scan_dir=str(scan_dir), scan_roots=str(roots), scan_batch_size=2) as client:
        wait_ready(client)
        yield client, scan_dir


def test_scan_bad_input_is_4xx(scans: tuple[TestClient, Path]) -> None:
    client, scan_dir = scans
    base = f"/api/models/{MODEL}/scans"
    assert client.get(f"{base}/samples/images/{10**20}.png").status_code == 422
    assert client.get(f"{base}/samples/top", params={"layer": "relu1", "channel": 10**20}).status_code == 422
    long_name = client.post(base, json={"folder": "photos/" + "x" * 300})
    assert long_name.status_code == 422 and "too long" in long_name.json()["detail"].lower()
    first = client.post(base, json={"folder": "photos/small"})
    second = client.post(base, json={"folder": "photos/./small/"})
    assert first.status_code == second.status_code == 202
    assert finish(client, first.json()["url"])["state"] == "succeeded"
    finish(client, second.json()["url"])
    folder_scans = [scan for scan in client.get(base).json() if scan["source"] == "folder"]
    assert len(folder_scans) == 1 and folder_scans[0]["label"] == "photos/small"
    manifest = next(scan_dir.glob("*/*/manifest.json"))
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o644


def test_cancelling_a_scan_stops_it_at_the_next_batch(scans: tuple[TestClient, Path]) -> None:
    client, _ = scans
    engine: Engine = client.app.state.convscope.pool.get(MODEL)  # type: ignore[attr-defined]
    with engine.lock:  # the scan's first batch waits for the model until the cancel is in
        started = client.post(f"/api/models/{MODEL}/scans", json={"folder": "photos/many"})
        assert started.status_code == 202, started.text
        url = started.json()["url"]
        deadline = time.monotonic() + 30
        while client.get(url).json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.delete(url).json()["cancel_requested"]
    job = finish(client, url)
    assert job["state"] == "cancelled" and job["done"] <= 2 * 2 < job["total"] == 60, job
    (info,) = [s for s in client.get(f"/api/models/{MODEL}/scans").json() if s["label"] == "photos/many"]
    assert info["status"] == "interrupted" and info["resume_url"]  # checkpointed, resumable


def test_an_interrupted_scan_is_listed_as_such_and_resumes_to_the_same_result(
    scans: tuple[TestClient, Path], tmp_path: Path
) -> None:
    client, _ = scans
    engine: Engine = client.app.state.convscope.pool.get(MODEL)  # type: ignore[attr-defined]
    library = client.app.state.scans.library  # type: ignore[attr-defined]
    directory = library.store(MODEL, "samples-cut").directory
    calls = iter(range(10**6))
    with pytest.raises(Cancelled):  # as a shutdown leaves it: a checkpoint, no job
        run_scan(
            engine, samples_source(), directory, batch_size=2, task=CallbackTask(should_stop=lambda: next(calls) >= 1)
        )

    info = client.get(f"/api/models/{MODEL}/scans/samples-cut").json()
    assert info["status"] == "interrupted" and info["job"] is None
    assert info["resume_url"] == f"/api/models/{MODEL}/scans/samples-cut/resume"
    assert 0 < info["progress"]["images_done"] < info["images"]
    resumed = client.post(info["resume_url"])
    assert resumed.status_code == 202, resumed.text
    assert finish(client, resumed.json()["url"])["state"] == "succeeded"
    assert client.get(info["url"]).json()["status"] == "complete"

    run_scan(engine, samples_source(), tmp_path / "whole", batch_size=2)
    whole, cut = ScanStore(tmp_path / "whole"), ScanStore(directory)
    for layer in ("relu1", "relu2"):
        assert cut.all_top(layer) == whole.all_top(layer)


def test_a_read_only_scan_output_fails_before_the_first_batch_naming_the_path(tmp_path: Path) -> None:
    """The job's error names the path. (Root ignores permissions: sysfs stands in for a read-only disk.)"""
    scan_dir = tmp_path / "ro" if _permissions_apply() else Path("/sys/fs/convscope-scans")
    if _permissions_apply():
        scan_dir.mkdir()
        scan_dir.chmod(0o555)
    try:
        with _app(scan_dir=str(scan_dir)) as client:
            wait_ready(client)
            started = client.post(f"/api/models/{MODEL}/scans", json={"samples": True, "top": 3})
            job = finish(client, started.json()["url"])
            assert job["state"] == "failed" and job["done"] == 0, job
            assert job["error"]["status"] == 409 and str(scan_dir) in job["error"]["detail"], job
    finally:
        if _permissions_apply():
            scan_dir.chmod(0o755)


def _permissions_apply() -> bool:
    import os

    return os.geteuid() != 0


def test_memory_budget_refuses_a_scan_before_it_starts(tmp_path: Path) -> None:
    with _app(scan_dir=str(tmp_path), request_memory_mb=16, scan_batch_size=100_000) as client:
        wait_ready(client)
        response = client.post(f"/api/models/{MODEL}/scans", json={"samples": True, "layers": ["all"]})
        assert response.status_code == 422 and "CONVSCOPE_REQUEST_MEMORY_MB" in response.json()["detail"]
        assert client.get("/api/jobs").json() == []


def test_a_running_job_waits_at_its_next_batch_while_an_interactive_request_runs() -> None:
    from convscope.api.jobs import InteractiveGate, Job, JobManager

    gate = InteractiveGate(max_wait=30.0)
    manager = JobManager(workers=1, gate=gate)

    def work(job: Job) -> int:
        for step in range(1, 4):
            job.report(step, 3)  # a batch boundary
        return 3

    gate.enter()  # a click's request is being answered
    job = manager.submit("steps", work, owner="alice")
    deadline = time.monotonic() + 10
    while job.done == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert job.done == 1 and job.state == "running"  # held at the boundary after its first batch
    gate.leave()
    assert manager.wait(job.id, 10).state == "succeeded" and job.done == 3
    manager.shutdown()


def test_with_the_dashboard_mounted_api_methods_are_still_answered_by_the_api() -> None:
    frontend = Path(__file__).resolve().parents[2] / "frontend"
    with _app(frontend_dir=str(frontend)) as client:
        response = client.options("/api/models")
        assert response.status_code == 405 and response.headers["allow"] == "GET", response.headers
        assert response.headers["content-type"] == "application/json"
        response = client.put("/api/images")
        assert response.status_code == 405 and response.headers["allow"] == "POST"
        assert client.get("/").status_code == 200  # the dashboard itself


def test_serve_limits_malloc_arenas_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from convscope.api.server import limit_malloc_arenas

    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt(M_ARENA_MAX) is glibc's")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True  # glibc accepted M_ARENA_MAX = 2
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False  # an operator's own setting wins
