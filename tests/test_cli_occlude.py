"""`convscope occlude` (docs/architecture.md): writes exactly the occlusion response; bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from convscope.cli import main
from convscope.engine import Engine
from convscope.engine.occlusion import occlude, occlusion_response
from convscope.images import load_image_file
from convscope.models import load_model
from convscope.samples import get_sample

# A small real architecture (1.2M parameters) given as package.module:callable, with a weights file so
# the command line and the Python call below see the same random weights.
MODEL = "torchvision.models:squeezenet1_1"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "squeezenet.pt"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def photo() -> str:
    return str(get_sample("chelsea").path)


def test_writes_the_response(tmp_path: Path, weights: str, photo: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "occlusion.json"
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", photo, "--device", "cpu"]
    argv += ["--size", "100", "--stride", "60", "--target", "281", "--batch-size", "2", "--json", str(out)]
    assert main(argv) == 0
    written = json.loads(out.read_text())

    engine = Engine(load_model(MODEL, weights=weights), device_name="cpu")
    image = engine.prepare(load_image_file(photo))
    expected = occlusion_response(occlude(engine, image, size=100, stride=60, target=281))
    assert set(written) == set(expected)
    assert (written["rows"], written["cols"], written["size"], written["stride"]) == (3, 3, 100, 60)
    assert written["target"] == 281 and written["target_label"] == "tabby"
    for key in ("target", "target_label", "size", "stride", "rows", "cols", "top_label", "top_label_names"):
        assert written[key] == expected[key], key
    assert written["feature"]["layer"] == expected["feature"]["layer"] == engine.last_conv_layer()
    assert written["feature"]["channel"] == expected["feature"]["channel"]
    np.testing.assert_allclose(written["probability"], expected["probability"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(written["feature"]["activity"], expected["feature"]["activity"], rtol=1e-5)
    assert written["unoccluded"] == pytest.approx(expected["unoccluded"], rel=1e-5)
    assert written["method_requested"] == "auto" and written["method"] == expected["method"]
    assert written["planned_ratio"] == pytest.approx(expected["planned_ratio"])
    summary = capsys.readouterr().out
    assert "3×3 positions" in summary and str(out) in summary


def test_json_to_stdout(weights: str, photo: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", photo, "--device", "cpu"]
    assert main([*argv, "--size", "224", "--stride", "1", "--layer", "features.3.expand1x1", "--json", "-"]) == 0
    captured = capsys.readouterr()
    response = json.loads(captured.out)
    assert (response["rows"], response["cols"]) == (1, 1)  # one square over the whole input
    assert response["feature"]["layer"] == "features.3.expand1x1"
    assert "1×1 positions" in captured.err


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--size", "0"], "occluder size must be at least 1"),
        (["--size", "300"], "larger than the 224×224"),
        (["--stride", "0"], "stride must be at least 1"),
        (["--target", "1000"], "target class 1000 is out of range (0..999)"),
        (["--target", "-1"], "out of range"),
        (["--layer", "features.99"], "no layer 'features.99'"),
        (["--approx", "0"], "approx (the projective-field cap tau) must be a number in (0, 1]"),
        (["--approx", "1.5"], "must be a number in (0, 1]"),
        (["--approx", "0.5", "--method", "dense"], "approx needs the incremental method (or auto), not dense"),
        (["--adaptive", "0"], "adaptive (the share of coarse cells to drill into) must be a number in (0, 1]"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, weights: str, photo: str, options: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.json"
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", photo, "--device", "cpu"]
    assert main([*argv, *options, "--json", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope occlude: error: ")
    assert words in lines[0]
    assert not out.exists()


def test_method_and_approx(tmp_path: Path, weights: str, photo: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", photo, "--device", "cpu"]
    argv += ["--size", "64", "--stride", "80", "--target", "281"]
    maps = {}
    for method in ("dense", "incremental"):
        out = tmp_path / f"{method}.json"
        assert main([*argv, "--method", method, "--json", str(out)]) == 0
        maps[method] = json.loads(out.read_text())
        assert maps[method]["method"] == maps[method]["method_requested"] == method
        assert maps[method]["approximate"] is False
        assert f", {method}" in capsys.readouterr().out  # the summary names the method that ran
    assert maps["dense"]["planned_ratio"] is None and 0 < maps["incremental"]["planned_ratio"] < 1
    np.testing.assert_allclose(maps["incremental"]["probability"], maps["dense"]["probability"], atol=1e-5)
    assert maps["incremental"]["top_label"] == maps["dense"]["top_label"]

    out = tmp_path / "approx.json"
    assert main([*argv, "--approx", "0.5", "--json", str(out)]) == 0
    approx = json.loads(out.read_text())
    assert approx["approximate"] is True and approx["approx"] == 0.5 and approx["method"] == "incremental"
    assert "incremental (approximate)" in capsys.readouterr().out


def test_unknown_method_exits_2(weights: str, photo: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", photo, "--method", "fast", "--json", "-"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_missing_image_exits_2(tmp_path: Path, weights: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occlude", "--model", MODEL, "--weights", weights, "--image", str(tmp_path / "none.png")]
    assert main([*argv, "--json", str(tmp_path / "x.json")]) == 2
    assert "image file not found" in capsys.readouterr().err


def test_real_process_exit_status(tmp_path: Path, photo: str) -> None:
    """`python -m convscope occlude` as a user runs it: the exit status and the one-line message."""
    command = [sys.executable, "-m", "convscope", "occlude", "--model", "zfnet", "--image", photo]
    command += ["--size", "225", "--json", str(tmp_path / "x.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("convscope occlude: error: occluder size 225 is larger than the 224×224 model input")
