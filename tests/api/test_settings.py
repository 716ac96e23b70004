"""Settings from the environment, CLI flags on top; the dashboard mount; configurable limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import png, tiny_loader, tiny_settings, wait_ready
from convscope.api import create_app
from convscope.api.server import build_settings
from convscope.api.settings import Settings
from convscope.cli import build_parser, main


def test_environment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_MODELS", "efficientnet_lite0, zfnet ,efficientnet_lite0")
    monkeypatch.setenv("CONVSCOPE_MAX_UPLOAD_BYTES", "12345")
    monkeypatch.setenv("CONVSCOPE_DEVICE", "cpu")
    settings = Settings()
    assert settings.models == ["efficientnet_lite0", "zfnet"]
    assert settings.default_model == "efficientnet_lite0"
    assert settings.max_upload_bytes == 12345
    assert settings.device == "cpu"
    monkeypatch.setenv("CONVSCOPE_MODELS", '["zfnet"]')
    assert Settings().models == ["zfnet"]


def test_defaults_match_the_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONVSCOPE_MODELS", "CONVSCOPE_MAX_UPLOAD_BYTES", "CONVSCOPE_MAX_PIXELS", "CONVSCOPE_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.models == ["efficientnet_lite0"]
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.max_pixels == 40_000_000
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_cli_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_PORT", "9000")
    monkeypatch.setenv("CONVSCOPE_MODELS", "zfnet")
    args = build_parser().parse_args(
        ["serve", "--model", "efficientnet_lite0", "--model", "zfnet", "--host", "0.0.0.0", "--insecure"]
    )
    settings = build_settings(
        host=args.host, port=args.port, models=args.model, device=args.device, insecure=args.insecure
    )
    assert settings.models == ["efficientnet_lite0", "zfnet"]
    assert settings.host == "0.0.0.0" and settings.port == 9000  # no --port: the environment's
    assert build_settings(port=8123).port == 8123
    with pytest.raises(ValueError):
        build_settings(device="tpu")


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("CONVSCOPE_TF32", "maybe", "tf32 (CONVSCOPE_TF32) = 'maybe'"), ("CONVSCOPE_PORT", "-3", "port (CONVSCOPE_PORT)")],
)
def test_a_bad_environment_setting_is_a_one_line_cli_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope serve: error: invalid setting: ") and named in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_body_limit_is_configurable() -> None:
    app = create_app(tiny_settings(max_upload_bytes=2000), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        small = png(Image.new("RGB", (8, 8), (1, 2, 3)))
        assert client.post("/api/images", files={"file": ("a.png", small, "image/png")}).status_code == 201
        big = small + b"\0" * 3000
        response = client.post("/api/images", files={"file": ("a.png", big, "image/png")})
        assert response.status_code == 413
        assert "2,000" in response.json()["detail"]


def test_pixel_limit_is_configurable() -> None:
    app = create_app(tiny_settings(max_pixels=100), loader=tiny_loader())
    with TestClient(app) as client:
        response = client.post("/api/images", files={"file": ("a.png", png(Image.new("RGB", (11, 10))), "image/png")})
        assert response.status_code == 413
        assert "110" in response.json()["detail"]


def test_dashboard_directory_is_served_at_the_root(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>convscope dashboard</title>")
    (tmp_path / "app.js").write_text("export const x = 1;")
    app = create_app(tiny_settings(frontend_dir=str(tmp_path)), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        page = client.get("/")
        assert page.status_code == 200 and "convscope dashboard" in page.text
        assert "javascript" in client.get("/app.js").headers["content-type"]
        assert client.get("/api/health").json()["status"] == "ok"
        assert client.get("/api/nothing").status_code == 404


def test_the_app_starts_without_a_dashboard(tmp_path: Path) -> None:
    app = create_app(tiny_settings(frontend_dir=str(tmp_path / "missing")), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/").status_code == 404
        assert client.get("/api/models").status_code == 200
