"""`convscope ... --json` prints what the API answers for the same request: both are made from
the same pydantic models (convscope.api.schemas), so they cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL
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
