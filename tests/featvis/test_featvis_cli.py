"""`convscope visualize`: its documented flags (docs/architecture.md), and one-line errors with exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.engine import Engine
from convscope.models import load_model
from featvis.conftest import ZF_SIZE

MODEL = "fixtures.nets:zf_shaped"


def test_visualize_writes_png_and_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, raw = tmp_path / "unit.png", tmp_path / "unit.npz"
    code = main(
        [
            "visualize",
            "--model",
            MODEL,
            "--size",
            str(ZF_SIZE),
            "--device",
            "cpu",
            "--layer",
            "features.conv2",
            "--channel",
            "3",
            "--steps",
            "8",
            "--seed",
            "2",
            "--out",
            str(out),
            "--raw",
            str(raw),
        ]
    )
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("features.conv2 channel 3 (channel): ") and line.endswith(str(out))
    with Image.open(out) as image:
        assert image.size == (ZF_SIZE, ZF_SIZE) and image.mode == "RGB"
    with np.load(raw) as data:
        assert data["input"].shape == (1, 3, ZF_SIZE, ZF_SIZE) and data["input"].dtype == np.float32
        tensor = torch.from_numpy(data["input"])
    # the raw input is what was optimised: the printed objective is the model's on it
    engine = Engine(load_model(MODEL, input_size=ZF_SIZE), device_name="cpu")
    _, outputs = engine.forward_batch(tensor, ["features.conv2"])
    value = float(line.split(": ")[1].split(" ")[0])
    assert float(outputs["features.conv2"][0, 3].mean()) == pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--layer", "features.conv2", "--channel", "16"],
            "channel 16 is out of range for layer 'features.conv2' (0..15)",
        ),
        (["--layer", "features.conv2", "--channel", "0", "--steps", "0"], "--steps must be between 1 and 4096 (got 0)"),
        (["--layer", "features.conv2", "--channel", "0", "--size", "2048"], "--size must be between 16 and 512"),
        (["--layer", "nope", "--channel", "0"], "has no layer 'nope'"),
        (["--channel", "0"], "objective 'channel' needs a layer"),
        (["--layer", "features.conv2", "--channel", "0", "--objective", "unit", "--position", "a,b"], "--position"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    size = [] if "--size" in extra else ["--size", str(ZF_SIZE)]
    code = main(["visualize", "--model", MODEL, "--device", "cpu", *size, *extra, "--out", str(tmp_path / "u.png")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convscope visualize: error: ")
    assert message in err
    assert not (tmp_path / "u.png").exists()
