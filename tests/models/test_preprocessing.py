"""Per-model preprocessing (timm's `pretrained_cfg` keys): a custom model's own config is used,
overrides from code, CLI flags and server settings win key by key, and the engine feeds the
model exactly the resized, cropped and normalised pixels the config asks for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.api.pool import default_loader
from convscope.api.settings import Settings
from convscope.cli import main
from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.models import load_model

CUSTOM = "fixtures.custom_models:configured_net"


def photo(width: int = 100, height: int = 80) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_a_custom_model_brings_its_own_preprocessing() -> None:
    loaded = load_model(CUSTOM)
    assert loaded.input_size == 64
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    assert loaded.crop_pct == 0.8
    assert loaded.preprocessing == {"input_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 0.8}
    plain = load_model("fixtures.custom_models:small_zfnet")  # no pretrained_cfg: the defaults
    assert (plain.input_size, plain.mean, plain.crop_pct) == (224, (0.485, 0.456, 0.406), 1.0)


def test_the_engine_resizes_crops_and_normalises_as_configured() -> None:
    engine = Engine(load_model(CUSTOM), device_name="cpu")
    image = photo()
    prepared = engine.prepare(image)
    # shorter side 80 -> round(64 / 0.8) = 80: no resize, then the central 64×64 of 100×80
    expected = np.asarray(image)[8:72, 18:82]
    np.testing.assert_array_equal(np.asarray(prepared.display), expected)
    tensor = torch.from_numpy(expected.astype(np.float32) / 255.0).permute(2, 0, 1)
    np.testing.assert_allclose(prepared.tensor[0].numpy(), ((tensor - 0.5) / 0.25).numpy(), atol=1e-6)


def test_overrides_win_key_by_key() -> None:
    loaded = load_model(CUSTOM, preprocessing={"std": [0.5, 0.5, 0.5], "crop_pct": 1.0})
    assert loaded.std == (0.5, 0.5, 0.5) and loaded.crop_pct == 1.0
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.input_size == 64  # kept from the model's cfg
    assert load_model(CUSTOM, input_size=96).input_size == 96


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"input_size": (3, 64, 32)}, "square"),
        ({"std": [0.2, 0.0, 0.2]}, "positive"),
        ({"mean": [0.5, 0.5]}, "three"),
        ({"resize": 2}, "unknown key"),
    ],
)
def test_bad_preprocessing_is_a_clear_error(values: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words) as caught:
        load_model(CUSTOM, preprocessing=values)
    assert caught.value.status_code == 422


def test_cli_flags_set_the_preprocessing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--model", CUSTOM, "--device", "cpu", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["layers", "--model", CUSTOM, "--device", "cpu", "--json", "--input-size", "96"]) == 0
    bigger = json.loads(capsys.readouterr().out)
    assert own[0]["name"] == bigger[0]["name"] and bigger[0]["height"] > own[0]["height"]
    assert main(["layers", "--model", CUSTOM, "--device", "cpu", "--mean", "1,2", "--json"]) == 2
    assert "mean must be three" in capsys.readouterr().err


def test_the_server_setting_applies_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_PREPROCESSING", json.dumps({CUSTOM: {"mean": [0.4, 0.4, 0.4], "crop_pct": 0.9}}))
    settings = Settings(models=[CUSTOM])
    loaded = default_loader(CUSTOM, settings)
    assert loaded.mean == (0.4, 0.4, 0.4) and loaded.crop_pct == 0.9
    assert loaded.std == (0.25, 0.25, 0.25) and loaded.input_size == 64
