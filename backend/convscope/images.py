"""Image decoding with limits, and the model-input preprocessing contract.

docs/architecture.md "Preprocessing": the model sees exactly the image the user sees: shorter side resized
to S, centre crop S×S, normalised with the model's mean/std.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT = 20.0  # longer side / shorter side; beyond it the resize to S would be huge
MAX_RESIZED_PIXELS = 24_000_000  # the resized image `resize_and_crop` makes before its crop (72 MB RGB)


@dataclass(frozen=True)
class PreparedImage:
    """One image as a model sees it: the S×S display image and its normalised tensor."""

    key: str
    display: Image.Image
    tensor: torch.Tensor  # 1×3×S×S float32, normalised

    @property
    def size(self) -> int:
        return int(self.tensor.shape[-1])


def check_shape(width: int, height: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
    """Refuse an image by its size alone: too many pixels (413), or too elongated (422) to be
    resized to S on its shorter side without a huge intermediate image."""
    from convscope.errors import InvalidRequestError, TooLargeError

    if width < 1 or height < 1:
        raise InvalidRequestError(f"image is {width}×{height} pixels; it has no pixels")
    if width * height > max_pixels:
        raise TooLargeError(
            f"image is {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise InvalidRequestError(
            f"image is {width}×{height} pixels, an aspect ratio of {aspect:,.1f}:1; the limit is {max_aspect:g}:1"
        )


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """Decode bytes into an RGB image; the first frame of an animation.

    The pixel count and aspect ratio are checked from the header, before any pixel is
    decoded, so a small file that claims 20000×20000 (or 40×1,000,000) pixels never
    reaches memory.
    """
    from convscope.errors import ImageDecodeError, InvalidRequestError, TooLargeError

    if not data:
        raise ImageDecodeError("the file is empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            check_shape(width, height, max_pixels, max_aspect)
            image.seek(0)
            image.load()
    except (TooLargeError, ImageDecodeError, InvalidRequestError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(
            f"image is too large to decode safely (the limit is {max_pixels:,} pixels): {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("the file is not an image in a format convscope can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"the image could not be decoded (truncated or corrupt?): {exc}") from None
    oriented: Image.Image = ImageOps.exif_transpose(image) or image
    return oriented.convert("RGB")


def load_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; a clear error when it is missing or not an image."""
    from convscope.errors import ImageDecodeError, NotFoundError

    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"image file not found: {file}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {file}: {exc.strerror}") from None
    return decode_image(data, max_pixels=max_pixels)


def check_resized(image_size: tuple[int, int], size: int) -> tuple[int, int]:
    """The size an image gets with its shorter side resized to `size`; 413 past MAX_RESIZED_PIXELS."""
    from convscope.errors import TooLargeError

    width, height = image_size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise TooLargeError(
            f"a {width}×{height} image resized to {size} on its shorter side is {new_w}×{new_h} pixels; "
            f"the limit is {MAX_RESIZED_PIXELS:,}"
        )
    return new_w, new_h


def resize_and_crop(image: Image.Image, size: int, crop_pct: float = 1.0) -> Image.Image:
    """Shorter side to `round(size / crop_pct)`, then the central size×size square."""
    short = max(size, round(size / crop_pct))
    new_w, new_h = check_resized(image.size, short)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def normalise(display: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """An S×S RGB image as a 1×3×S×S tensor normalised with mean/std."""
    array = np.asarray(display, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((tensor - mean_t) / std_t).unsqueeze(0)


def prepare_image(
    image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float = 1.0
) -> PreparedImage:
    """Apply the preprocessing contract and key the result by its pixels and settings."""
    display = resize_and_crop(image.convert("RGB"), size, crop_pct)
    tensor = normalise(display, mean, std)
    digest = hashlib.sha256(display.tobytes())
    digest.update(repr((size, mean, std)).encode())
    return PreparedImage(key=digest.hexdigest()[:32], display=display, tensor=tensor)
