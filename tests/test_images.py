"""Image decoding limits and the preprocessing contract (docs/architecture.md "Preprocessing")."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import ImageDecodeError, TooLargeError
from convscope.images import decode_image, prepare_image, resize_and_crop


def _png_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_the_model_sees_the_displayed_square() -> None:
    image = Image.new("RGB", (400, 200))
    image.paste((255, 0, 0), (0, 0, 80, 200))  # a red band on the left, cropped away
    image.paste((0, 0, 255), (80, 0, 320, 200))
    prepared = prepare_image(image, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert prepared.display.size == (224, 224)
    pixels = np.asarray(prepared.display).astype(np.float32) / 255.0
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) - 0.5) / 0.25
    assert torch.allclose(prepared.tensor[0], expected, atol=1e-6)
    assert pixels[:, :, 0].max() < 0.05  # the centre crop of the shorter-side-224 resize is all blue


def test_resize_keeps_aspect_then_crops() -> None:
    out = resize_and_crop(Image.new("RGB", (90, 300), (10, 20, 30)), 64)
    assert out.size == (64, 64)


def test_keys_differ_by_content_and_settings() -> None:
    a = prepare_image(Image.new("RGB", (50, 50), (1, 2, 3)), 32, (0.5,) * 3, (0.5,) * 3)
    b = prepare_image(Image.new("RGB", (50, 50), (1, 2, 4)), 32, (0.5,) * 3, (0.5,) * 3)
    c = prepare_image(Image.new("RGB", (50, 50), (1, 2, 3)), 48, (0.5,) * 3, (0.5,) * 3)
    assert len({a.key, b.key, c.key}) == 3


def test_pixel_bomb_is_refused_before_decoding() -> None:
    data = _huge_png_header(20000, 20000)
    assert len(data) < 200
    with pytest.raises(TooLargeError, match="limit is 40,000,000 pixels"):
        decode_image(data, max_pixels=40_000_000)
    with pytest.raises(TooLargeError, match=r"2000×2000"):
        decode_image(_huge_png_header(2000, 2000), max_pixels=1_000_000)


def test_not_an_image_and_truncated() -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"%PDF-1.4 definitely not a picture")
    with pytest.raises(ImageDecodeError):
        decode_image(b"")
    whole = _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageDecodeError, match="decoded"):
        decode_image(whole[: len(whole) // 2])


def test_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _png_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.getpixel((8, 8))[0] > 200


def test_grayscale_and_alpha_become_rgb() -> None:
    assert decode_image(_png_bytes(Image.new("L", (10, 10), 100))).mode == "RGB"
    assert decode_image(_png_bytes(Image.new("RGBA", (10, 10), (1, 2, 3, 4)))).mode == "RGB"
