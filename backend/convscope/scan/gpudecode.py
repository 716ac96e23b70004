"""The opt-in GPU JPEG decoder of a scan (`--decoder nvjpeg`).

A batch's JPEG files (raw bytes from the reader workers) are decoded together with
`torchvision.io.decode_jpeg(..., device="cuda")` (nvJPEG), then each image is resized
(shorter side to round(S / crop_pct), bilinear with antialiasing, rounded to uint8 like
Pillow's output), centre-cropped to S×S, all on the device. The pixels are close to
Pillow's but not bit-identical, which is why a scan records its decoder and refuses to
resume with another.

On a GPU the decoding runs on a side stream of its own, which the model's stream then waits
for on the device (not the host): whatever torchvision waits for while decoding the next
batch, it is not the forward pass of this one, which keeps running.

If the batched call fails (one bad file fails it all), the files are decoded one by one;
a file that fails on the GPU is decoded with Pillow in this process, and if that fails
too it is skipped with Pillow's reason.

`DeviceDecoder` works on any device torchvision decodes to: on the CPU (libjpeg) it runs
the same code path, which is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from convscope.errors import InvalidRequestError
from convscope.images import check_resized
from convscope.scan.readers import pil_pixels, reason


def _indexed(device: torch.device | str) -> torch.device:
    """`cuda` -> `cuda:N` (the current device): the decoder is given a definite GPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_available(device: torch.device) -> None:
    """Refuse `--decoder nvjpeg` where it cannot run: no CUDA device, or no nvJPEG in torchvision."""
    if device.type != "cuda":
        raise InvalidRequestError(
            f"--decoder nvjpeg decodes on a CUDA GPU, but the model runs on {device}; "
            "use --decoder pil (the default) or --device cuda"
        )
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        probe = _tiny_jpeg()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decode_jpeg([probe], mode=ImageReadMode.RGB, device=_indexed(device))
    except Exception as exc:
        raise InvalidRequestError(f"--decoder nvjpeg is not available here (torchvision's nvJPEG: {exc})") from None


class DeviceDecoder:
    """Decodes JPEG bytes to S×S×3 uint8 images on `device` (see the module docstring)."""

    def __init__(self, device: torch.device | str, size: int, crop_pct: float = 1.0) -> None:
        self.device, self.size, self.crop_pct = _indexed(device), size, crop_pct
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def decode(self, files: Sequence[torch.Tensor]) -> list[torch.Tensor | str]:
        """One S×S×3 uint8 tensor on the device per file, or the reason it could not be decoded;
        on a GPU ready for work queued on the current stream after this call."""
        if not files:
            return []
        if self._stream is None:
            return self._decode(files)
        # no wait for the current stream: the inputs are host bytes, and the caching allocator
        # never hands the side stream a block still in use on another stream
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            out = self._decode(files)
        current.wait_stream(self._stream)  # on the device: the model's stream waits, the host does not
        for result in out:
            if isinstance(result, torch.Tensor):
                result.record_stream(current)  # made on the side stream, used on the current one
        return out

    def _decode(self, files: Sequence[torch.Tensor]) -> list[torch.Tensor | str]:
        images = self._decode_all(list(files))
        out: list[torch.Tensor | str] = []
        for data, image in zip(files, images, strict=True):
            if image is not None:
                try:
                    out.append(self.resize_and_crop(image))
                    continue
                except Exception:  # e.g. too large once resized: Pillow says so in its words
                    pass
            try:
                out.append(pil_pixels(data.numpy().tobytes(), self.size, self.crop_pct).to(self.device))
            except Exception as exc:
                out.append(reason(exc))
        return out

    def _decode_all(self, files: list[torch.Tensor]) -> list[torch.Tensor | None]:
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice, once per call
            try:
                return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device))
            except Exception:
                pass
            images: list[torch.Tensor | None] = []
            for data in files:
                try:
                    images.append(decode_jpeg([data], mode=ImageReadMode.RGB, device=self.device)[0])
                except Exception:
                    images.append(None)
            return images

    def resize_and_crop(self, image: torch.Tensor) -> torch.Tensor:
        """3×H×W uint8 -> S×S×3 uint8: `convscope.images.resize_and_crop` on the device."""
        size = self.size
        height, width = int(image.shape[-2]), int(image.shape[-1])
        new_w, new_h = check_resized((width, height), max(size, round(size / self.crop_pct)))
        pixels = image.to(self.device).unsqueeze(0)
        if (new_h, new_w) != (height, width):
            resized = F.interpolate(
                pixels.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )
            pixels = resized.round_().clamp_(0, 255).to(torch.uint8)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return pixels[0, :, top : top + size, left : left + size].permute(1, 2, 0).contiguous()


def _tiny_jpeg() -> torch.Tensor:
    """An 8×8 JPEG (made with Pillow), to probe the decoder at start-up."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
