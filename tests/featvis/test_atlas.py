"""`convscope atlas`: a self-contained, resumable folder of units."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from convscope.cli import main
from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.featvis.atlas import build_atlas
from convscope.tasks import CallbackTask
from featvis.conftest import ZF_SIZE
from fixtures.nets import make_engine, zf_shaped


def atlas_data(out: Path) -> dict[str, object]:
    text = (out / "data.js").read_text()
    match = re.fullmatch(r"window\.CONVSCOPE_ATLAS = (.*);\n", text, re.S)
    assert match, text[:200]
    data: dict[str, object] = json.loads(match.group(1))
    return data


def test_atlas_files_and_resume(zf_engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "site"
    seen: list[tuple[int, int]] = []
    result = build_atlas(
        zf_engine,
        out,
        layers=["features.conv2", "features.conv5"],
        channels="0-1,3",
        steps=3,
        task=CallbackTask(progress=lambda d, t: seen.append((d, t))),
    )
    assert (result.units, result.computed) == (6, 6)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    for name in ("index.html", "atlas.js", "atlas.css", "data.js", "atlas.json"):
        assert (out / name).is_file()
    data = atlas_data(out)
    layers = data["layers"]
    assert isinstance(layers, list) and [layer["name"] for layer in layers] == ["features.conv2", "features.conv5"]
    for layer in layers:
        assert [u["channel"] for u in layer["units"]] == [0, 1, 3]
        for unit in layer["units"]:
            assert (out / unit["vis"]).is_file()
            assert len(unit["top"]) == 9
            for row in unit["top"]:
                assert (out / row["projection"]).is_file() and (out / row["crop"]).is_file()
            values = [row["value"] for row in unit["top"]]
            assert values == sorted(values, reverse=True)
    # no absolute paths or URLs: the folder can be moved and published as it is
    html = (out / "index.html").read_text() + (out / "atlas.js").read_text() + (out / "data.js").read_text()
    assert "http://" not in html and "https://" not in html and str(tmp_path) not in html

    again = build_atlas(zf_engine, out, layers=["features.conv2", "features.conv5"], channels="0-1,3", steps=3)
    assert (again.units, again.computed) == (6, 0)
    (out / "units" / "features.conv5" / "1" / "unit.json").unlink()  # as if interrupted
    more = build_atlas(zf_engine, out, layers=["features.conv2", "features.conv5"], channels="0-3", steps=3)
    assert (more.units, more.computed) == (8, 3)  # conv5:1 again, and the new channel 2 of both layers


def test_atlas_refuses_a_folder_made_with_other_weights(zf_engine: Engine, tmp_path: Path) -> None:
    build_atlas(zf_engine, tmp_path, layers=["features.conv2"], channels="0", steps=2)
    other = make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE, name="zf-shaped")
    for parameter in other.model.module.parameters():
        parameter.data.mul_(1.5)
    with pytest.raises(InvalidRequestError, match="other settings \\(weights\\)"):
        build_atlas(other, tmp_path, layers=["features.conv2"], channels="0", steps=2)


def test_atlas_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-site"
    args = [
        "atlas",
        "--model",
        "fixtures.nets:zf_shaped",
        "--size",
        str(ZF_SIZE),
        "--device",
        "cpu",
        "--layers",
        "features.conv3",
        "--channels",
        "2,5",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "atlas of 2 units in 1 layers (2 computed now" in capsys.readouterr().out
    assert main([*args[:-4], "--channels", "99", "--steps", "2", "--out", str(out)]) == 2
    assert "channel 99 is out of range" in capsys.readouterr().err
    assert main([*args[:-2], "--scan", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "is not a scan" in capsys.readouterr().err


def test_atlas_from_a_given_scan_and_refusing_other_weights(zf_engine: Engine, tmp_path: Path) -> None:
    from convscope.errors import ConvscopeError
    from convscope.scan.scanner import run_scan, samples_source

    scan = tmp_path / "scan"
    run_scan(zf_engine, samples_source(), scan, layers=["features.conv3"], top=4)
    out = tmp_path / "site"
    build_atlas(zf_engine, out, layers=["features.conv3"], channels="1", scan=scan, steps=2)
    (layer,) = atlas_data(out)["layers"]  # type: ignore[misc]
    assert len(layer["units"][0]["top"]) == 4
    other = make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE, name="zf-shaped")
    for parameter in other.model.module.parameters():
        parameter.data.mul_(0.5)
    with pytest.raises(ConvscopeError, match="weights are not the ones scanned"):
        build_atlas(other, tmp_path / "other", layers=["features.conv3"], channels="1", scan=scan, steps=2)
