"""Exact per-channel top-k over a stream of images (paper Fig. 2).

For every channel of a layer we keep the k strongest entries (value, image, y, x)
seen so far, where one image contributes at most one entry per channel: its
strongest position in that channel's map (the first in row-major order when a
map holds its maximum more than once). Entries are ordered by value, largest
first, ties broken by the smaller image index, so the result is exact and the
same whatever the batching, the order of the batches or the number of
processes that saw them. NaN activations count as -inf.

The state (C×k tensors) lives on the device of the activations it is fed: on a
GPU every update stays there (no copy to the host, no synchronisation per layer and
batch), and a scan copies it to the host only at its checkpoints (`host()`). On the
CPU the operations are the same ones, in the same order, as when the state always
lived on the host, so CPU results are unchanged to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY_IMAGE = -1
_LAST = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Entry:
    value: float
    image: int
    y: int
    x: int


def _select(values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Per row (channel): the k best columns by (value desc, image asc), empties last."""
    image_key = torch.where(images < 0, torch.full_like(images, _LAST), images)
    by_image = torch.argsort(image_key, dim=1, stable=True)
    values, images, positions = (t.gather(1, by_image) for t in (values, images, positions))
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, by_value) for t in (values, images, positions))


@dataclass
class TopK:
    """The running top-k of one layer: `values`, `images`, `positions` are C×k (position = y·W + x)."""

    k: int
    width: int
    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def empty(cls, channels: int, k: int, width: int, device: torch.device | str | None = None) -> TopK:
        return cls(
            k=k,
            width=width,
            values=torch.full((channels, k), float("-inf"), dtype=torch.float32, device=device),
            images=torch.full((channels, k), EMPTY_IMAGE, dtype=torch.int64, device=device),
            positions=torch.full((channels, k), -1, dtype=torch.int64, device=device),
        )

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> TopK:
        """This top-k on `device` (itself when it is there already)."""
        target = torch.device(device)
        if self.values.device == target:
            return self
        move = [t.to(target, non_blocking=target.type == "cuda") for t in (self.values, self.images, self.positions)]
        return TopK(self.k, self.width, *move)

    def host(self) -> TopK:
        """A copy on the CPU (what a checkpoint writes); one synchronisation for the three tensors."""
        if self.values.device.type == "cpu":
            return self
        return TopK(self.k, self.width, self.values.cpu(), self.images.cpu(), self.positions.cpu())

    def update(self, activations: torch.Tensor, image_indices: torch.Tensor | list[int]) -> None:
        """Add a batch: `activations` N×C×H×W, `image_indices` the N global image indices (new ones)."""
        n, channels, height, width = activations.shape
        if channels != self.channels or width != self.width:
            raise ValueError(f"batch of shape {tuple(activations.shape)} does not fit a top-k of {self.channels} maps")
        device = self.values.device
        indices = torch.as_tensor(image_indices, dtype=torch.int64).reshape(-1)
        if indices.numel() != n:
            raise ValueError("one image index per batch row is needed")
        if n == 0:
            return
        indices = indices.to(device, non_blocking=True)
        flat = activations.detach().to(device, non_blocking=True).reshape(n, channels, height * width).float()
        flat = torch.nan_to_num(flat, nan=float("-inf"))
        best, where = flat.max(dim=2)  # the first maximal position of each map
        values = torch.cat([self.values, best.t()], dim=1)
        images = torch.cat([self.images, indices.view(1, n).expand(channels, n)], dim=1)
        positions = torch.cat([self.positions, where.t().to(torch.int64)], dim=1)
        self.values, self.images, self.positions = _select(values, images, positions, self.k)

    def merge(self, *others: TopK) -> None:
        """Fold in the top-k of other, disjoint sets of images (other processes, earlier runs)."""
        if not others:
            return
        for other in others:
            if other.channels != self.channels or other.width != self.width:
                raise ValueError("cannot merge the top-k of different layers")
        others = tuple(other.to(self.values.device) for other in others)
        values = torch.cat([self.values, *(o.values for o in others)], dim=1)
        images = torch.cat([self.images, *(o.images for o in others)], dim=1)
        positions = torch.cat([self.positions, *(o.positions for o in others)], dim=1)
        self.values, self.images, self.positions = _select(values, images, positions, self.k)

    def entries(self, channel: int) -> list[Entry]:
        """The filled entries of a channel, best first (a synchronisation on a GPU: use `host()` first)."""
        out = []
        for value, image, position in zip(
            self.values[channel].tolist(), self.images[channel].tolist(), self.positions[channel].tolist(), strict=True
        ):
            if image == EMPTY_IMAGE:
                continue
            y, x = divmod(int(position), self.width)
            out.append(Entry(float(value), int(image), y, x))
        return out

    def copy(self) -> TopK:
        return TopK(self.k, self.width, self.values.clone(), self.images.clone(), self.positions.clone())

    def clear(self) -> None:
        self.values.fill_(float("-inf"))
        self.images.fill_(EMPTY_IMAGE)
        self.positions.fill_(-1)
