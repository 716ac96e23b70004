"""A Fig. 2-style montage: per channel, its top-k projections beside the image patches.

Each channel gets a cell: on the left a g×g grid of the deconvnet projections of
its k strongest activations (g = ⌈√k⌉, 3×3 for k = 9), on the right the matching
receptive-field crops, with the channel number above. Cells are laid out in rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from convscope.engine.rules import Rule
from convscope.errors import InvalidRequestError
from convscope.scan.render import Kind, ScanRenderer
from convscope.tasks import Task, checkpoint

BACKGROUND = (24, 24, 27)
EMPTY = (48, 48, 52)
TEXT = (228, 228, 231)
GAP = 2  # between tiles
GUTTER = 8  # between the projection and crop grids, and around cells
LABEL = 14  # height of the label strip
KINDS_LEFT_TO_RIGHT: tuple[Kind, Kind] = ("projection", "crop")


def _tile(image: Image.Image, tile: int) -> Image.Image:
    width, height = image.size
    method = Image.Resampling.NEAREST if max(width, height) <= tile else Image.Resampling.LANCZOS
    return image.resize((tile, tile), method)


def parse_channels(text: str | None, channels: int, default_count: int = 16) -> list[int]:
    """Parse `0,1,5-8` into [0, 1, 5, 6, 7, 8]; None gives the first `default_count` channels."""
    if text is None or not text.strip():
        return list(range(min(channels, default_count)))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high) if high else int(low)
        except ValueError:
            raise InvalidRequestError(f"bad channel list {text!r}; use e.g. 0,1,5-8") from None
        for channel in (first, last):
            if not 0 <= channel < channels:
                raise InvalidRequestError(f"channel {channel} is out of range (0..{channels - 1})")
        out.extend(range(first, last + 1))
    if not out:
        raise InvalidRequestError("no channels given")
    return list(dict.fromkeys(out))


def montage(
    renderer: ScanRenderer,
    layer: str,
    channels: Sequence[int],
    *,
    tile: int = 64,
    columns: int | None = None,
    mode: Rule = "deconvnet",
    task: Task | None = None,
) -> Image.Image:
    """The montage of `channels` of `layer`, projections in `mode` (renders what is not cached yet;
    one task step per channel)."""
    if not 8 <= tile <= 512:
        raise InvalidRequestError("tile must be between 8 and 512 pixels")
    if not channels:
        raise InvalidRequestError("no channels given")
    k = renderer.manifest.config.top
    grid = max(1, math.ceil(math.sqrt(k)))
    entries = {channel: renderer.entries(layer, channel) for channel in channels}
    for done, (channel, found) in enumerate(entries.items(), start=1):
        renderer.render(layer, [(channel, rank) for rank in range(len(found))], mode=mode)
        checkpoint(task, done, len(entries), "montage")

    block = grid * tile + (grid - 1) * GAP
    cell_w, cell_h = 2 * block + GUTTER, block + LABEL
    cols = columns or max(1, min(len(channels), math.ceil(math.sqrt(len(channels) * 1.5))))
    rows = math.ceil(len(channels) / cols)
    canvas = Image.new("RGB", (cols * cell_w + (cols + 1) * GUTTER, rows * cell_h + (rows + 1) * GUTTER), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for number, channel in enumerate(channels):
        row, col = divmod(number, cols)
        x0 = GUTTER + col * (cell_w + GUTTER)
        y0 = GUTTER + row * (cell_h + GUTTER)
        draw.text((x0, y0), f"{layer}  channel {channel}", fill=TEXT, font=font)
        for rank in range(grid * grid):
            gy, gx = divmod(rank, grid)
            offset_y = y0 + LABEL + gy * (tile + GAP)
            for side, kind in enumerate(KINDS_LEFT_TO_RIGHT):
                offset_x = x0 + side * (block + GUTTER) + gx * (tile + GAP)
                if rank < len(entries[channel]):
                    path = renderer.path(layer, channel, rank, kind, mode)
                    with Image.open(path) as image:
                        canvas.paste(_tile(image.convert("RGB"), tile), (offset_x, offset_y))
                else:
                    draw.rectangle((offset_x, offset_y, offset_x + tile - 1, offset_y + tile - 1), fill=EMPTY)
    return canvas
