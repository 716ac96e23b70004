"""The disk cache: a unit is computed once, keyed by the weights too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from convscope.engine import Engine
from convscope.featvis import FeatvisCache, check_target
from featvis.conftest import ZF_SIZE
from fixtures.nets import make_engine, zf_shaped


class ForwardCounter:
    def __init__(self, engine: Engine) -> None:
        self.calls = 0
        self.handle = engine.model.module.register_forward_pre_hook(self._count)

    def _count(self, *args: object) -> None:
        self.calls += 1


def test_second_request_is_served_from_disk_without_a_forward_pass(zf_engine: Engine, tmp_path: Path) -> None:
    cache = FeatvisCache(tmp_path)
    target = check_target(zf_engine, "features.conv3", [2, 6], steps=6, seed=1)
    first = cache.visualize(zf_engine, target)
    assert [v.cached for v in first] == [False, False] and cache.stats().computed == 2
    counter = ForwardCounter(zf_engine)
    try:
        again = FeatvisCache(tmp_path).visualize(zf_engine, target)  # a fresh object: only the disk is shared
    finally:
        counter.handle.remove()
    assert counter.calls == 0
    for a, b in zip(first, again, strict=True):
        assert b.cached and a.channel == b.channel
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.input, b.input)
        assert a.value == b.value
    assert sorted(p.name for p in cache.folder(zf_engine, target).iterdir()) == [
        "2.json",
        "2.npz",
        "2.png",
        "6.json",
        "6.npz",
        "6.png",
    ]


def test_only_missing_units_are_computed(zf_engine: Engine, tmp_path: Path) -> None:
    cache = FeatvisCache(tmp_path)
    cache.visualize(zf_engine, check_target(zf_engine, "features.conv3", [1], steps=5))
    results = cache.visualize(zf_engine, check_target(zf_engine, "features.conv3", [0, 1, 2], steps=5))
    assert [v.cached for v in results] == [False, True, False]
    assert cache.stats().computed == 3


def test_every_key_part_separates_entries(zf_engine: Engine, tmp_path: Path) -> None:
    cache = FeatvisCache(tmp_path)
    base = check_target(zf_engine, "features.conv3", [0], steps=5, seed=0)
    cache.visualize(zf_engine, base)
    assert cache.has(zf_engine, base, 0)
    for other in (
        check_target(zf_engine, "features.conv3", [0], steps=6, seed=0),
        check_target(zf_engine, "features.conv3", [0], steps=5, seed=1),
        replace(base, size=96),  # (this ZFNet runs at 112 only; the key is what is tested)
        check_target(zf_engine, "features.conv3", [0], "unit", steps=5),
        check_target(zf_engine, "features.conv2", [0], steps=5),
    ):
        assert not cache.has(zf_engine, other, 0), other
    assert not cache.has(zf_engine, base, 1)
    # other weights, same architecture and name: a miss
    changed = make_engine(zf_shaped(size=ZF_SIZE), ZF_SIZE, name="zf-shaped")
    with torch.no_grad():
        next(changed.model.module.parameters()).add_(0.01)
    assert not cache.has(changed, base, 0)
    assert cache.fingerprint(changed) != cache.fingerprint(zf_engine)


def test_a_unit_without_its_json_is_recomputed(zf_engine: Engine, tmp_path: Path) -> None:
    cache = FeatvisCache(tmp_path)
    target = check_target(zf_engine, "features.conv3", [3], steps=4)
    cache.visualize(zf_engine, target)
    cache.path(zf_engine, target, 3, ".json").unlink()  # as if interrupted before the last write
    (again,) = cache.visualize(zf_engine, target)
    assert not again.cached
    assert not list(cache.folder(zf_engine, target).glob(".*.tmp"))
