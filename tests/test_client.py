"""`convscope.client.Client` against the real server (`convscope serve`, default model, CPU):
every method, the errors it surfaces (the server's status and detail), and jobs waited on,
cancelled and scanned. One server for the module."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from api.helpers import MODEL, free_port, tiny_loader, tiny_settings
from api.test_server import served
from convscope.api import create_app
from convscope.client import ApiError, Client
from convscope.samples import get_sample
from convscope.tasks import CallbackTask, Cancelled

JOB_THRESHOLD = 16
MAX_UPLOAD = 1_000_000
LAYER = "blocks.4.0.conv_pw"
CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    roots = tmp_path_factory.mktemp("roots") / "photos"
    (roots / "empty").mkdir(parents=True)  # a scan root with a folder holding no image
    env = {
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_OCCLUSION_JOB_THRESHOLD": str(JOB_THRESHOLD),
        "CONVSCOPE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "CONVSCOPE_SCAN_DIR": str(tmp_path_factory.mktemp("client-scans")),
        "CONVSCOPE_SCAN_ROOTS": str(roots),
    }
    with served("--model", MODEL, env=env) as base:
        yield base


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[Client]:
    with Client(base_url) as client:
        yield client


def test_health_and_wait_ready(api: Client) -> None:
    api.wait_ready(timeout=5)
    health = api.health()
    assert health["status"] == "ok" and "detail" not in health


def test_models_layers_labels_samples(api: Client) -> None:
    models = api.models()
    assert [m["name"] for m in models] == [MODEL] and models[0]["default"]
    layers = api.layers()  # the default model, asked of the server
    assert layers == api.layers(MODEL)
    names = [layer["name"] for layer in layers]
    assert LAYER in names and "conv_head" in names
    assert all(layer["channels"] > 0 and layer["receptive_field"]["size"] > 0 for layer in layers)
    labels = api.labels()
    assert len(labels) == models[0]["num_classes"] == 1000
    assert labels[281] == {"index": 281, "label": "tabby"}
    samples = {s["id"]: s for s in api.samples()}
    assert samples["chelsea"]["width"] == 451 and samples["chelsea"]["height"] == 300


def test_upload_a_path_bytes_or_pil_image_gives_the_sample_predictions(api: Client) -> None:
    path = get_sample("chelsea").path
    by_path = api.upload(path)
    by_bytes = api.upload(Path(path).read_bytes())
    with open(path, "rb") as file:
        by_file = api.upload(file, filename="chelsea.png")
    with Image.open(path) as image:
        by_image = api.upload(image.convert("RGB"))
    uploads = (by_path, by_bytes, by_file, by_image)
    assert {upload["width"] for upload in uploads} == {451}
    assert len({upload["id"] for upload in uploads}) == 4

    expected = api.predictions("chelsea", top=3)
    assert len(expected) == 3 and expected[0]["probability"] >= expected[1]["probability"]
    assert expected[0]["index"] in CATS
    for upload in uploads:
        got = api.predictions(upload["id"], top=3)
        assert [p["index"] for p in got] == [p["index"] for p in expected]
        assert got[0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-5)
    model_input = api.image(by_path["id"])
    assert model_input.size == (224, 224) and model_input.mode == "RGB"
    assert np.array_equal(np.asarray(model_input), np.asarray(api.image("chelsea")))


def test_activations_and_their_maps(api: Client) -> None:
    info = api.activations("chelsea", LAYER)
    maps = api.activation_maps("chelsea", LAYER)
    assert maps.dtype == np.uint8 and maps.shape == (info["channels"], info["sprite"]["tile"], info["sprite"]["tile"])
    assert (info["height"], info["width"]) == maps.shape[1:]  # square maps: one pixel per unit
    peak = max(info["max"])
    for channel in range(info["channels"]):
        y, x = info["argmax"][channel]
        expected = round(max(info["max"][channel], 0.0) / peak * 255)
        assert abs(int(maps[channel].max()) - expected) <= 1, channel
        assert abs(int(maps[channel, y, x]) - expected) <= 1, channel


def test_batch_projections_equal_single_ones(api: Client) -> None:
    seeds = [{"channel": 3}, {"channel": 4, "select": "map"}, {"channel": 5, "y": 1, "x": 2}]
    batch = api.batch_projections("chelsea", LAYER, seeds, mode="auto")
    assert len(batch) == 3
    singles = [
        api.projection("chelsea", LAYER, 3, mode="auto"),
        api.projection("chelsea", LAYER, 4, mode="auto", select="map"),
        api.projection("chelsea", LAYER, 5, mode="auto", y=1, x=2),
    ]
    for got, want in zip(batch, singles, strict=True):
        assert got.mode == want.mode == "guided"
        assert (got.seed_y, got.seed_x, got.seed_value) == (want.seed_y, want.seed_x, want.seed_value)
        assert got.image.tobytes() == want.image.tobytes()
    with pytest.raises(ApiError) as error:
        api.batch_projections("chelsea", LAYER, [])
    assert error.value.status_code == 422


def test_projection_image_and_seed(api: Client) -> None:
    info = api.activations("chelsea", LAYER)
    channel = int(np.argmax(info["max"]))
    projection = api.projection("chelsea", LAYER, channel)
    assert projection.image.size == (224, 224) and projection.image.mode == "RGB"
    assert len(set(projection.image.getdata())) > 100, "a projection, not a blank image"
    assert projection.seed_position == tuple(info["argmax"][channel])
    assert projection.seed_value == pytest.approx(info["max"][channel], rel=1e-4)
    assert {"X-Seed-Value", "X-Seed-Y", "X-Seed-X"} <= set(projection.headers)
    assert projection.mode == "deconvnet"
    auto = api.projection("chelsea", LAYER, channel, mode="auto")
    assert auto.mode == "guided"  # EfficientNet has no max-pool switches: auto resolves to guided

    whole = api.projection("chelsea", LAYER, channel, mode="guided", select="map")
    assert whole.seed_position is None and whole.seed_value == pytest.approx(info["sum"][channel], rel=1e-3)
    unit = api.projection("chelsea", LAYER, channel, y=0, x=0)
    assert unit.seed_position == (0, 0)


def test_small_occlusion_answers_at_once(api: Client) -> None:
    result = api.occlusion("chelsea", size=112, stride=56)  # 3×3 positions: under the job threshold
    assert (result["rows"], result["cols"]) == (3, 3)
    assert result["target"] == api.predictions("chelsea", top=1)[0]["index"]
    assert all(0.0 <= p <= 1.0 for row in result["probability"] for p in row if p is not None)


def test_large_occlusion_waits_on_the_job_with_progress(api: Client) -> None:
    reports: list[tuple[int, int]] = []
    result = api.occlusion("chelsea", size=48, stride=32, task=CallbackTask(lambda d, t: reports.append((d, t))))
    assert (result["rows"], result["cols"]) == (6, 6)  # 36 positions > JOB_THRESHOLD: a job
    assert reports and reports[-1] == (36, 36)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert any(job["kind"] == "occlusion" and job["state"] == "succeeded" for job in api.jobs())


def test_occlusion_method_approx_and_adaptive_are_passed_through(api: Client) -> None:
    """The occlusion request's `method`, `approx` and `adaptive` reach the server, in the answer at
    once and through a job; exact methods agree; the approximations are labelled."""
    dense = api.occlusion("chelsea", size=112, stride=56, method="dense")
    incremental = api.occlusion("chelsea", size=112, stride=56, method="incremental")
    assert (dense["method"], dense["method_requested"]) == ("dense", "dense")
    assert (incremental["method"], incremental["method_requested"]) == ("incremental", "incremental")
    assert dense["approximate"] is incremental["approximate"] is False
    probabilities = [
        (a, b)
        for ra, rb in zip(dense["probability"], incremental["probability"], strict=True)
        for a, b in zip(ra, rb, strict=True)
    ]
    assert all(a is not None and b is not None and abs(a - b) <= 1e-5 for a, b in probabilities)
    capped = api.occlusion("chelsea", size=112, stride=56, approx=0.5)
    assert capped["approximate"] is True and capped["approx"] == 0.5 and capped["method"] == "incremental"
    drilled = api.occlusion("chelsea", size=128, stride=32, method="dense", adaptive=0.25)
    assert drilled["approximate"] is True and drilled["adaptive"] == 0.25 and drilled["approx"] is None
    as_job = api.occlusion("chelsea", size=48, stride=32, method="dense")  # 36 positions: a job
    assert as_job["method_requested"] == as_job["method"] == "dense" and (as_job["rows"], as_job["cols"]) == (6, 6)


@pytest.mark.parametrize(
    ("arguments", "word"),
    [
        ({"method": "fast"}, "method"),
        ({"approx": 1.5}, "approx"),
        ({"approx": 0.5, "method": "dense"}, "approx needs the incremental method"),
        ({"adaptive": 0}, "adaptive"),
        ({"approx": True}, "boolean"),
    ],
)
def test_bad_occlusion_method_or_approximation_is_422_with_the_servers_detail(
    api: Client, arguments: dict[str, object], word: str
) -> None:
    with pytest.raises(ApiError) as error:
        api.occlusion("chelsea", size=112, stride=56, **arguments)  # type: ignore[arg-type]
    assert error.value.status_code == 422 and word in error.value.detail


def test_a_task_that_asks_to_stop_cancels_the_job_on_the_server(api: Client) -> None:
    before = {job["id"] for job in api.jobs()}
    with pytest.raises(Cancelled):
        api.occlusion("coffee", size=16, stride=8, task=CallbackTask(should_stop=lambda: True))  # 729 positions
    (job,) = [job for job in api.jobs() if job["id"] not in before]
    assert job["state"] == "cancelled" and job["cancel_requested"]
    assert job["done"] < job["total"] == 729


def test_cancel_job_and_wait_without_check(api: Client) -> None:
    response = api.request("POST", f"/api/models/{MODEL}/images/astronaut/occlusion", json={"size": 16, "stride": 8})
    assert response.status_code == 202
    job = api.cancel_job(response.json()["id"])
    assert job["cancel_requested"]
    finished = api.wait_job(job, check=False, timeout=60)
    assert finished["state"] == "cancelled" and finished["result"] is None
    with pytest.raises(Cancelled):
        api.wait_job(job["id"])
    assert api.job(job["id"])["state"] == "cancelled"


def test_scan_the_samples_then_read_a_channels_top_k(api: Client) -> None:
    job = api.start_scan(samples=True, layers=["conv_head"], top=3)
    assert job["kind"] == "scan"
    done = api.wait_job(job, timeout=300)
    assert done["state"] == "succeeded" and done["result"] is not None
    scan_id = done["result"]["scan"]
    assert scan_id in {scan["id"] for scan in api.scans()}
    scan = api.scan(scan_id)
    assert scan["status"] == "complete" and [layer["name"] for layer in scan["layers"]] == ["conv_head"]
    top = api.top(scan_id, "conv_head", 5)
    values = [entry["value"] for entry in top["entries"]]
    assert len(values) == 3 and values == sorted(values, reverse=True)  # type: ignore[type-var]
    assert top["mode"] == "deconvnet"
    assert api.top(scan_id, "conv_head", 5, mode="auto")["mode"] == "guided"  # no max-pool switches below
    crop = api.top_image(scan_id, "conv_head", 5, rank=0, kind="crop")
    projection = api.top_image(scan_id, "conv_head", 5, rank=0)
    guided = api.top_image(scan_id, "conv_head", 5, rank=0, mode="guided")
    assert crop.size == projection.size == guided.size and crop.mode == projection.mode == "RGB"
    assert np.asarray(guided).tolist() != np.asarray(projection).tolist()
    resumed = api.wait_job(api.resume_scan(scan_id), timeout=300)
    assert resumed["state"] == "succeeded" and api.scan(scan_id)["status"] == "complete"


def test_scan_roots(api: Client) -> None:
    roots = api.scan_roots()
    assert [root["name"] for root in roots] == ["photos"]
    assert "photos/empty" in roots[0]["folders"]


def test_a_failed_job_raises_its_status_and_detail(api: Client) -> None:
    job = api.start_scan(folder="photos/empty", layers=["conv_head"], top=3)
    with pytest.raises(ApiError) as error:
        api.wait_job(job, timeout=120)
    assert error.value.status_code == 422 and "no images" in error.value.detail
    assert error.value.job is not None and error.value.job["state"] == "failed"
    assert api.wait_job(job["id"], check=False)["state"] == "failed"
    with pytest.raises(ApiError) as refused:
        api.start_scan(folder="elsewhere/cats")
    assert refused.value.status_code == 403 and "elsewhere" in refused.value.detail


# ---- errors: the server's status and detail --------------------------------------------------------------
def test_unknown_model_image_and_job_are_404_with_the_servers_detail(api: Client) -> None:
    with pytest.raises(ApiError) as error:
        api.predictions("chelsea", model="no_such_model")
    assert error.value.status_code == 404 and "no_such_model" in error.value.detail
    with pytest.raises(ApiError) as error:
        api.projection("no-such-image", LAYER, 0)
    assert error.value.status_code == 404 and "no-such-image" in error.value.detail
    with pytest.raises(ApiError) as error:
        api.activations("chelsea", "no.such.layer")
    assert error.value.status_code == 404 and "no.such.layer" in error.value.detail
    with pytest.raises(ApiError) as error:
        api.job("no-such-job")
    assert error.value.status_code == 404 and "no-such-job" in error.value.detail
    assert str(error.value).startswith("404: ")


def test_oversize_upload_is_413_and_not_an_image_is_415(api: Client) -> None:
    with pytest.raises(ApiError) as error:
        api.upload(b"\0" * (MAX_UPLOAD + 1))
    assert error.value.status_code == 413 and f"{MAX_UPLOAD:,}" in error.value.detail
    with pytest.raises(ApiError) as error:
        api.upload(b"this is not an image")
    assert error.value.status_code == 415 and error.value.detail


def test_invalid_parameters_are_422_with_the_servers_detail_and_errors(api: Client) -> None:
    with pytest.raises(ApiError) as error:
        api.predictions("chelsea", top=0)
    assert error.value.status_code == 422 and "query parameter 'top'" in error.value.detail
    assert error.value.errors and error.value.errors[0]["loc"] == ["query", "top"]
    channels = api.activations("chelsea", LAYER)["channels"]
    with pytest.raises(ApiError) as error:
        api.projection("chelsea", LAYER, channels)
    assert error.value.status_code == 422 and str(channels) in error.value.detail
    with pytest.raises(ApiError) as error:
        api.occlusion("chelsea", size=300, stride=16)
    assert error.value.status_code == 422 and "300" in error.value.detail
    assert error.value.response is not None and error.value.response.status_code == 422


@contextmanager
def tiny_server(**settings: object) -> Iterator[str]:
    """The real app and uvicorn, in a thread, over the tiny model (fast to start)."""
    app = create_app(tiny_settings(**settings), loader=tiny_loader())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{port}") as probe:
            probe.wait_ready(timeout=60, poll=0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_token_goes_out_as_a_bearer_header_and_the_client_cookie_is_kept() -> None:
    token = "s3cret-token-for-tests"
    with tiny_server(token=token) as url:
        with Client(url) as anonymous, pytest.raises(ApiError) as refused:
            anonymous.models()
        assert refused.value.status_code == 401 and "token" in refused.value.detail

        with Client(url, token=token) as api, Client(url, token=token) as other:
            assert [m["name"] for m in api.models()] == ["tiny"]
            upload = api.upload(Image.new("RGB", (40, 40), (200, 30, 30)))
            assert len(api.predictions(upload["id"], top=3)) == 3  # the client cookie names its owner
            assert api.http.cookies.get("convscope_client")
            with pytest.raises(ApiError) as hidden:
                other.predictions(upload["id"])  # another client (another cookie) cannot see it
            assert hidden.value.status_code == 404


def test_non_json_error_bodies_still_surface() -> None:
    """What a proxy in front of the server might answer (the server itself always sends JSON)."""
    with (
        Client(
            "http://convscope.test", transport=httpx.MockTransport(lambda _: httpx.Response(502, text="bad gateway"))
        ) as api,
        pytest.raises(ApiError) as error,
    ):
        api.models()
    assert error.value.status_code == 502 and error.value.detail == "bad gateway"


# ---- the examples in docs/api.md run as written ----------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _example(heading: str, language: str, base_url: str) -> str:
    text = DOCS.read_text()
    section = text[text.index(heading) :]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("```", start)].replace("http://127.0.0.1:8000", base_url)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    with Image.open(get_sample("chelsea").path) as image:
        image.convert("RGB").save(tmp_path / "cat.jpg", quality=90)
    return tmp_path


def test_the_python_example_runs(base_url: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(_example("### Python: `convscope.client`", "python", base_url), str(DOCS), "exec"), {})
    output = capsys.readouterr().out
    assert "'label': 'tabby'" in output and "occlusion 36/36" in output  # 36 > JOB_THRESHOLD: a job
    assert "422 " in output and "6 6" in output
    with Image.open(in_tmp / "projection.png") as image:
        assert image.size == (224, 224)


def test_the_curl_example_runs(base_url: str, in_tmp: Path) -> None:
    script = "set -euo pipefail\n" + _example("### curl", "sh", base_url)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '"label":"tabby"' in result.stdout and "x-seed-value" in result.stdout.lower()
    assert '"rows":3,"cols":3' in result.stdout and '"kind":"occlusion"' in result.stdout
    assert '"cancel_requested":true' in result.stdout
    with Image.open(in_tmp / "projection.png") as image:
        assert image.size == (224, 224)


def test_the_javascript_example_runs(base_url: str, in_tmp: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH to run the JavaScript example")
    (in_tmp / "example.mjs").write_text(_example("### JavaScript", "js", base_url))
    result = subprocess.run([node, "example.mjs"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "label: 'tabby'" in result.stdout and "6 6 " in result.stdout
