"""Reading a scan's images: the reader workers' dataset, its batches, and how many workers.

Each item is read, hashed and (with the Pillow decoder) decoded, resized and cropped
in a reader worker process (`torch.utils.data.DataLoader` workers, alive for the whole
scan), so the host work runs in parallel with the model. Items stay uint8 (a quarter
of the bytes between processes and to the device); `model_input` normalises whole
batches on the model's device.

With the GPU decoder (`convscope.scan.gpudecode`) the workers only read, hash and
check a JPEG's header; the file's bytes travel to the main process, which decodes the
batch on the GPU. Files the GPU decoder cannot take (other formats, CMYK, EXIF
rotation, no end marker) are decoded with Pillow in the worker as usual.

A file that cannot be read or decoded never raises: its item carries the reason,
and the scan skips it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from convscope.engine import Engine
from convscope.errors import ConvscopeError
from convscope.images import DEFAULT_MAX_PIXELS, check_resized, check_shape, decode_image, resize_and_crop
from convscope.scan.store import ImageRecord, ImageSource
from convscope.scan.walk import sha256_bytes

DECODERS = ("pil", "nvjpeg")
DEFAULT_BATCH_CPU = 32
DEFAULT_BATCH_CUDA = 128
_EXIF_ORIENTATION = 0x0112


def default_workers() -> int:
    """Reader workers per process: the cores this process may use, shared among the processes
    of this machine (torchrun's LOCAL_WORLD_SIZE), less one for the process itself."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, cores // local - 1)


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_CUDA if device.type == "cuda" else DEFAULT_BATCH_CPU


@dataclass
class Item:
    index: int
    tensor: torch.Tensor | None  # S×S×3 uint8: the S×S image the model sees, before normalisation
    sha256: str | None
    error: str | None
    raw: torch.Tensor | None = None  # the file's bytes (uint8), for the GPU decoder


def pil_pixels(data: bytes, size: int, crop_pct: float) -> torch.Tensor:
    """Decode, resize and crop with Pillow (docs/architecture.md "Preprocessing"): S×S×3 uint8."""
    image = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS)
    return torch.from_numpy(np.array(resize_and_crop(image, size, crop_pct), dtype=np.uint8))


def reason(exc: Exception) -> str:
    """Why a file is skipped, in one line."""
    if isinstance(exc, ConvscopeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"  # a decoder bug must not end a long scan


def gpu_decodable(data: bytes, size: int, crop_pct: float) -> bool:
    """Whether the GPU decoder gives this file what Pillow would, up to resampling: a baseline
    or progressive RGB/grey JPEG with an end marker, no EXIF rotation, within the size limits."""
    if data[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in data[-4096:]:
        return False  # not a JPEG, or truncated: Pillow decodes it or says why not
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return False
            check_shape(*image.size, DEFAULT_MAX_PIXELS)
            check_resized(image.size, max(size, round(size / crop_pct)))
            return int(image.getexif().get(_EXIF_ORIENTATION, 1)) == 1
    except Exception:  # a header Pillow cannot parse: decoding it with Pillow gives the reason
        return False


class ImageReader(Dataset[Item]):
    """Reads, hashes and decodes one image of the source (in a reader worker)."""

    def __init__(self, source: ImageSource, size: int, crop_pct: float = 1.0, decoder: str = "pil") -> None:
        self.source, self.size, self.crop_pct, self.decoder = source, size, crop_pct, decoder

    def __len__(self) -> int:
        return len(self.source.paths)

    def __getitem__(self, index: int) -> Item:
        try:
            data = self.source.file(index).read_bytes()
        except OSError as exc:
            return Item(index, None, None, f"cannot read: {exc.strerror or exc}")
        digest = sha256_bytes(data)
        if self.decoder == "nvjpeg" and gpu_decodable(data, self.size, self.crop_pct):
            raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())  # shareable with the main process
            return Item(index, None, digest, None, raw=raw)
        try:
            tensor = pil_pixels(data, self.size, self.crop_pct)
        except Exception as exc:
            return Item(index, None, digest, reason(exc))
        return Item(index, tensor, digest, None)


@dataclass
class Batch:
    """One batch from the readers: the decoded images, the raw JPEGs left for the GPU, the records."""

    indices: list[int]  # of the rows of `tensor`
    tensor: torch.Tensor | None  # N×S×S×3 uint8
    records: list[ImageRecord]
    raw: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (image index, bytes) for the GPU decoder

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread on CUDA: page-locked pixels copy asynchronously."""
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    good = [item for item in items if item.tensor is not None]
    tensor = torch.stack([item.tensor for item in good]) if good else None  # type: ignore[misc]
    records = [ImageRecord(item.index, item.sha256, item.error) for item in items]
    raw = [(item.index, item.raw) for item in items if item.raw is not None]
    return Batch([item.index for item in good], tensor, records, raw)


def model_input(batch: torch.Tensor, engine: Engine) -> torch.Tensor:
    """N×S×S×3 uint8 (on any device) -> the normalised N×3×S×S float32 input, on the engine's device.

    The same float32 operations as `convscope.images.normalise` (x / 255, − mean, / std),
    so every value is bitwise the one a single prepared image gets."""
    device = engine.device
    pixels = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
    mean, std = _statistics(device, tuple(engine.model.mean), tuple(engine.model.std))
    return (pixels.float() / 255.0 - mean) / std


_STATISTICS: dict[tuple[str, tuple[float, ...], tuple[float, ...]], tuple[torch.Tensor, torch.Tensor]] = {}


def _statistics(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as 1×3×1×1 tensors on `device`, made once (a copy to a GPU per batch would
    wait for the batches before it)."""
    key = (str(device), mean, std)
    found = _STATISTICS.get(key)
    if found is None:
        found = (
            torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
            torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device),
        )
        if len(_STATISTICS) > 16:
            _STATISTICS.clear()
        _STATISTICS[key] = found
    return found
