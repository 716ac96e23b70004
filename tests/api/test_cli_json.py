"""`convscope ... --json` prints what the API answers for the same request: both are made from
the same pydantic models (convscope.api.schemas), so they cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL, run_job
from convscope.cli import main
from convscope.samples import load_sample


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-json") / "chelsea.png"
    load_sample("chelsea").save(path)  # lossless: the CLI sees the sample's pixels
    return path


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main([*args, "--model", MODEL, "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def without_seconds(body: dict[str, Any]) -> dict[str, Any]:
    """The body less its `seconds` (a timing, the one value that may differ), checked to be a number."""
    rest = dict(body)
    assert isinstance(rest.pop("seconds"), float)
    return rest


def test_layers(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    api = client.get(f"/api/models/{MODEL}/layers").json()
    assert cli_json(capsys, "layers", "--json") == api
    assert api[0]["receptive_field"].keys() == {"size", "stride", "offset"}


def test_predictions(client: TestClient, capsys: pytest.CaptureFixture[str], photo: Path) -> None:
    api = client.get(f"/api/models/{MODEL}/images/chelsea/predictions", params={"top": 5}).json()
    printed = cli_json(capsys, "predict", "--image", str(photo), "--top", "5", "--json")
    assert printed == api  # same weights, same pixels, same thread count: the same floats


def test_occlusion(client: TestClient, capsys: pytest.CaptureFixture[str], photo: Path) -> None:
    response = client.post(f"/api/models/{MODEL}/images/chelsea/occlusion", json={"size": 64, "stride": 64})
    assert response.status_code == 200, response.text  # 9 positions: answered at once
    api = response.json()
    printed = cli_json(capsys, "occlude", "--image", str(photo), "--size", "64", "--stride", "64", "--json", "-")
    assert printed.keys() == api.keys()
    assert isinstance(printed.pop("seconds"), float) and isinstance(api.pop("seconds"), float)  # a timing
    assert printed == api


# the analyses: the API runs them as jobs with batches of 32 (its occlusion_batch_size), the CLI is told the same
def test_invariance(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"images": ["chelsea"], "transform": "rotation", "start": 0, "stop": 20, "steps": 3}
    api = run_job(client, f"/api/models/{MODEL}/analyses/invariance", body)
    printed = cli_json(capsys, "invariance", "--image", "chelsea", "--transform", "rotation", "--start", "0",
                       "--stop", "20", "--steps", "3", "--batch-size", "32", "--json", "-")  # fmt: skip
    assert without_seconds(printed) == without_seconds(api)
    assert printed["summary"]["n"] == 1 and len(printed["images"][0]["probability"]) == 3


def test_correspondence(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    demo = client.get(f"/api/models/{MODEL}/analyses/correspondence/demo").json()
    body = {"images": demo["images"], "parts": demo["parts"], "size": demo["size"], "draws": 2, "seed": 3}
    api = run_job(client, f"/api/models/{MODEL}/analyses/correspondence", body)
    printed = cli_json(capsys, "correspond", "--parts", "demo", "--draws", "2", "--seed", "3",
                       "--batch-size", "32", "--json", "-")  # fmt: skip
    assert without_seconds(printed) == without_seconds(api)
    assert [row["occlusion"] for row in printed["table"]] == [*demo["parts"], "random"]


def test_filters_and_dead_channels(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    filters = client.get(f"/api/models/{MODEL}/filters").json()
    dead = run_job(client, f"/api/models/{MODEL}/analyses/dead-channels", {"images": ["chelsea", "coffee"]})
    printed = cli_json(capsys, "filters", "--images", "chelsea", "coffee", "--json", "-")
    assert printed["model"] == MODEL and printed["mosaic"] is None
    assert printed["frequency"] == filters["frequency"]
    assert without_seconds(printed["dead"]) == without_seconds(dead)
    assert dead["images"] == ["chelsea", "coffee"] and dead["conv_layers"] == len(dead["layers"]) > 0
