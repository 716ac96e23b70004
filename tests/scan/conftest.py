"""Shared fixtures for the scan tests: a folder of small synthetic images and a tiny engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from convscope.engine import Engine
from convscope.models import load_model

ROOT = Path(__file__).resolve().parents[2]
TINY = "fixtures.scan_models:tiny_scan_net"
SIZE = 48  # model input side for the tiny net


def make_images(folder: Path, count: int = 13, seed: int = 0) -> list[str]:
    """`count` images (png/jpg/webp/bmp, some in a subfolder) plus an unreadable .jpg and a .txt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    names = []
    for i in range(count):
        height, width = (int(v) for v in rng.integers(40, 96, 2))
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        ImageDraw.Draw(image).ellipse(
            tuple(int(v) for v in (*rng.integers(0, 20, 2), *rng.integers(25, 40, 2))),
            fill=tuple(rng.integers(0, 255, 3)),
        )
        ext = ("png", "jpg", "webp", "bmp")[i % 4]
        name = f"sub/img{i:02d}.{ext}" if i % 3 == 0 else f"img{i:02d}.{ext}"
        image.save(folder / name)
        names.append(name)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return names


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scan-images")
    make_images(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_engine() -> Engine:
    return Engine(load_model(TINY, input_size=SIZE), device_name="cpu")


def cli_env(**extra: str) -> dict[str, str]:
    # this checkout's sources first (not another copy a virtual environment may have installed)
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "backend")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}
    return env


def run_cli(*args: str, launcher: list[str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [*(launcher or [sys.executable, "-m", "convscope"]), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=cli_env()
    )
