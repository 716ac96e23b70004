"""Top-k exactness: the streaming per-channel top-k against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from convscope.engine import Engine
from convscope.errors import ConvscopeError
from convscope.images import load_image_file, prepare_image
from convscope.scan import ScanStore, folder_source, run_scan
from convscope.scan.topk import TopK
from scan.conftest import SIZE


def brute_force(maps: np.ndarray, k: int) -> list[list[tuple[float, int, int, int]]]:
    """maps: N×C×H×W. Per channel, by plain Python: each image's first strongest unit, then
    the k best by (value desc, image asc)."""
    n, channels, height, width = maps.shape
    result = []
    for c in range(channels):
        per_image = []
        for i in range(n):
            best, where = -np.inf, (0, 0)
            for y in range(height):
                for x in range(width):
                    value = float(maps[i, c, y, x])
                    if value > best:
                        best, where = value, (y, x)
            per_image.append((best, i, *where))
        per_image.sort(key=lambda e: (-e[0], e[1]))
        result.append(per_image[:k])
    return result


def as_lists(state: TopK) -> list[list[tuple[float, int, int, int]]]:
    return [[(e.value, e.image, e.y, e.x) for e in state.entries(c)] for c in range(state.channels)]


def test_update_keeps_one_entry_per_image_and_breaks_ties_by_image() -> None:
    maps = torch.zeros(4, 2, 3, 3)
    maps[0, 0, 2, 1] = 5.0  # image 0: one clear maximum
    maps[1, 0, 0, 2] = maps[1, 0, 1, 0] = 7.0  # image 1: its maximum twice -> the first (row-major)
    maps[2, 0, 1, 1] = 7.0  # image 2: ties image 1 -> ranks after it
    maps[3, 0] = float("nan")  # NaN counts as -inf
    maps[:, 1] = 1.0  # channel 1: every image ties everywhere
    state = TopK.empty(2, 3, 3)
    state.update(maps, [10, 11, 12, 13])
    assert [(e.value, e.image, e.y, e.x) for e in state.entries(0)] == [
        (7.0, 11, 0, 2),
        (7.0, 12, 1, 1),
        (5.0, 10, 2, 1),
    ]
    assert [(e.image, e.y, e.x) for e in state.entries(1)] == [(10, 0, 0), (11, 0, 0), (12, 0, 0)]


def test_fewer_images_than_k_leaves_slots_empty() -> None:
    state = TopK.empty(1, 9, 2)
    state.update(torch.arange(8.0).reshape(2, 1, 2, 2), [0, 1])
    assert [(e.value, e.image) for e in state.entries(0)] == [(7.0, 1), (3.0, 0)]


@pytest.mark.parametrize("k", [1, 4, 25])
def test_any_batching_order_or_split_equals_brute_force(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    maps = torch.randn(23, 5, 4, 6, generator=generator)
    maps[7, 2] = maps[3, 2]  # exact ties between images
    expected = brute_force(maps.numpy(), k)
    for sizes in ([23], [1] * 23, [5, 9, 2, 7]):
        state = TopK.empty(5, k, 6)
        start = 0
        for size in sizes:
            state.update(maps[start : start + size], list(range(start, start + size)))
            start += size
        assert as_lists(state) == expected
    # out of order, and as the merge of disjoint parts (what the processes of a torchrun do)
    order = torch.randperm(23, generator=generator).tolist()
    parts = [TopK.empty(5, k, 6) for _ in range(3)]
    for number, start in enumerate(range(0, 23, 4)):
        chunk = order[start : start + 4]
        parts[number % 3].update(maps[chunk], chunk)
    parts[0].merge(*parts[1:])
    assert as_lists(parts[0]) == expected


def test_scan_on_a_tiny_model_equals_brute_force(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    source = folder_source(image_dir)
    layers = ["relu1", "conv2", "relu3"]
    result = run_scan(tiny_engine, source, tmp_path / "scan", layers=layers, top=4, batch_size=len(source.paths))
    assert result.status == "complete" and result.skipped == 1 and result.images == 14

    # independently: each file through the preprocessing contract, one batch
    good, tensors = [], []
    for index, path in enumerate(source.paths):
        try:
            image = load_image_file(image_dir / path)
        except ConvscopeError:
            assert path == "broken.jpg"
            continue
        good.append(index)
        tensors.append(prepare_image(image, SIZE, tiny_engine.model.mean, tiny_engine.model.std).tensor)
    _, outputs = tiny_engine.forward_batch(torch.cat(tensors), layers)
    store = ScanStore(tmp_path / "scan")
    for layer in layers:
        expected = brute_force(outputs[layer].numpy(), 4)
        for channel, rows in enumerate(expected):
            got = [(e.value, e.image, e.y, e.x) for e in store.top(layer, channel)]
            assert got == [(value, good[i], y, x) for value, i, y, x in rows]
