"""The `convscope` command line (docs/architecture.md): real subprocesses, real model, real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.samples import get_sample

CLI = [sys.executable, "-m", "convscope"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def project(sample: str, layer: str, channel: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`convscope project` of a sample photo with the default model."""
    image = str(get_sample(sample).path)
    return run(
        "project", "--model", "efficientnet_lite0", "--image", image, "--layer", layer, "--channel", str(channel), *args
    )


def test_predict_json_on_a_real_photo() -> None:
    result = run(
        "predict", "--model", "efficientnet_lite0", "--image", str(get_sample("coffee").path), "--top", "3", "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [set(row) for row in rows] == [{"index", "label", "probability"}] * 3
    assert rows[0]["label"] == "espresso"
    assert rows[0]["probability"] >= rows[1]["probability"] >= rows[2]["probability"]


def test_project_writes_png_and_raw(tmp_path: Path) -> None:
    out, raw = tmp_path / "p.png", tmp_path / "p.npz"
    result = project("chelsea", "blocks.2", 7, "--mode", "guided", "--out", str(out), "--raw", str(raw))
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.size == (224, 224) and image.mode == "RGB"
    data = np.load(raw)
    assert data["input"].shape == (1, 3, 224, 224) and data["input"].dtype == np.float32
    assert data["projection"].shape == (3, 224, 224) and data["projection"].dtype == np.float32
    y, x = (int(v) for v in data["seed_position"])
    assert 0 <= y < 28 and 0 <= x < 28
    # the raw input is exactly what the engine feeds the model, and re-projecting it agrees
    from convscope.engine import Engine
    from convscope.images import PreparedImage
    from convscope.models import load_model

    engine = Engine(load_model(), device_name="cpu")
    tensor = torch.from_numpy(data["input"])
    prepared = PreparedImage("raw", Image.new("RGB", (224, 224)), tensor)
    again = engine.project(prepared, "blocks.2", 7, mode="guided")
    assert again.seed_position == (y, x)
    assert float(data["seed_value"]) == pytest.approx(again.seed_value, rel=1e-5)
    assert np.allclose(again.projection.numpy(), data["projection"], rtol=1e-4, atol=1e-6)
    # and the PNG is the paper's per-image contrast normalisation of that projection
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255


def test_project_whole_map_seed(tmp_path: Path) -> None:
    raw = tmp_path / "m.npz"
    result = project("rocket", "conv_stem", 3, "--select", "map", "--out", str(tmp_path / "m.png"), "--raw", str(raw))
    assert result.returncode == 0, result.stderr
    assert list(np.load(raw)["seed_position"]) == [-1, -1]


def test_layers_json() -> None:
    result = run("layers", "--model", "zfnet", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["features.conv1"]["channels"] == 96 and rows["features.conv1"]["height"] == 110
    assert rows["features.pool2"]["receptive_field"]["size"] == 43
    assert rows["features.pool5"]["receptive_field"]["stride"] == 32
    assert rows["features.conv1"]["has_switches"] is False and rows["features.conv2"]["has_switches"] is True
    assert rows["features.conv3"]["rules"] == {"covered": ["local_response_norm", "relu"], "uncovered": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("predict --model nope --image {photo}", "unknown model 'nope'"),
        ("predict --model zfnet --image {missing}", "image file not found"),
        ("predict --model zfnet --image {text}", "not an image"),
        ("predict --model zfnet --weights {missing} --image {photo}", "weights file not found"),
        ("project --model zfnet --image {photo} --layer nope --channel 0 --out {png}", "no layer 'nope'"),
        (
            "project --model zfnet --image {photo} --layer features.conv1 --channel 96 --out {png}",
            "channel 96 is out of range",
        ),
        ("layers --model no_such_pkg_zz:f", "cannot import module"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: str, message: str) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a picture")
    values = {
        "photo": str(get_sample("coffee").path),
        "missing": str(tmp_path / "missing.jpg"),
        "text": str(text),
        "png": str(tmp_path / "o.png"),
    }
    result = run(*(arg.format(**values) for arg in args.split()))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_argument_errors_exit_2() -> None:
    args = ["project", "--model", "zfnet", "--image", "x.png", "--layer", "a", "--channel", "0", "--out", "o.png"]
    result = run(*args, "--mode", "magic")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_project_from_a_logit(tmp_path: Path) -> None:
    raw = tmp_path / "l.npz"
    result = project(
        "chelsea", "logits", 285, "--mode", "gradient", "--out", str(tmp_path / "l.png"), "--raw", str(raw)
    )
    assert result.returncode == 0, result.stderr
    data = np.load(raw)
    assert list(data["seed_position"]) == [0, 0]
    assert float(np.abs(data["projection"]).max()) > 0


def test_project_from_a_logit_out_of_range_exits_2(tmp_path: Path) -> None:
    result = project("chelsea", "logits", 1000, "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "0..999" in result.stderr and "Traceback" not in result.stderr


def test_layers_json_lists_linear_layers_and_logits() -> None:
    result = run("layers", "--model", "zfnet", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[-1]["name"] == "logits" and rows[-1]["units"] == 1000 and rows[-1]["kind"] == "Logits"
    linear = [row for row in rows if row["kind"] == "Linear"]
    assert linear and all(row["units"] == row["channels"] and row["height"] == 1 for row in linear)
    names = [row["name"] for row in rows]  # fc8 is the model's output: one row for the class scores, `logits`
    assert names.count("logits") == 1 and "classifier.fc8" not in names and "classifier.fc7" in names
