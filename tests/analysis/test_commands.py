"""`convscope invariance`, `correspond` and `filters` on tiny nets (as package.module:callable models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from convscope.cli import main

CIRCULAR = "analysis.nets:circular_net"
SMALL = "analysis.nets:small_conv_net"


def test_invariance_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "inv.json", tmp_path / "inv.png"
    code = main(
        ["invariance", "--model", CIRCULAR, "--device", "cpu", "--image", "chelsea", "--image", "coffee",
         "--transform", "scale", "--start", "1", "--stop", "1.6", "--steps", "4", "--json", str(out), "--plot", str(plot)]
    )  # fmt: skip
    assert code == 0
    body = json.loads(out.read_text())
    assert body["transform"] == "scale" and body["values"] == pytest.approx([1.0, 1.2, 1.4, 1.6])
    assert [image["image"] for image in body["images"]] == ["chelsea", "coffee"]
    assert body["layers"] == {"low": "features.conv1", "high": "fc2:input"}
    assert body["images"][0]["distance"]["low"][0] == pytest.approx(0, abs=1e-6)
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 800
    assert "chelsea" in capsys.readouterr().out


def test_invariance_wrap_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["invariance", "--model", CIRCULAR, "--device", "cpu", "--images", "coffee", "--edge", "wrap",
                 "--steps", "3", "--low-layer", "pool", "--json", "-"])  # fmt: skip
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    for key in ("low", "high"):
        assert max(body["images"][0]["distance"][key]) < 1e-4 * body["images"][0]["norm"][key]


def test_correspond_demo_annotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cor.json"
    code = main(["correspond", "--model", SMALL, "--device", "cpu", "--parts", "demo", "--draws", "2",
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    body = json.loads(out.read_text())
    assert body["images"] == ["astronaut", "grace_hopper", "chelsea"]
    assert body["layers"] == ["conv3", "fc:input"]
    assert [row["occlusion"] for row in body["table"]] == ["left_eye", "right_eye", "nose", "random"]
    for row in body["table"]:
        for cell in row["delta"].values():
            assert 0 <= cell["mean"] <= 1
    printed = capsys.readouterr().out
    assert "random" in printed and "left_eye" in printed


def test_correspond_with_a_parts_file_keyed_by_file_stem(tmp_path: Path) -> None:
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        Image.new("RGB", (300, 224), colour).save(tmp_path / f"{name}.png")
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"parts": {"corner": {"red": [0, 0, 20, 20], "blue": [10, 10, 20, 20]}}}))
    out = tmp_path / "out.json"
    files = [str(tmp_path / "red.png"), str(tmp_path / "blue.png")]
    code = main(["correspond", "--model", SMALL, "--device", "cpu", "--images", *files, "--parts", str(parts),
                 "--layers", "conv2", "--draws", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    body = json.loads(out.read_text())
    assert body["images"] == ["red", "blue"] and body["layers"] == ["conv2"]
    assert body["parts"][0]["boxes"] == [[0, 0, 20, 20], [10, 10, 20, 20]]


def test_correspond_part_outside_the_image_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = tmp_path / "parts.json"
    parts.write_text(
        json.dumps({"images": ["chelsea", "coffee"], "parts": {"eye": [[0, 0, 10, 10], [220, 0, 10, 10]]}})
    )
    code = main(["correspond", "--model", SMALL, "--device", "cpu", "--parts", str(parts), "--json", "-"])
    assert code == 2
    err = capsys.readouterr().err
    assert "part 'eye' in image 'coffee'" in err and "leaves the 224×224 image" in err


def test_filters_mosaic_dead_channels_and_frequency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.effect_noise((240, 230), 40 + 20 * index).convert("RGB").save(folder / f"n{index}.png")
    (folder / "notes.txt").write_text("not an image")
    out, mosaic = tmp_path / "filters.json", tmp_path / "mosaic.png"
    code = main(["filters", "--model", SMALL, "--device", "cpu", "--images-dir", str(folder), "--mosaic", str(mosaic),
                 "--scale", "5", "--json", str(out)])  # fmt: skip
    assert code == 0
    body = json.loads(out.read_text())
    assert body["frequency"]["layer"] == "conv1" and body["frequency"]["channels"] == 4
    assert len(body["frequency"]["per_filter"]) == 4
    assert body["dead"]["images"] == ["n0.png", "n1.png", "n2.png"]
    assert [row["layer"] for row in body["dead"]["layers"]] == ["conv1", "conv2", "conv3"]
    with Image.open(mosaic) as image:
        assert image.size == (2 * (7 * 5 + 2) + 2, 2 * (7 * 5 + 2) + 2)
    assert "dead channels over 3 images" in capsys.readouterr().out


def test_filters_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filters", "--model", SMALL, "--device", "cpu", "--layer", "relu1", "--json", "-"]) == 2
    assert "not a Conv2d" in capsys.readouterr().err
    assert main(["filters", "--model", SMALL, "--images-dir", str(tmp_path / "none"), "--json", "-"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["invariance", "--model", SMALL, "--image", "no-such-thing", "--json", "-"]) == 2
    assert "neither an image file nor a sample id" in capsys.readouterr().err
